"""ulp-prepare on damaged libraries (issue 7, item 15): one line and exit 4 or 5,
or a prepared library that checks out and loads; never a traceback, never a
half-written file.  tests/fuzz_prepare.py does the work; ``make fuzz`` runs
20,000 cases instead of the slice here.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import struct
from pathlib import Path

import fuzz_prepare
import pytest
from elftools.elf.elffile import ELFFile

from support import tool
from ulp import layout
from ulp.errors import ExitCode
from ulp.toolchain import prepare as prepare_module

#: the slice of the fuzz run the suite does (deterministic: seed and case numbers)
SEED = 20261123
CASES = range(1200)


@pytest.fixture(scope="module")
def corpus(build_dir: Path) -> tuple[list[Path], Path]:
    directory = build_dir / "fuzz-corpus"
    return fuzz_prepare.build_corpus(directory), directory / "fuzz_load"


def test_mutated_libraries_are_refused_cleanly_or_prepared_validly(corpus, build_dir):
    libraries, loader = corpus
    report = fuzz_prepare.fuzz(libraries, loader, build_dir / "fuzz", CASES, SEED, jobs=2)
    print("\n" + report.summary())
    failures = [f"case {o.case} ({o.base}: {o.mutation}): {o.problem}: {o.message}"
                for o in report.failures]
    assert not failures, "\n".join(failures[:20])
    codes = report.codes()
    # The mutations reach every outcome: the fuzz is not only testing one refusal.
    assert set(codes) == {"0", "4", "5"}, codes
    assert codes["0"] > len(CASES) // 10
    assert sum(1 for o in report.outcomes if o.loaded) > len(CASES) // 20


def test_the_real_command_agrees_with_main(corpus, build_dir, tmp_path):
    """A few cases through the installed ulp-prepare, as a user runs it."""
    libraries, loader = corpus
    worker = fuzz_prepare.Worker(libraries, build_dir / "fuzz-real", loader, SEED)
    seen = set()
    for case in CASES:
        outcome = worker.run(case)
        if outcome.code in seen:
            continue
        seen.add(outcome.code)
        _name, data, _what = worker.case_input(case)
        source, output = tmp_path / f"lib{case}.so", tmp_path / f"out{case}.so"
        source.write_bytes(data)
        result = tool("ulp-prepare", source, "-o", output)
        assert result.returncode == outcome.code, (case, result.stderr)
        if result.returncode:
            assert len(result.stderr.splitlines()) == 1, result.stderr
            assert result.stderr.startswith("ulp-prepare: ") and not output.exists()
        if len(seen) == 3:
            break
    assert seen == {0, 4, 5}


def _named(libraries: list[Path], name: str) -> Path:
    return next(path for path in libraries if path.name == name)


# -- crash classes the fuzzer found, one each -----------------------------------------


def _sections(path: Path) -> dict[str, dict]:
    with open(path, "rb") as stream:
        elf = ELFFile(stream)
        return {s.name: dict(s.header, index=i, shoff=elf["e_shoff"])
                for i, s in enumerate(elf.iter_sections())}


def _put(data: bytearray, offset: int, fmt: str, value: int) -> None:
    struct.pack_into(fmt, data, offset, value)


def _shdr_field(section: dict, field: int) -> int:
    return section["shoff"] + section["index"] * 64 + field


def _gnu_hash_without_buckets(path: Path, data: bytearray) -> None:
    _put(data, _sections(path)[".gnu.hash"]["sh_offset"], "<I", 0)  # LIEF: SIGFPE


def _section_past_the_end(path: Path, data: bytearray) -> None:
    _put(data, _shdr_field(_sections(path)[".plt.got"], 32), "<Q", 0x20000000)  # bad_alloc


def _note_past_its_section(path: Path, data: bytearray) -> None:
    _put(data, _sections(path)[".note.gnu.build-id"]["sh_offset"] + 4, "<I", 0x48C9)


def _segment_far_away(path: Path, data: bytearray) -> None:
    with open(path, "rb") as stream:
        elf = ELFFile(stream)
        index = next(i for i, s in enumerate(elf.iter_segments())
                     if s["p_type"] == "PT_GNU_STACK")
        _put(data, elf["e_phoff"] + index * 56 + 16, "<Q", 0x7FFF_FFFF_FFFF_FFFF)  # keystone


def _relocations_retyped(path: Path, data: bytearray) -> None:
    _put(data, _shdr_field(_sections(path)[".rela.dyn"], 4), "<I", 0x7FFFFFFF)


def _unknown_symbol_type(path: Path, data: bytearray) -> None:
    dynsym = _sections(path)[".dynsym"]
    _put(data, dynsym["sh_offset"] + 24 + 4, "<B", 0x1F)  # LIEF warned on stderr


def _function_made_undefined(path: Path, data: bytearray) -> None:
    dynsym = _sections(path)[".dynsym"]
    with open(path, "rb") as stream:
        symbols = list(ELFFile(stream).get_section_by_name(".dynsym").iter_symbols())
    index = next(i for i, s in enumerate(symbols) if s.name == "foo")
    _put(data, dynsym["sh_offset"] + 24 * index + 6, "<H", 0)  # the output did not load


def _section_after_the_section_headers(path: Path, data: bytearray) -> None:
    _put(data, _shdr_field(_sections(path)[".comment"], 24), "<Q", len(data))
    data.extend(bytes(64))  # LIEF garbled the section names


@pytest.mark.parametrize("damage", [_gnu_hash_without_buckets, _section_past_the_end,
                                    _note_past_its_section, _segment_far_away,
                                    _relocations_retyped, _unknown_symbol_type,
                                    _function_made_undefined,
                                    _section_after_the_section_headers])
def test_crash_classes_found_by_the_fuzzer_are_refused(corpus, tmp_path, damage):
    libraries, _loader = corpus
    library = tmp_path / "libsmall.so"
    shutil.copy(_named(libraries, "libsmall.so"), library)
    data = bytearray(library.read_bytes())
    damage(library, data)
    library.write_bytes(bytes(data))
    result = tool("ulp-prepare", library)
    assert result.returncode == ExitCode.BAD_INPUT, result.stderr
    assert len(result.stderr.splitlines()) == 1 and "malformed ELF file" in result.stderr
    assert library.read_bytes() == bytes(data)
    assert [p.name for p in tmp_path.iterdir()] == ["libsmall.so"]


def test_thread_local_section_moved_out_of_its_segment_is_refused(corpus, tmp_path):
    libraries, _loader = corpus
    library = tmp_path / "libextra.so"
    shutil.copy(_named(libraries, "libextra.so"), library)
    data = bytearray(library.read_bytes())
    _put(data, _shdr_field(_sections(library)[".tbss"], 16), "<Q", 0x2003D70)
    library.write_bytes(bytes(data))
    result = tool("ulp-prepare", library)  # was: internal error, NOBITS in no segment
    assert result.returncode == ExitCode.BAD_INPUT, result.stderr
    assert ".tbss is outside the TLS segment" in result.stderr


# -- a prepared library is valid or not written ----------------------------------------


def _main(*args: str | Path) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = prepare_module.main([str(arg) for arg in args])
    return code, err.getvalue()


@pytest.mark.parametrize("in_place", [False, True])
def test_an_output_that_does_not_verify_is_not_written(corpus, tmp_path, monkeypatch,
                                                       in_place):
    libraries, _loader = corpus
    library = tmp_path / "libsmall.so"
    shutil.copy(_named(libraries, "libsmall.so"), library)
    before = library.read_bytes()

    def broken(path: str):
        raise prepare_module.UlpError(f"{path}: not a valid prepared library (simulated)",
                                      ExitCode.BAD_INPUT)

    monkeypatch.setattr(prepare_module, "verify_prepared", broken)
    args = [library] if in_place else [library, "-o", tmp_path / "out.so"]
    code, err = _main(*args)
    assert code == ExitCode.FAILURE and "internal error" in err and "simulated" in err
    assert library.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["libsmall.so"]


def test_a_damaged_prepared_library_is_not_taken_as_prepared(corpus, tmp_path):
    libraries, _loader = corpus
    library = tmp_path / "libsmall.so"
    shutil.copy(_named(libraries, "libsmall_prepared.so"), library)
    prepared = prepare_module.verify_prepared(str(library))
    trampoline = prepared.functions[0].trampoline
    code = _sections(library)[layout.CODE_SECTION]
    data = bytearray(library.read_bytes())
    data[code["sh_offset"] + trampoline - code["sh_addr"] + 10] ^= 0xFF
    library.write_bytes(bytes(data))
    code, err = _main(library, "-o", tmp_path / "out.so")
    assert code == ExitCode.BAD_INPUT, err
    assert "not a valid prepared library" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out.so").exists()
