"""Issue 9 items 1, 2, 3 and 5 on real processes: private functions (static,
hidden, found in .symtab or a separate debug file), private and
thread-local data of the target, the main executable, libpulp .dsc lines
and labels.  The targets and fixes are the worked examples under
examples/, built and applied here as docs/patching-private.md tells."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from support import PATCHABLE, ROOT, LiveProcess, cc, shared_library, tool, trigger_here
from ulp.errors import ExitCode
from ulp.metadata import read_patch

EXAMPLES = ROOT / "examples"


def copy_example(name: str, build_dir: Path) -> Path:
    out = build_dir / name
    if not out.exists():
        shutil.copytree(EXAMPLES / name, out)
    return out


def prepare(path: Path, *args: str | Path) -> None:
    result = tool("ulp-prepare", path, *args)
    assert result.returncode == 0, result.stderr


def pack(desc: Path, *args: str | Path) -> Path:
    result = tool("ulp-packer", desc, *args)
    assert result.returncode == 0, result.stderr
    return desc.with_suffix(".ulp")


def packer_refuses(code: ExitCode, desc: Path) -> str:
    result = tool("ulp-packer", desc)
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ulp-packer: "), result.stderr
    assert not desc.with_suffix(".ulp").exists()
    return lines[0]


def applied(pid: int, patch: Path) -> str:
    code, out, err = trigger_here(pid, patch)
    assert code == 0, err
    return out


def ask(app: LiveProcess, line: str = "") -> str:
    app.send(line + "\n")
    return app.next_line()


# --- item 1: private functions ----------------------------------------------------


@pytest.fixture(scope="module")
def parse(build_dir: Path) -> Path:
    root = copy_example("private-function", build_dir)
    shared_library(root / "libparse.so", [root / "libparse.c"], "-Wl,-soname,libparse.so")
    prepare(root / "libparse.so")
    cc(root / "app", [root / "app.c"], f"-L{root}", "-lparse", f"-Wl,-rpath,{root}")
    shared_library(root / "parse_fix.so", [root / "parse_fix.c"], patchable=False)
    return root


def start_parse(root: Path) -> LiveProcess:
    app = LiveProcess([root / "app"])
    assert app.next_line() == "ready"
    return app


def test_private_entries_get_the_two_byte_nop(parse: Path) -> None:
    """ulp-prepare makes every patchable entry one two-byte NOP, exported or
    not: a thread can never be between two NOPs where a jump is written."""
    from ulp.elfinfo import open_elf, read_vaddr
    from ulp.symbols import SymbolTables

    (symbol,) = SymbolTables(str(parse / "libparse.so")).lookup("field_length")
    with open_elf(str(parse / "libparse.so")) as elf:
        assert read_vaddr(elf, symbol.value, 2) == b"\x66\x90"


def test_static_function_is_replaced_and_reverted(parse: Path) -> None:
    """The example: field_length() is static, parse_record() calls it
    directly; once patched, the direct call goes through version selection."""
    patch = pack(parse / "parse_fix.desc")
    metadata = read_patch(str(patch))
    assert metadata.units == () and [u.old_name for u in metadata.private_units] == [
        "field_length"]
    assert metadata.labels == ("EXAMPLE-0001 field_length trusts the declared length",)
    with start_parse(parse) as app:
        assert ask(app) == "length=100"
        out = applied(app.pid, patch)
        assert "(EXAMPLE-0001 field_length trusts the declared length)" in out
        assert out.rstrip().endswith(": field_length")
        assert ask(app) == "length=3"
        status = tool("ulp", "status", app.pid).stdout.splitlines()
        assert status[1].split(None, 1) == [metadata.patch_id_hex,
                                            "EXAMPLE-0001 field_length trusts the declared length"]
        code, _, err = trigger_here("--revert", app.pid, patch)
        assert code == 0, err
        assert ask(app) == "length=100"
        assert applied(app.pid, patch)  # again, on the descriptor made the first time
        assert ask(app) == "length=3"


NESTED_LIB = r"""
__attribute__((noipa)) static int helper(int x) { return x + 1; }
__attribute__((noipa, visibility("hidden"))) int hidden_helper(int x) { return x * 10; }
int api(int x) { return helper(x) + hidden_helper(x); }
/* two calls of the private helper in one activation, a callback between */
int twice(void (*between)(void)) { int a = helper(1); between(); return a * 1000 + helper(1); }
"""

NESTED_APP = r"""
#include <stdio.h>
#include <string.h>
int api(int x);
int twice(void (*between)(void));
static void wait_line(void) { char line[64]; printf("inside\n"); fgets(line, sizeof line, stdin); }
int main(void) {
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "twice", 5) == 0) printf("twice=%d\n", twice(wait_line));
        else printf("api=%d\n", api(1));
    }
    return 0;
}
"""

NESTED_FIX = r"""
int helper_fixed(int x) { return x + 100; }
int hidden_fixed(int x) { return x * 20; }
"""


@pytest.fixture(scope="module")
def nested(build_dir: Path) -> Path:
    root = build_dir / "private-nested"
    root.mkdir(exist_ok=True)
    for name, text in (("lib.c", NESTED_LIB), ("app.c", NESTED_APP), ("fix.c", NESTED_FIX)):
        (root / name).write_text(text)
    shared_library(root / "libnested.so", [root / "lib.c"])
    prepare(root / "libnested.so")
    cc(root / "app", [root / "app.c"], f"-L{root}", "-lnested", f"-Wl,-rpath,{root}")
    shared_library(root / "fix.so", [root / "fix.c"], patchable=False)
    (root / "fix.desc").write_text("fix.so\n@libnested.so\nhelper:helper_fixed\n"
                                   "hidden_helper:hidden_fixed\n")
    return root


def test_hidden_function_and_nested_calls_keep_the_universe(nested: Path) -> None:
    """A hidden function is replaced too; a thread inside the library when
    the patch comes keeps the old helper for the rest of that activation
    (its calls of the private function are nested), and the next call from
    outside sees the new one."""
    patch = pack(nested / "fix.desc")
    with LiveProcess([nested / "app"]) as app:
        assert app.next_line() == "ready"
        assert ask(app) == "api=12"
        assert ask(app, "twice") == "inside"
        applied(app.pid, patch)
        assert ask(app) == "twice=2002"  # both calls in the old universe
        assert ask(app) == "api=121"  # helper 101 + hidden 20
        assert ask(app, "twice") == "inside"
        assert ask(app) == "twice=101101"


def test_stacked_patches_of_a_private_function(nested: Path) -> None:
    """Two patches of one static function share its descriptor: the newest
    applied wins, reverting the older one in the middle leaves the newer in
    effect, reverting both gives the original back."""
    (nested / "fix_b.c").write_text("int helper_b(int x) { return x + 500; }\n")
    shared_library(nested / "fix_b.so", [nested / "fix_b.c"], patchable=False)
    (nested / "fix_b.desc").write_text("fix_b.so\n@libnested.so\nhelper:helper_b\n")
    first, second = pack(nested / "fix.desc"), pack(nested / "fix_b.desc")
    with LiveProcess([nested / "app"]) as app:
        assert app.next_line() == "ready"
        applied(app.pid, first)
        assert ask(app) == "api=121"
        applied(app.pid, second)
        assert ask(app) == "api=521"  # helper 501, hidden 20
        assert trigger_here("--revert", app.pid, first)[0] == 0
        assert ask(app) == "api=511"  # helper 501, hidden 10
        assert trigger_here("--revert", app.pid, second)[0] == 0
        assert ask(app) == "api=12"


def strip_with_debug_file(library: Path, debug: Path, link: bool) -> None:
    subprocess.run(["objcopy", "--only-keep-debug", library, debug], check=True, timeout=60)
    subprocess.run(["strip", "--strip-all", library], check=True, timeout=60)
    if link:
        subprocess.run(["objcopy", f"--add-gnu-debuglink={debug}", library], check=True,
                       timeout=60, cwd=debug.parent)


def build_id_of_elf(library: Path) -> str:
    from ulp.elfinfo import build_id, open_elf

    with open_elf(str(library)) as elf:
        return build_id(elf).hex()


@pytest.mark.parametrize("where", ["debuglink", "build-id"])
def test_stripped_library_uses_its_debug_file(parse: Path, tmp_path: Path, where: str,
                                              monkeypatch) -> None:
    """A stripped target: the static function is found in its separate
    debug file, through .gnu_debuglink or the build-id path, and the patch
    applies to a process running the stripped library."""
    for name in ("app", "parse_fix.so", "parse_fix.desc"):
        shutil.copy(parse / name, tmp_path / name)
    library = shared_library(tmp_path / "libparse.so", [parse / "libparse.c"],
                             "-Wl,-soname,libparse.so")
    debug_dir = tmp_path / "debug"
    # as a distribution does: split the debug data off, strip, then prepare
    # (binutils cannot rewrite a prepared library: its segments are LIEF's)
    if where == "debuglink":
        strip_with_debug_file(library, tmp_path / "libparse.so.debug", True)
    else:
        build_id = build_id_of_elf(library)
        target = debug_dir / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug"
        target.parent.mkdir(parents=True)
        strip_with_debug_file(library, target, False)
    prepare(library)
    monkeypatch.setenv("ULP_DEBUG_DIR", str(debug_dir))
    patch = pack(tmp_path / "parse_fix.desc")
    monkeypatch.setenv("LD_LIBRARY_PATH", str(tmp_path))
    with LiveProcess([tmp_path / "app"]) as app:
        assert app.next_line() == "ready"
        assert ask(app) == "length=100"
        applied(app.pid, patch)
        assert ask(app) == "length=3"


def test_stripped_library_without_debug_data_is_refused(parse: Path, tmp_path: Path,
                                                        monkeypatch) -> None:
    for name in ("parse_fix.so", "parse_fix.desc"):
        shutil.copy(parse / name, tmp_path / name)
    library = shared_library(tmp_path / "libparse.so", [parse / "libparse.c"])
    subprocess.run(["strip", "--strip-all", library], check=True, timeout=60)
    prepare(library)
    monkeypatch.setenv("ULP_DEBUG_DIR", str(tmp_path / "nothing"))
    line = packer_refuses(ExitCode.NOT_PATCHABLE, tmp_path / "parse_fix.desc")
    assert "parse_fix.desc:6: cannot find field_length:" in line
    assert "stripped and no debug file was found" in line


def test_function_without_padding_is_refused(tmp_path: Path) -> None:
    """A private function compiled without the padding cannot be routed:
    refused by name, as a missing one is."""
    (tmp_path / "lib.c").write_text(
        "__attribute__((noipa, patchable_function_entry(0, 0))) static int helper(int x)"
        " { return x + 1; }\nint api(int x) { return helper(x); }\n")
    (tmp_path / "fix.c").write_text(NESTED_FIX)
    prepare(shared_library(tmp_path / "libmixed.so", [tmp_path / "lib.c"]))
    shared_library(tmp_path / "fix.so", [tmp_path / "fix.c"], patchable=False)
    desc = tmp_path / "fix.desc"
    desc.write_text("fix.so\n@libmixed.so\nhelper:helper_fixed\n")
    assert "fix.desc:3: helper has no patchable entry" in packer_refuses(
        ExitCode.NOT_PATCHABLE, desc)
    desc.write_text("fix.so\n@libmixed.so\nnothere:helper_fixed\n")
    assert "fix.desc:3: nothere is not a patchable function of" in packer_refuses(
        ExitCode.NOT_PATCHABLE, desc)


# --- item 2: private and thread-local data ------------------------------------------


@pytest.fixture(scope="module")
def tally(build_dir: Path) -> Path:
    root = copy_example("private-data", build_dir)
    shared_library(root / "libtally.so", [root / "libtally.c"], "-Wl,-soname,libtally.so")
    prepare(root / "libtally.so")
    cc(root / "app", [root / "app.c"], f"-L{root}", "-ltally", f"-Wl,-rpath,{root}",
       "-pthread")
    # linked with the target: it calls thread_calls() by name
    shared_library(root / "tally_fix.so", [root / "tally_fix.c"], f"-L{root}", "-ltally",
                   patchable=False)
    return root


def test_static_and_thread_local_data_through_references(tally: Path) -> None:
    """The libpulp .dsc of the example: the fix adds to the library's static
    total, counts in each thread's own thread-local variable, calls a hidden
    function through a reference and an exported one by name."""
    patch = pack(tally / "tally_fix.dsc")
    metadata = read_patch(str(patch))
    assert [(ref.target_name, ref.ref_name) for ref in metadata.references] == [
        ("total", "total_ref"), ("calls", "calls_ref"), ("scaled", "scaled_ref")]
    with LiveProcess([tally / "app"]) as app:
        assert app.next_line() == "ready"
        assert ask(app) == "main total=1 calls=0"
        assert ask(app, "thread") == "thread total=2 calls=0"
        applied(app.pid, patch)
        assert ask(app) == "main total=12 calls=1"  # the same static total, +10 scaled
        assert ask(app) == "main total=22 calls=2"
        assert ask(app, "thread") == "thread total=32 calls=1"  # its own count
        assert ask(app) == "main total=42 calls=3"


DLOPEN_APP = r"""
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
    char line[64];
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) { printf("%s\n", dlerror()); return 1; }
    long (*add)(long) = (long (*)(long))dlsym(lib, "add");
    long (*calls)(void) = (long (*)(void))dlsym(lib, "thread_calls");
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        long total = add(1);
        printf("total=%ld calls=%ld\n", total, calls());
    }
    return 0;
}
"""


def test_patch_calls_a_target_loaded_rtld_local(tally: Path) -> None:
    """The program loaded the target with dlopen(RTLD_LOCAL): its symbols
    are in no global scope, and the patch, which calls thread_calls() by
    name, still loads (ld.so finds the target by its SONAME)."""
    (tally / "dlopen_app.c").write_text(DLOPEN_APP)
    app_path = cc(tally / "dlopen_app", [tally / "dlopen_app.c"], "-ldl")
    patch = pack(tally / "tally_fix.dsc")
    with LiveProcess([app_path, tally / "libtally.so"]) as app:
        assert app.next_line() == "ready"
        assert ask(app) == "total=1 calls=0"
        applied(app.pid, patch)
        assert ask(app) == "total=11 calls=1"


def test_patch_not_linked_with_a_target_loaded_rtld_local(tally: Path, tmp_path: Path) -> None:
    """The same patch built without linking the target: it calls
    thread_calls() by name, the program opened the target RTLD_LOCAL, and
    the runtime still loads it (the target's symbols are made global)."""
    for name in ("libtally.so", "tally_fix.c", "tally_fix.dsc"):
        shutil.copy(tally / name, tmp_path / name)
    (tmp_path / "dlopen_app.c").write_text(DLOPEN_APP)
    shared_library(tmp_path / "tally_fix.so", [tmp_path / "tally_fix.c"], patchable=False)
    app_path = cc(tmp_path / "dlopen_app", [tmp_path / "dlopen_app.c"], "-ldl")
    patch = pack(tmp_path / "tally_fix.dsc")
    with LiveProcess([app_path, tmp_path / "libtally.so"]) as app:
        assert app.next_line() == "ready"
        assert ask(app) == "total=1 calls=0"
        applied(app.pid, patch)
        assert ask(app) == "total=11 calls=1"


# --- item 3: the main executable -------------------------------------------------


@pytest.fixture(scope="module")
def server(build_dir: Path) -> Path:
    root = copy_example("executable", build_dir)
    cc(root / "server", [root / "server.c"], "-fPIE", "-pie", PATCHABLE)
    prepare(root / "server")
    shared_library(root / "server_fix.so", [root / "server_fix.c"], patchable=False)
    return root


def test_executable_function_is_replaced(server: Path) -> None:
    patch = pack(server / "server_fix.desc")
    with LiveProcess([server / "server"]) as app:
        assert app.next_line() == "ready"
        assert ask(app) == "quota=-2 requests=1"
        applied(app.pid, patch)
        assert ask(app) == "quota=0 requests=2"
        code, _, err = trigger_here("--revert", app.pid, patch)
        assert code == 0, err
        assert ask(app) == "quota=-2 requests=3"


EXE_NESTED = r"""
#include <stdio.h>
__attribute__((noipa)) static int inner(int x) { return x; }
/* used only by the patch, through a reference */
__attribute__((used, noipa)) static void wait_line(void)
{ char line[64]; printf("inside\n"); fgets(line, sizeof line, stdin); }
__attribute__((noipa)) static int outer(void) { int a = inner(1); return a; }
int main(void) {
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) printf("outer=%d\n", outer());
    return 0;
}
"""

EXE_NESTED_FIRST = r"""
#include <stdio.h>
int (*inner_ref)(int);
void (*wait_ref)(void);
/* outer, patched: two calls of inner with a pause between */
int outer_first(void) { int a = inner_ref(1); wait_ref(); return a * 1000 + inner_ref(1); }
int inner_first(int x) { return x + 10; }
"""

EXE_NESTED_SECOND = "int inner_second(int x) { return x + 20; }\n"


def test_executable_activation_keeps_its_universe(build_dir: Path) -> None:
    """In an executable, an activation of a patched function keeps one
    universe: a second patch of inner() applied while outer() (patched by
    the first) is inside does not change the inner() it calls; the next
    call of outer() sees it."""
    root = build_dir / "exe-nested"
    root.mkdir(exist_ok=True)
    for name, text in (("prog.c", EXE_NESTED), ("first.c", EXE_NESTED_FIRST),
                       ("second.c", EXE_NESTED_SECOND)):
        (root / name).write_text(text)
    cc(root / "prog", [root / "prog.c"], "-fPIE", "-pie", PATCHABLE)
    prepare(root / "prog")
    shared_library(root / "first.so", [root / "first.c"], patchable=False)
    shared_library(root / "second.so", [root / "second.c"], patchable=False)
    (root / "first.desc").write_text("first.so\n@prog\nouter:outer_first\n"
                                     "inner:inner_first\n#inner:inner_ref\n"
                                     "#wait_line:wait_ref\n")
    (root / "second.desc").write_text("second.so\n@prog\ninner:inner_second\n")
    first, second = pack(root / "first.desc"), pack(root / "second.desc")
    with LiveProcess([root / "prog"]) as app:
        assert app.next_line() == "ready"
        assert ask(app) == "outer=1"
        applied(app.pid, first)
        assert ask(app) == "inside"
        assert ask(app) == "outer=11011"
        assert ask(app) == "inside"
        applied(app.pid, second)  # while outer_first waits between its two calls
        assert ask(app) == "outer=11011"
        assert ask(app) == "inside"
        assert ask(app) == "outer=21021"


def test_prepared_executable_runs_without_the_runtime(server: Path) -> None:
    with LiveProcess([server / "server"], preload_runtime=False) as app:
        assert app.next_line() == "ready"
        assert ask(app) == "quota=-2 requests=1"


# --- item 5: libpulp descriptions ------------------------------------------------


def dsc(root: Path, text: str, name: str = "p.dsc") -> Path:
    path = root / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("line, message", [
    ("#total:total_ref:10:20", "is not supported; name the symbols"),
    ("#total:", "expected #symbol:variable"),
    ("#nothere:total_ref", "nothere is not a variable or function of"),
    ("#%total:calls_ref", "total is not a thread-local variable of"),
    ("#%calls:total_ref", "total_ref is not a tls_index (16 bytes) variable"),
    ("#total:missing_ref", "missing_ref is not a pointer (8 bytes) variable"),
    ("* ", "expected the path of the required patch"),
    ("*nothere.ulp", "nothere.ulp"),
])
def test_dsc_lines_work_or_are_refused_naming_the_line(tally: Path, line: str,
                                                       message: str) -> None:
    desc = dsc(tally, f"tally_fix.so\n@libtally.so\nadd:add_fixed\n{line}\n", "bad.dsc")
    result = tool("ulp-packer", desc)
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert "bad.dsc:4" in lines[0] or "nothere.ulp" in lines[0]
    assert not (tally / "bad.ulp").exists()


def test_dsc_dependency_and_labels(tally: Path) -> None:
    """``*path`` is libpulp's dependency on another patch; ``!`` lines are
    labels, kept in order; a ``#`` line that is no reference stays a comment."""
    first = pack(dsc(tally, "tally_fix.so\n@libtally.so\nadd:add_fixed\n#total:total_ref\n"
                     "#%calls:calls_ref\n#scaled:scaled_ref\n", "first.dsc"))
    second = pack(dsc(tally, "! CVE-2026-1111\ntally_fix.so\n*first.ulp\n@libtally.so\n"
                      "# a comment: not a reference\n!second label\n"
                      "thread_calls:add_fixed\n#total:total_ref\n#%calls:calls_ref\n"
                      "#scaled:scaled_ref\n", "second.dsc"))
    metadata = read_patch(str(second))
    assert metadata.requires == (read_patch(str(first)).patch_id,)
    assert metadata.labels == ("CVE-2026-1111", "second label")
    dump = tool("ulp-packer", "--dump", second).stdout
    assert "labels:           CVE-2026-1111; second label" in dump
    with LiveProcess([tally / "app"]) as app:
        assert app.next_line() == "ready"
        code, _, err = trigger_here(app.pid, second)
        assert code == ExitCode.DEPENDENCY, err
        applied(app.pid, first)
        out = applied(app.pid, second)
        assert "(CVE-2026-1111; second label)" in out
        status = tool("ulp", "status", app.pid).stdout
        assert "CVE-2026-1111; second label" in status
