"""`ulp var get|set PID LIB:SYMBOL`: globals of a running process, read and
written by name (issue 11, item 7), on a real process: a prepared library
with a global of every type, and a program with one of its own.  The
program prints them on request, so a test sees what the process sees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from consistency_support import ask, prepared_library

from support import C_DIR, LiveProcess, cc, tool
from ulp.errors import ExitCode

BIN = Path(sys.executable).parent
INITIAL = ("counter=7 flag=1 small=-2 big=-5 huge=18446744073709551615 weight=1.25 ratio=0.5 "
           "name=alpha hidden=3 app_global=42")


@pytest.fixture(scope="module")
def var_program(build_dir: Path) -> dict[str, Path]:
    root = build_dir / "var"
    lib = prepared_library(root / "lib" / "libvar.so", [C_DIR / "var_lib.c"])
    app = cc(root / "app", [C_DIR / "var_app.c"], f"-L{lib.parent}", "-lvar")
    return {"lib": lib, "app": app}


@pytest.fixture()
def app(var_program):
    with LiveProcess([var_program["app"]], env={"LD_LIBRARY_PATH": str(var_program["lib"].parent)},
                     preload_runtime=False) as process:
        assert process.next_line() == "ready"
        assert ask(process, "show") == INITIAL
        yield process


def var(*args: str | int) -> tuple[int, str, str]:
    done = tool("ulp", "var", *[str(arg) for arg in args])
    return done.returncode, done.stdout, done.stderr


def refused(app: LiveProcess, code: ExitCode, text: str, *args: str | int) -> None:
    """The command fails with CODE and one line containing TEXT, and the
    process runs on, unchanged."""
    returncode, stdout, stderr = var(*args)
    assert returncode == code, (returncode, stdout, stderr)
    assert stderr.startswith("ulp: ") and text in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert ask(app, "show") == INITIAL


@pytest.mark.parametrize("variable,kind,shown", [
    ("libvar.so:counter", None, "7"),
    ("libvar.so:flag", "u8", "1"),
    ("libvar.so:small", None, "-2"),
    ("libvar.so:big", "i64", "-5"),
    ("libvar.so:huge", "u64", "18446744073709551615"),
    ("libvar.so:weight", "f32", "1.25"),
    ("libvar.so:ratio", "f64", "0.5"),
    ("libvar.so:name", "str", "'alpha'"),
    ("libvar.so:hidden", None, "3"),            # static: .symtab only
    ("libvar.so:limit", None, "5"),             # a constant can be read
    (":app_global", None, "42"),               # the program's own
])
def test_get_reads_each_type(app, variable, kind, shown) -> None:
    args = ["get", app.pid, variable] + (["--type", kind] if kind else [])
    returncode, stdout, stderr = var(*args)
    assert returncode == 0, stderr
    assert stdout == f"{variable} = {shown}\n"


def test_get_without_a_type_shows_bytes_of_an_odd_size_and_json_tells_everything(app) -> None:
    returncode, stdout, _ = var("get", app.pid, "libvar.so:name")
    assert returncode == 0
    assert stdout == "libvar.so:name = " + (b"alpha".ljust(16, b"\0")).hex() + "\n"
    returncode, stdout, _ = var("get", app.pid, "libvar.so:counter", "--json")
    document = json.loads(stdout)
    assert document["value"] == 7 and document["type"] == "i32" and document["size"] == 4
    assert document["object"].endswith("/libvar.so") and document["pid"] == app.pid


@pytest.mark.parametrize("variable,kind,value,seen", [
    ("libvar.so:counter", "i32", "-123", "counter=-123"),
    ("libvar.so:counter", "i32", "0x7fffffff", "counter=2147483647"),
    ("libvar.so:flag", "u8", "255", "flag=255"),
    ("libvar.so:small", "i16", "-32768", "small=-32768"),
    ("libvar.so:big", "i64", "-9223372036854775808", "big=-9223372036854775808"),
    ("libvar.so:huge", "u64", "0", "huge=0"),
    ("libvar.so:weight", "f32", "2.5", "weight=2.5"),
    ("libvar.so:ratio", "f64", "-1e300", "ratio=-1e+300"),
    ("libvar.so:ratio", "f64", "inf", "ratio=inf"),
    ("libvar.so:ratio", "f64", "-inf", "ratio=-inf"),       # a number, not an option
    ("libvar.so:counter", "i32", "-0x10", "counter=-16"),
    ("libvar.so:name", "str", "beta", "name=beta"),
    ("libvar.so:name", "str", "fifteen chars!!", "name=fifteen chars!!"),
    ("libvar.so:name", "str", "", "name= "),
    ("libvar.so:hidden", "i32", "99", "hidden=99"),
    (":app_global", "i32", "7", "app_global=7"),
])
def test_set_writes_and_the_process_sees_it(app, variable, kind, value, seen) -> None:
    returncode, stdout, stderr = var("set", app.pid, variable, value, "--type", kind)
    assert returncode == 0, stderr
    assert stdout.startswith(f"{variable} = ") and "(was " in stdout, stdout
    shown = ask(app, "show")
    assert seen in shown, shown
    name = seen.split("=", 1)[0]
    # nothing else changed
    others = [field for field in INITIAL.split(" ") if field.split("=", 1)[0] != name
              and "=" in field]
    for field in others:
        if field.startswith("name=") and name == "name":
            continue
        assert field in shown.split(" "), (field, shown)


def test_a_string_is_written_with_its_nul_and_the_rest_of_the_array_cleared(app) -> None:
    assert var("set", app.pid, "libvar.so:name", "a", "--type", "str")[0] == 0
    returncode, stdout, _ = var("get", app.pid, "libvar.so:name")
    assert stdout == "libvar.so:name = " + (b"a".ljust(16, b"\0")).hex() + "\n"


def test_set_json_gives_the_value_before_and_after(app) -> None:
    returncode, stdout, stderr = var("set", app.pid, "libvar.so:counter", "8", "--type", "i32",
                                     "--json")
    assert returncode == 0, stderr
    document = json.loads(stdout)
    assert (document["previous"], document["value"]) == (7, 8)


@pytest.mark.parametrize("args,code,text", [
    (("get", "{pid}", "libvar.so:nothing"), ExitCode.USAGE, "no symbol nothing"),
    (("get", "{pid}", "libvar.so:var_function"), ExitCode.USAGE, "is a function"),
    (("get", "{pid}", "libvar.so:per_thread"), ExitCode.USAGE, "thread-local"),
    (("get", "{pid}", "counter"), ExitCode.USAGE, "LIB:SYMBOL"),
    (("get", "{pid}", "libnothere.so:counter"), ExitCode.LIBRARY_NOT_LOADED, "not loaded"),
    (("get", "{pid}", "lib:counter"), ExitCode.LIBRARY_NOT_LOADED, "not loaded"),
    (("get", "{pid}", "libvar.so:counter", "--type", "i64"), ExitCode.USAGE,
     "is 4 bytes, --type i64 is 8"),
    (("set", "{pid}", "libvar.so:counter", "1", "--type", "i16"), ExitCode.USAGE,
     "is 4 bytes, --type i16 is 2"),
    (("set", "{pid}", "libvar.so:counter", "2147483648", "--type", "i32"), ExitCode.USAGE,
     "out of range for i32"),
    (("set", "{pid}", "libvar.so:flag", "-1", "--type", "u8"), ExitCode.USAGE,
     "out of range for u8"),
    (("set", "{pid}", "libvar.so:counter", "1.5", "--type", "i32"), ExitCode.USAGE,
     "is not an integer"),
    (("set", "{pid}", "libvar.so:counter", "nan", "--type", "i32"), ExitCode.USAGE,
     "is not an integer"),
    (("set", "{pid}", "libvar.so:ratio", "many", "--type", "f64"), ExitCode.USAGE,
     "is not a number"),
    (("set", "{pid}", "libvar.so:weight", "1e300", "--type", "f32"), ExitCode.USAGE,
     "out of range for f32"),
    (("set", "{pid}", "libvar.so:name", "sixteen chars!!!", "--type", "str"), ExitCode.USAGE,
     "holds 15 characters at most"),
    (("set", "{pid}", "libvar.so:counter", "1"), ExitCode.USAGE, "--type"),
    (("get", "999999999", "libvar.so:counter"), ExitCode.NO_PROCESS, "999999999"),
    (("set", "{pid}", "libvar.so:limit", "6", "--type", "i32"), ExitCode.USAGE,
     "read-only"),
])
def test_bad_names_types_and_values_are_refused_and_change_nothing(app, args, code,
                                                                   text) -> None:
    refused(app, code, text, *[arg.format(pid=app.pid) for arg in args])


def test_a_name_that_fits_two_objects_is_refused(build_dir: Path, var_program) -> None:
    """Two objects whose file names both start with the name given: which
    one is meant cannot be told; the full name or path can."""
    other = build_dir / "var" / "other" / "libvar.so.2"
    other.parent.mkdir(parents=True, exist_ok=True)
    other.write_bytes(var_program["lib"].read_bytes())
    env = {"LD_LIBRARY_PATH": str(var_program["lib"].parent), "LD_PRELOAD": str(other)}
    with LiveProcess([var_program["app"]], env=env, preload_runtime=False) as process:
        assert process.next_line() == "ready"
        returncode, _, stderr = var("get", process.pid, "libvar:counter")
        assert returncode == ExitCode.USAGE and "names 2 objects" in stderr, stderr
        returncode, stdout, stderr = var("get", process.pid, "libvar.so.2:counter")
        assert (returncode, stdout) == (0, "libvar.so.2:counter = 7\n"), stderr


def test_set_in_a_process_with_the_runtime_stops_its_agent_too(var_program) -> None:
    """With the ulp runtime loaded, its agent thread is one more thread to
    stop for the write; the process goes on as before."""
    env = {"LD_LIBRARY_PATH": str(var_program["lib"].parent)}
    with LiveProcess([var_program["app"]], env=env) as process:
        assert process.next_line() == "ready"
        returncode, _, stderr = var("set", process.pid, "libvar.so:counter", "11", "--type",
                                    "i32")
        assert returncode == 0, stderr
        assert ask(process, "show") == INITIAL.replace("counter=7", "counter=11")
        # a thread's id (the agent's) names its process
        agent = next(int(tid) for tid in os.listdir(f"/proc/{process.pid}/task")
                     if int(tid) != process.pid)
        returncode, stdout, stderr = var("get", agent, "libvar.so:counter", "--json")
        assert returncode == 0, stderr
        assert (json.loads(stdout)["pid"], json.loads(stdout)["value"]) == (process.pid, 11)


def test_a_variable_the_program_copied_is_written_where_the_process_uses_it(
        build_dir: Path, var_program) -> None:
    """A program that uses a library's variable directly has its own copy
    (an R_X86_64_COPY relocation), and the library's code uses that copy:
    `libvar.so:counter` must name it, or a write would change nothing the
    process sees (it did: "counter = 99 (was 7)", and the process still
    printed 7)."""
    app = cc(build_dir / "var" / "copy_app", [C_DIR / "var_app.c"], "-DDIRECT",
             f"-L{var_program['lib'].parent}", "-lvar")
    env = {"LD_LIBRARY_PATH": str(var_program["lib"].parent)}
    with LiveProcess([app], env=env, preload_runtime=False) as process:
        assert process.next_line() == "ready"
        returncode, _, stderr = var("set", process.pid, "libvar.so:counter", "99", "--type",
                                    "i32")
        assert returncode == 0, stderr
        shown = ask(process, "show")
        assert "counter=99 " in shown and shown.endswith("direct=99"), shown
        assert var("get", process.pid, "libvar.so:counter")[1] == "libvar.so:counter = 99\n"
        assert var("get", process.pid, ":counter")[1] == ":counter = 99\n"


def test_a_large_bss_array_is_read_and_written_across_its_mappings(app) -> None:
    """`pad` (.bss, 12 KiB) starts in the last page mapped from the file and
    goes on in the anonymous mapping after it."""
    returncode, stdout, _ = var("get", app.pid, "libvar.so:pad", "--type", "str")
    assert (returncode, stdout) == (0, "libvar.so:pad = ''\n")
    text = "y" * (3 * 4096 + 99)
    assert var("set", app.pid, "libvar.so:pad", text, "--type", "str")[0] == 0
    returncode, stdout, _ = var("get", app.pid, "libvar.so:pad", "--type", "str")
    assert stdout == f"libvar.so:pad = '{text}'\n"


def test_a_string_that_is_not_utf8_is_written_as_given_and_shown_escaped(app) -> None:
    """The process is not asked to show it: its line would not be UTF-8."""
    written = subprocess.run([str(BIN / "ulp"), "var", "set", str(app.pid), "libvar.so:name",
                              b"caf\xe9\x1b[1m", "--type", "str"], capture_output=True,
                             timeout=60)
    assert written.returncode == 0, written.stderr
    returncode, stdout, _ = var("get", app.pid, "libvar.so:name", "--type", "str")
    assert stdout == "libvar.so:name = 'caf\\xe9\\x1b[1m'\n"   # one line, no escape sequence
    returncode, stdout, _ = var("get", app.pid, "libvar.so:name")      # the bytes as given
    assert stdout == "libvar.so:name = " + b"caf\xe9\x1b[1m".ljust(16, b"\0").hex() + "\n"


def test_another_users_process_is_refused(app) -> None:
    for args in (("get", app.pid, "libvar.so:counter"),
                 ("set", app.pid, "libvar.so:counter", "1", "--type", "i32")):
        done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               str(BIN / "ulp"), "var", *map(str, args)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == ExitCode.PERMISSION, done.stderr
        assert "permission denied" in done.stderr and len(done.stderr.splitlines()) == 1
    assert ask(app, "show") == INITIAL
