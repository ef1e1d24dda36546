"""ulp-packer on real files: a library prepared by ulp-prepare and a patch .so."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

from support import C_DIR, cc, shared_library, tool
from ulp.elfinfo import file_sha256
from ulp.errors import ExitCode
from ulp.packer.pack import main as pack_main
from ulp.patchfile import read_patch
from ulp.prepared import PreparedLibrary


@pytest.fixture(scope="module")
def files(build_dir: Path) -> dict[str, Path]:
    """The target (plain and prepared), the patch .so and some wrong inputs."""
    out = build_dir / "packer"
    out.mkdir(exist_ok=True)
    target = shared_library(out / "libpacktarget.so", [C_DIR / "pack_target.c"])
    prepared = out / "libpacktarget.prepared.so"
    result = tool("ulp-prepare", target, "-o", prepared)
    assert result.returncode == 0, result.stderr
    fix = shared_library(out / "libpackfix.so", [C_DIR / "pack_fix.c"], patchable=False)
    obj = cc(out / "pack_fix.o", [C_DIR / "pack_fix.c"], "-c", "-fPIC")
    return {"target": target, "prepared": prepared, "fix": fix, "object": obj}


def write_desc(directory: Path, text: str, name: str = "patch.desc") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def desc_text(files, *pairs: str, fix: Path | None = None, target: Path | None = None,
              extra: str = "") -> str:
    lines = [str(fix or files["fix"]), "@" + str(target or files["prepared"]), *pairs]
    return "\n".join(lines) + "\n" + extra


def pack_ok(*args) -> str:
    result = tool("ulp-packer", *args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def pack_fails(code: ExitCode, *args) -> str:
    result = tool("ulp-packer", *args)
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ulp-packer: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def no_outputs(directory: Path) -> bool:
    return not list(directory.glob("*.ulp"))


# --- packing ------------------------------------------------------------------


def test_pack_round_trip(files, tmp_path):
    desc = write_desc(tmp_path, "# fix foo and bar\n\n"
                      + desc_text(files, "foo:foo_fixed", "bar:bar_fixed"))
    stdout = pack_ok(desc)
    out, rev = tmp_path / "patch.ulp", tmp_path / "patch.rev.ulp"
    forward = read_patch(str(out))
    assert stdout.strip() == (f"packed patch {forward.patch_id_hex} (2 functions) for "
                              f"{os.path.realpath(files['prepared'])}: {out}, reverse: {rev}")

    library = PreparedLibrary.open(str(files["prepared"]))
    assert not forward.reverse
    assert forward.target_path == os.path.realpath(files["prepared"])
    assert forward.target_identity == library.identity
    assert forward.target_build_id == library.build_id and len(forward.target_build_id) == 20
    assert forward.layout_version == library.desc.layout_version
    assert forward.patch_so_path == os.path.realpath(files["fix"])
    assert forward.patch_so_sha256 == file_sha256(str(files["fix"]))
    assert [(u.index, u.old_name, u.new_name) for u in forward.units] == [
        (library.function("foo").index, "foo", "foo_fixed"),
        (library.function("bar").index, "bar", "bar_fixed"),
    ]
    assert forward.requires == ()

    reverse = read_patch(str(rev))
    assert reverse == forward.reversed()


def test_explicit_outputs_and_relative_paths(files, tmp_path):
    shutil.copy(files["fix"], tmp_path / "fix.so")
    (tmp_path / "lib").mkdir()
    shutil.copy(files["prepared"], tmp_path / "lib" / "libt.so")
    write_desc(tmp_path, "fix.so\n@lib/libt.so\nbaz:baz_fixed\n", name="p.desc")
    out = tmp_path / "out" / "mine.ulp"
    out.parent.mkdir()
    stdout = pack_ok(tmp_path / "p.desc", "-o", out)
    assert "(1 function)" in stdout
    assert (tmp_path / "out" / "mine.rev.ulp").exists()
    metadata = read_patch(str(out))
    assert metadata.target_path == str(tmp_path / "lib" / "libt.so")
    assert metadata.patch_so_path == str(tmp_path / "fix.so")

    pack_ok(tmp_path / "p.desc", "-o", tmp_path / "a", "--reverse-output", tmp_path / "b")
    assert read_patch(str(tmp_path / "b")) == read_patch(str(tmp_path / "a")).reversed()


def test_ids_are_deterministic(files, tmp_path):
    desc = write_desc(tmp_path, desc_text(files, "foo:foo_fixed", "bar:bar_fixed"))
    pack_ok(desc, "-o", tmp_path / "one.ulp")
    pack_ok(desc, "-o", tmp_path / "two.ulp")
    assert (tmp_path / "one.ulp").read_bytes() == (tmp_path / "two.ulp").read_bytes()

    other = write_desc(tmp_path, desc_text(files, "foo:foo_fixed"), name="other.desc")
    pack_ok(other)
    ids = {read_patch(str(tmp_path / name)).patch_id for name in ("one.ulp", "other.ulp")}
    assert len(ids) == 2


def test_requires(files, tmp_path):
    base = write_desc(tmp_path, desc_text(files, "foo:foo_fixed"), name="base.desc")
    pack_ok(base)
    dependent = write_desc(tmp_path, desc_text(files, "bar:bar_fixed",
                                               extra="requires: base.ulp\n"), name="dep.desc")
    pack_ok(dependent)
    base_id = read_patch(str(tmp_path / "base.ulp")).patch_id
    assert read_patch(str(tmp_path / "dep.ulp")).requires == (base_id,)
    assert read_patch(str(tmp_path / "dep.rev.ulp")).requires == (base_id,)


def test_requires_missing_file(files, tmp_path):
    desc = write_desc(tmp_path, desc_text(files, "foo:foo_fixed", extra="requires: nope.ulp\n"))
    message = pack_fails(ExitCode.FILE_MISSING, desc)
    assert "nope.ulp: no such file" in message
    assert no_outputs(tmp_path)


def test_requires_corrupted_file(files, tmp_path):
    (tmp_path / "bad.ulp").write_bytes(b"ULPPATCH\x03" + b"\0" * 10)
    desc = write_desc(tmp_path, desc_text(files, "foo:foo_fixed", extra="requires: bad.ulp\n"))
    assert "bad.ulp: truncated" in pack_fails(ExitCode.BAD_INPUT, desc)


def test_requires_reverse_file(files, tmp_path):
    base = write_desc(tmp_path, desc_text(files, "foo:foo_fixed"), name="base.desc")
    pack_ok(base)
    desc = write_desc(tmp_path, desc_text(files, "bar:bar_fixed",
                                          extra="requires: base.rev.ulp\n"))
    assert "is a reverse patch" in pack_fails(ExitCode.BAD_INPUT, desc)


# --- description syntax -------------------------------------------------------


@pytest.mark.parametrize("body, line, message", [
    ("@{target}\nfoo:foo_fixed\n", 1, "expected the patch .so path first"),
    ("{fix}\nfoo:foo_fixed\n", 2, "expected @TARGET"),
    ("{fix}\n@{target}\nfoo foo_fixed\n", 3, "expected old:new"),
    ("{fix}\n@{target}\nfoo:\n", 3, "expected old:new"),
    ("{fix}\n@{target}\nfoo:foo_fixed:x\n", 3, "expected old:new"),
    ("{fix}\n# c\n@{target}\nfoo:foo_fixed\n\nfoo:bar_fixed\n", 6,
     "foo is replaced twice (first on line 4)"),
    ("{fix}\n@{target}\n@{target}\nfoo:foo_fixed\n", 3,
     "no old:new lines for the target on line 2"),
    ("{fix}\n@{target}\nfoo:foo_fixed\n@{target}\nbar:bar_fixed\n", 4,
     "a target named twice"),
    ("{fix}\n@{target}\n# nothing\n", 3, "no old:new lines"),
    ("{fix}\n@\nfoo:foo_fixed\n", 2, "expected a library path"),
])
def test_description_syntax_errors(files, tmp_path, body, line, message):
    desc = write_desc(tmp_path, body.format(fix=files["fix"], target=files["prepared"]))
    error = pack_fails(ExitCode.BAD_INPUT, desc)
    assert f"{desc}:{line}: {message}" in error
    assert no_outputs(tmp_path)


def test_empty_description(tmp_path):
    desc = write_desc(tmp_path, "# only a comment\n\n")
    assert "empty description" in pack_fails(ExitCode.BAD_INPUT, desc)


def test_binary_description(tmp_path):
    desc = tmp_path / "patch.desc"
    desc.write_bytes(b"\x7fELF\xff\xfe")
    assert "not UTF-8" in pack_fails(ExitCode.BAD_INPUT, desc)


# --- wrong or missing files ---------------------------------------------------


def test_missing_description(tmp_path):
    message = pack_fails(ExitCode.FILE_MISSING, tmp_path / "absent.desc")
    assert "absent.desc: no such file" in message


def test_missing_patch_object(files, tmp_path):
    desc = write_desc(tmp_path, desc_text(files, "foo:foo_fixed", fix=tmp_path / "gone.so"))
    assert "gone.so: no such file" in pack_fails(ExitCode.FILE_MISSING, desc)
    assert no_outputs(tmp_path)


def test_patch_object_not_elf(files, tmp_path):
    text_file = tmp_path / "fix.so"
    text_file.write_text("not a library\n")
    desc = write_desc(tmp_path, desc_text(files, "foo:foo_fixed", fix=text_file))
    assert "fix.so: not an ELF file" in pack_fails(ExitCode.BAD_INPUT, desc)


def test_patch_object_not_shared(files, tmp_path):
    desc = write_desc(tmp_path, desc_text(files, "foo:foo_fixed", fix=files["object"]))
    assert "not a shared object" in pack_fails(ExitCode.BAD_INPUT, desc)


@pytest.mark.parametrize("new", ["missing_fixed", "fix_data", "printf"])
def test_replacement_not_a_function_of_the_patch(files, tmp_path, new):
    desc = write_desc(tmp_path, desc_text(files, "foo:foo_fixed", f"bar:{new}"))
    message = pack_fails(ExitCode.PATCH_OBJECT, desc)
    assert f"{desc}:4: {new} is not a function defined" in message
    assert no_outputs(tmp_path)


def test_unprepared_target(files, tmp_path):
    desc = write_desc(tmp_path, desc_text(files, "foo:foo_fixed", target=files["target"]))
    message = pack_fails(ExitCode.NOT_PATCHABLE, desc)
    assert "not prepared for live patching" in message
    assert no_outputs(tmp_path)


def test_missing_target(files, tmp_path):
    desc = write_desc(tmp_path, desc_text(files, "foo:foo_fixed", target=tmp_path / "no.so"))
    assert "no.so: no such file" in pack_fails(ExitCode.FILE_MISSING, desc)


@pytest.mark.parametrize("old", ["nothere", "target_data"])
def test_function_not_in_target(files, tmp_path, old):
    desc = write_desc(tmp_path, desc_text(files, "foo:foo_fixed", f"{old}:bar_fixed"))
    message = pack_fails(ExitCode.NOT_PATCHABLE, desc)
    assert f"{desc}:4: {old} is not a patchable function of" in message
    assert no_outputs(tmp_path)


def test_alias_replaced_twice(files, tmp_path):
    desc = write_desc(tmp_path, desc_text(files, "foo:foo_fixed", "foo_alias:bar_fixed"))
    message = pack_fails(ExitCode.BAD_INPUT, desc)
    assert "foo_alias is the same function as foo" in message


def test_unwritable_output(files, tmp_path):
    desc = write_desc(tmp_path, desc_text(files, "foo:foo_fixed"))
    message = pack_fails(ExitCode.FILE_MISSING, desc, "-o", tmp_path / "no" / "p.ulp")
    assert "cannot write" in message


# --- command line -------------------------------------------------------------


def test_dump(files, tmp_path):
    desc = write_desc(tmp_path, desc_text(files, "foo:foo_fixed", "bar:bar_fixed"))
    pack_ok(desc)
    metadata = read_patch(str(tmp_path / "patch.ulp"))
    forward = pack_ok("--dump", tmp_path / "patch.ulp")
    assert f"patch id:         {metadata.patch_id_hex}" in forward
    assert "direction:        forward" in forward
    assert f"target:           {metadata.target_path}" in forward
    assert f"target build-id:  {metadata.target_build_id.hex()}" in forward
    assert "requires:         (none)" in forward
    assert f"  [{metadata.units[1].index}] bar -> bar_fixed" in forward
    assert f"object carried:   {files['fix'].stat().st_size} bytes" in forward
    reverse = pack_ok("--dump", tmp_path / "patch.rev.ulp")
    assert "direction:        reverse" in reverse
    assert "object carried:   none (a reverse patch loads nothing)" in reverse


def test_dump_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad.ulp"
    bad.write_bytes(b"ULPPATCH\x09\x00" + b"\0" * 60)
    assert "unsupported format version 9" in pack_fails(ExitCode.BAD_INPUT, "--dump", bad)
    pack_fails(ExitCode.FILE_MISSING, "--dump", tmp_path / "absent.ulp")


def test_help():
    stdout = pack_ok("--help")
    for word in ("DESC", "--output", "--reverse-output", "--dump", ".rev.ulp"):
        assert word in stdout


@pytest.mark.parametrize("args", [[], ["a.desc", "--dump", "x.ulp"], ["--bogus"],
                                  ["a.desc", "-o", "same.ulp", "--reverse-output", "same.ulp"]])
def test_usage_errors(tmp_path, args):
    pack_fails(ExitCode.USAGE, *args)


def test_unwritable_reverse_output_leaves_nothing(files, tmp_path):
    desc = write_desc(tmp_path, desc_text(files, "foo:foo_fixed"))
    message = pack_fails(ExitCode.FILE_MISSING, desc, "--reverse-output",
                         tmp_path / "no" / "p.rev.ulp")
    assert "cannot write" in message
    assert no_outputs(tmp_path)


@pytest.mark.parametrize("damaged", ["fix", "prepared"])
def test_damaged_elf_inputs_give_one_line_errors(files, tmp_path, capsys, damaged):
    """Random byte damage to either ELF input: a clean exit code, never a traceback."""
    rng = random.Random(damaged)
    original = files[damaged].read_bytes()
    inputs = {"fix": files["fix"], "prepared": files["prepared"]}
    inputs[damaged] = tmp_path / "damaged.so"
    desc = write_desc(tmp_path, desc_text(files, "foo:foo_fixed", fix=inputs["fix"],
                                          target=inputs["prepared"]))
    allowed = {ExitCode.OK, ExitCode.BAD_INPUT, ExitCode.PATCH_OBJECT, ExitCode.NOT_PATCHABLE}
    for _ in range(150):
        data = bytearray(original)
        for _ in range(rng.randint(1, 20)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        inputs[damaged].write_bytes(data)
        assert pack_main([str(desc)]) in allowed
        assert len(capsys.readouterr().err.splitlines()) <= 1


@pytest.mark.parametrize("damaged", ["fix", "prepared"])
def test_a_section_size_past_the_end_is_refused_not_allocated(files, tmp_path, damaged):
    """A section header claiming gigabytes (one damaged size field) is a
    one-line error, not a MemoryError from reading what it claims."""
    from elftools.elf.elffile import ELFFile

    data = bytearray(files[damaged].read_bytes())
    with open(files[damaged], "rb") as stream:
        elf = ELFFile(stream)
        header_offset = elf["e_shoff"]
        index = next(i for i, s in enumerate(elf.iter_sections()) if s.name == ".dynstr")
    size_field = header_offset + index * 64 + 32  # Elf64_Shdr.sh_size
    data[size_field:size_field + 8] = (1 << 40).to_bytes(8, "little")
    inputs = {"fix": files["fix"], "prepared": files["prepared"]}
    inputs[damaged] = tmp_path / "damaged.so"
    inputs[damaged].write_bytes(data)
    desc = write_desc(tmp_path, desc_text(files, "foo:foo_fixed", fix=inputs["fix"],
                                          target=inputs["prepared"]))
    message = pack_fails(ExitCode.BAD_INPUT, desc)
    assert "past the end of the file" in message
