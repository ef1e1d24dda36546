"""ulp-prepare on real gcc-built libraries."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from support import C_DIR, PATCHABLE, cc, shared_library, tool
from ulp import layout
from ulp.errors import ExitCode
from ulp.prepared import PreparedLibrary
from ulp.toolchain.verify import verify_prepared

LIB_SOURCE = C_DIR / "prep_lib.c"
MAIN_SOURCE = C_DIR / "prep_main.c"
SMALL_SOURCE = C_DIR / "prep_small.c"

#: every exported function of prep_lib.c, aliases grouped
EXPORTED = [{"add", "plus", "sum2"}, {"scale"}, {"sum8"}, {"add_twice"}, {"weak_answer"},
            {"get_add"}, {"greet"}]

#: LIEF moves the dynamic tables that grow (ulp_entry is one more symbol, one
#: more string, one more version entry, one more relocation) to a segment it
#: appends.  Harmless: they are found through .dynamic, which LIEF updates,
#: and no code refers to them by address.
MOVED_SECTIONS = {".dynsym", ".dynstr", ".gnu.version", ".rela.dyn"}

PAGE = 4096


def prepare(*args: str | Path) -> subprocess.CompletedProcess:
    return tool("ulp-prepare", *args)


def run_program(program: Path, library_dir: Path) -> str:
    env = dict(os.environ, LD_LIBRARY_PATH=str(library_dir))
    env.pop("LD_PRELOAD", None)  # without the runtime
    result = subprocess.run([str(program)], capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


def gdb(library: Path, command: str) -> str:
    result = subprocess.run(["gdb", "-nx", "-batch", "-ex", command, str(library)],
                            capture_output=True, text=True, timeout=60)
    return result.stdout + result.stderr


def sections(path: Path) -> dict[str, tuple[int, str]]:
    with open(path, "rb") as stream:
        return {s.name: (s["sh_addr"], s["sh_type"]) for s in ELFFile(stream).iter_sections()}


def loads(path: Path) -> list[dict]:
    with open(path, "rb") as stream:
        return [dict(s.header) for s in ELFFile(stream).iter_segments(type="PT_LOAD")]


def dynamic_functions(path: Path) -> dict[str, int]:
    with open(path, "rb") as stream:
        dynsym = ELFFile(stream).get_section_by_name(".dynsym")
        return {s.name: s["st_value"] for s in dynsym.iter_symbols()
                if s["st_info"]["type"] == "STT_FUNC" and s["st_shndx"] != "SHN_UNDEF"}


def read_at(path: Path, vaddr: int, size: int) -> bytes:
    from ulp.elfinfo import open_elf, read_vaddr

    with open_elf(str(path)) as elf:
        return read_vaddr(elf, vaddr, size)


def one_line_refusal(result: subprocess.CompletedProcess, code: ExitCode) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ulp-prepare: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture(scope="module", params=["plain", "cet"])
def built(request, build_dir: Path) -> dict[str, Path]:
    """prep_lib.c built (with -fcf-protection for "cet"), prepared, and its program."""
    flags = ["-fcf-protection"] if request.param == "cet" else ["-fcf-protection=none"]
    root = build_dir / f"prep-{request.param}"
    original, prepared = root / "original", root / "prepared"
    original.mkdir(parents=True)
    prepared.mkdir()
    library = shared_library(original / "libprep.so", [LIB_SOURCE], *flags)
    program = cc(root / "prep_main", [MAIN_SOURCE], f"-L{original}", "-lprep")
    result = prepare(library, "-o", prepared / "libprep.so")
    assert result.returncode == 0, result.stderr
    return {"original": library, "prepared": prepared / "libprep.so", "program": program,
            "cet": request.param == "cet"}


def test_prepared_library_behaves_like_the_original(built):
    before = run_program(built["program"], built["original"].parent)
    after = run_program(built["program"], built["prepared"].parent)
    assert "same pointer 1" in before
    assert after == before


def test_original_is_left_alone_with_output_option(built, tmp_path):
    assert ".ulp" not in sections(built["original"])


@pytest.mark.parametrize("function", ["add", "scale", "sum8", "add_twice", "greet"])
def test_debugger_sees_the_same_lines(built, function):
    before = gdb(built["original"], f"info line {function}")
    assert "starts at address" in before
    assert gdb(built["prepared"], f"info line {function}") == before


def test_bss_variable_keeps_its_address(built):
    before = gdb(built["original"], "info address prep_calls")
    assert "static storage at address" in before
    assert gdb(built["prepared"], "info address prep_calls") == before


def test_original_addresses_are_kept(built):
    before, after = sections(built["original"]), sections(built["prepared"])
    moved = {name for name, (addr, _type) in before.items() if after[name][0] != addr}
    assert moved <= MOVED_SECTIONS
    assert after[".bss"] == before[".bss"]
    new_loads = {segment["p_vaddr"]: segment for segment in loads(built["prepared"])}
    for segment in loads(built["original"]):
        kept = new_loads[segment["p_vaddr"]]
        assert (kept["p_offset"], kept["p_flags"]) == (segment["p_offset"], segment["p_flags"])
        # The segment SEGMENT_GAP puts the program headers in grows into the
        # padding after it, but still maps the very same pages.
        if kept["p_memsz"] != segment["p_memsz"]:
            end = segment["p_vaddr"] + segment["p_memsz"]
            assert kept["p_memsz"] > segment["p_memsz"]
            assert -(-(segment["p_vaddr"] + kept["p_memsz"]) // PAGE) == -(-end // PAGE)


def test_layout_of_the_prepared_library(built):
    prepared = built["prepared"]
    found = sections(prepared)
    assert found[layout.CODE_SECTION][1] == "SHT_PROGBITS"
    assert found[layout.DATA_SECTION][1] == "SHT_PROGBITS"
    code_start = found[layout.CODE_SECTION][0]

    library = PreparedLibrary.open(str(prepared))
    assert [set(f.names) for f in library.functions] == EXPORTED
    assert library.desc.identity == _sha256(built["original"])
    assert library.build_id and len(library.build_id) == 20

    originals = dynamic_functions(built["original"])
    symbols = dynamic_functions(prepared)
    for function in library.functions:
        assert function.has_endbr64 == built["cet"]
        assert function.trampoline == code_start + function.index * layout.TRAMPOLINE_SIZE
        for name in function.names:
            assert originals[name] == function.entry
            assert symbols[name] == function.trampoline
        nops = function.entry + (4 if built["cet"] else 0)
        assert read_at(prepared, nops, 2) == layout.TWO_BYTE_NOP
        assert function.body == nops + 2
    # .symtab is left alone: debuggers keep seeing the real functions.
    assert _symtab(prepared)["add"] == originals["add"]


def _symtab(path: Path) -> dict[str, int]:
    with open(path, "rb") as stream:
        symtab = ELFFile(stream).get_section_by_name(".symtab")
        return {s.name: s["st_value"] for s in symtab.iter_symbols()}


def test_entry_symbol_is_weak_undefined_with_a_got_slot(built):
    library = PreparedLibrary.open(str(built["prepared"]))
    with open(built["prepared"], "rb") as stream:
        elf = ELFFile(stream)
        symbol = elf.get_section_by_name(".dynsym").get_symbol_by_name(layout.ENTRY_SYMBOL)[0]
        assert symbol["st_shndx"] == "SHN_UNDEF"
        assert symbol["st_info"]["bind"] == "STB_WEAK"
        slots = [r["r_offset"] for r in elf.get_section_by_name(".rela.dyn").iter_relocations()
                 if r["r_info_type"] == 6  # R_X86_64_GLOB_DAT
                 and elf.get_section_by_name(".dynsym").get_symbol(r["r_info_sym"]).name
                 == layout.ENTRY_SYMBOL]
    assert slots == [library.lib_desc_vaddr + layout.LIB_DESC_ENTRY_GOT_OFFSET]


def _sha256(path: Path) -> bytes:
    import hashlib

    return hashlib.sha256(path.read_bytes()).digest()


# -- in place, twice ----------------------------------------------------------


@pytest.fixture
def small(build_dir: Path, tmp_path: Path) -> Path:
    built = build_dir / "prep_small" / "libsmall.so"
    if not built.exists():
        built.parent.mkdir(exist_ok=True)
        shared_library(built, [SMALL_SOURCE])
    copy = tmp_path / "libsmall.so"
    shutil.copy(built, copy)
    return copy


def test_in_place_keeps_the_file_mode(small):
    small.chmod(0o750)
    result = prepare(small)
    assert result.returncode == 0, result.stderr
    assert (small.stat().st_mode & 0o777) == 0o750
    assert [f.names for f in PreparedLibrary.open(str(small)).functions] == [("foo",), ("bar",)]
    assert result.stdout == f"{small}: prepared for live patching, 2 functions\n"
    assert not [p for p in small.parent.iterdir() if p.name.endswith(".tmp")]


def test_preparing_twice_is_a_no_op(small):
    assert prepare(small).returncode == 0
    once = small.read_bytes()
    result = prepare(small)
    assert result.returncode == 0, result.stderr
    assert "already prepared, left unchanged" in result.stdout
    assert small.read_bytes() == once
    out = small.parent / "copy.so"
    assert prepare(small, "-o", out).returncode == 0
    assert out.read_bytes() == once


def test_help_mentions_the_no_op():
    result = prepare("--help")
    assert result.returncode == 0
    assert "already prepared is left unchanged" in " ".join(result.stdout.split())


# -- refusals -------------------------------------------------------------------


def test_refuses_a_file_that_is_not_elf(tmp_path):
    text = tmp_path / "libtext.so"
    text.write_text("not a library\n")
    line = one_line_refusal(prepare(text), ExitCode.BAD_INPUT)
    assert "not an ELF file" in line


def test_refuses_a_position_dependent_executable(build_dir, tmp_path):
    program = cc(tmp_path / "program", [SMALL_SOURCE, C_DIR / "prep_small_main.c"], PATCHABLE,
                 "-no-pie")
    line = one_line_refusal(prepare(program), ExitCode.BAD_INPUT)
    assert "not a shared object" in line


def test_prepares_a_pie_executable(build_dir, tmp_path):
    """Issue 9 item 3: a PIE is a target too (tests/test_private.py patches one)."""
    program = cc(tmp_path / "program", [SMALL_SOURCE, C_DIR / "prep_small_main.c"], PATCHABLE,
                 "-pie")
    assert prepare(program).returncode == 0
    assert verify_prepared(str(program)).desc.layout_version == layout.LAYOUT_VERSION


def test_refuses_a_library_built_without_the_flag(tmp_path):
    library = shared_library(tmp_path / "libplain.so", [SMALL_SOURCE], patchable=False)
    before = library.read_bytes()
    line = one_line_refusal(prepare(library), ExitCode.NOT_PATCHABLE)
    assert PATCHABLE in line
    assert library.read_bytes() == before


def test_refuses_a_function_whose_padding_was_overwritten(small):
    with open(small, "rb") as stream:
        elf = ELFFile(stream)
        foo = elf.get_section_by_name(".dynsym").get_symbol_by_name("foo")[0]["st_value"]
        text = elf.get_section_by_name(".text")
        offset = text["sh_offset"] + (foo - 3 - text["sh_addr"])
    data = bytearray(small.read_bytes())
    assert data[offset] == 0x90
    data[offset] = 0xCC
    small.write_bytes(bytes(data))
    line = one_line_refusal(prepare(small), ExitCode.NOT_PATCHABLE)
    assert "foo" in line and "bar" not in line
    assert small.read_bytes() == bytes(data)


def test_refuses_a_missing_file(tmp_path):
    line = one_line_refusal(prepare(tmp_path / "libnone.so"), ExitCode.FILE_MISSING)
    assert "libnone.so" in line


def test_needs_a_library_argument():
    result = prepare()
    assert result.returncode == ExitCode.USAGE


# -- flags and scale --------------------------------------------------------------


def test_cflags_build_a_library_ulp_prepare_accepts(tmp_path):
    result = prepare("--cflags")
    assert result.returncode == 0
    assert result.stdout == PATCHABLE + "\n"
    library = cc(tmp_path / "libflags.so", [SMALL_SOURCE], "-shared", "-fPIC",
                 *result.stdout.split())
    assert prepare(library).returncode == 0
    assert len(PreparedLibrary.open(str(library)).functions) == 2


def test_a_library_with_hundreds_of_functions(tmp_path):
    count = 500
    source = tmp_path / "many.c"
    source.write_text("".join(
        f"int f{i}(int x) {{ return x * {i} + {i % 7}; }}\n" for i in range(count)))
    library = shared_library(tmp_path / "libmany.so", [source])
    result = prepare(library)
    assert result.returncode == 0, result.stderr
    prepared = PreparedLibrary.open(str(library))
    assert sorted(f.name for f in prepared.functions) == sorted(f"f{i}" for i in range(count))
