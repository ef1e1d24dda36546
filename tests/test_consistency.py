"""The consistency model (docs/consistency.md, issue 3), case by case, on real
multi-threaded programs with prepared libraries, the runtime preloaded and
ulp-trigger applying and reverting patches underneath them.

Version tags: the original lib_tag returns 1 and the patch's replacement 2;
threads record what they saw and print it when asked.  Every wait is on a
line the program prints (with LiveProcess's timeout), never on a sleep."""

from __future__ import annotations

import ctypes.util
import json
import subprocess
import time
from pathlib import Path

import pytest
from consistency_support import (
    C_DIR,
    LiveProcess,
    apply,
    ask,
    cc,
    cxx,
    patch,
    patched_program,
    prepared_library,
    revert,
    tool,
    trigger,
)
from elftools.elf.elffile import ELFFile

from support import PATCHABLE, shared_library


@pytest.fixture(scope="module")
def cm(build_dir: Path) -> dict[str, Path]:
    """libcm.so (prepared), the program, and the patches for it."""
    root = build_dir / "cm"
    lib = prepared_library(root / "lib" / "libcm.so", [C_DIR / "cm_lib.c"], "-fexceptions")
    app = cc(root / "app", [C_DIR / "cm_app.c"], f"-L{root / 'lib'}", "-lcm", "-pthread")
    built = {"root": root, "lib": lib, "app": app}
    built["tag"] = patch(root, "fix_tag", lib, {"lib_tag": "lib_tag_v2"}, C_DIR / "cm_fix_tag.c")
    built["rec"] = patch(root, "fix_rec", lib, {"lib_rec": "lib_rec_v2"}, C_DIR / "cm_fix_rec.c")
    for value in (200, 300, 400, 500):
        built[f"v{value}"] = patch(root, f"fix_v{value}", lib, {"lib_value": f"value_{value}"},
                                   C_DIR / "cm_fix_value.c", f"-DNAME=value_{value}",
                                   f"-DVALUE={value}",
                                   requires=[built["v200"]] if value == 500 else [])
    built["o2000"] = patch(root, "fix_o2000", lib, {"lib_other": "other_2000"},
                           C_DIR / "cm_fix_value.c", "-DNAME=other_2000", "-DVALUE=2000")
    return built


def start(cm: dict[str, Path], mode: str = "none") -> LiveProcess:
    app = LiveProcess([cm["app"], mode], env={"LD_LIBRARY_PATH": str(cm["root"] / "lib")})
    ready = app.next_line()
    assert ready.startswith(f"w ready mode={mode} "), ready
    return app


# ---- 1. Blocked ----------------------------------------------------------------

def test_blocked_thread_keeps_old_code_while_others_migrate(cm) -> None:
    with start(cm) as app:
        app.send("w spin\n")
        assert ask(app, "spinwait 1000") == "spun"          # W is looping inside L
        apply(app.pid, cm["tag"])
        assert ask(app, "tag") == "main tag=2"              # external call: new code
        assert ask(app, "spinwait 100000") == "spun"        # W called lib_tag after apply
        assert ask(app, "tag") == "main tag=2"
        app.send("spinstop\n")
        assert app.next_line() == "w spin seen=2"           # bit 1 only: W saw version 1 only
        assert ask(app, "w tag") == "w tag=2"               # W's next external call


# ---- 2. Migration liveness -------------------------------------------------------

def test_thread_calling_from_a_loop_migrates_at_its_next_call(cm) -> None:
    with start(cm) as app:
        assert ask(app, "w tag") == "w tag=1"
        assert ask(app, "tag") == "main tag=1"
        apply(app.pid, cm["tag"])
        assert ask(app, "w tag") == "w tag=2"
        assert ask(app, "tag") == "main tag=2"
        revert(app.pid, cm["tag"])
        assert ask(app, "w tag") == "w tag=1"
        assert ask(app, "tag") == "main tag=1"


def test_thread_first_called_from_deep_frame_migrates_from_shallower_frames(cm) -> None:
    with start(cm) as app:
        assert ask(app, "w deep 200") == "w deep tag=1"
        apply(app.pid, cm["tag"])
        assert ask(app, "w deep 20") == "w deep tag=2"
        revert(app.pid, cm["tag"])
        assert ask(app, "w tag") == "w tag=1"
        apply(app.pid, cm["tag"])
        assert ask(app, "w deep 0") == "w deep tag=2"


# ---- 4. Callbacks ------------------------------------------------------------------

def test_callback_reentering_library_keeps_the_outer_universe(cm) -> None:
    with start(cm) as app:
        app.send("w sort\n")
        assert app.next_line() == "cmp inside"            # W is in the comparator, inside lib_sort
        apply(app.pid, cm["tag"])
        assert ask(app, "tag") == "main tag=2"            # another thread: new code
        app.send("release\n")
        done = app.next_line()
        sorted_, lib_seen, cb_seen = done.split()[2:]
        assert sorted_ == "1235789"
        assert lib_seen.startswith("lib=") and cb_seen.startswith("cb="), done
        assert set(lib_seen[4:]) == {"1"}, done           # L's own nested calls: old
        assert set(cb_seen[3:]) == {"1"}, done            # the callback's calls into L: old
        assert len(cb_seen[3:]) > 2 and len(lib_seen[4:]) > 2
        assert ask(app, "w tag") == "w tag=2"             # next external entry: new


def test_an_activation_entered_through_a_pointer_keeps_its_universe(cm) -> None:
    """A static function of the library called through a pointer (no
    trampoline, no patched entry: nothing of the runtime sees it begin)
    calls back into the program, which enters the library from outside: that
    entry, and the rest of the activation, keep its universe (issue 7)."""
    with start(cm) as app:
        app.send("w pointer\n")
        assert app.next_line() == "pointer inside"        # W blocked in the callback
        apply(app.pid, cm["tag"])
        assert ask(app, "tag") == "main tag=2"
        app.send("release\n")
        assert app.next_line() == "w pointer=111"
        assert ask(app, "w tag") == "w tag=2"


# ---- 5. Signal handlers --------------------------------------------------------

@pytest.mark.parametrize("mode,stack,where", [
    ("none", "thread-stack", "none"),
    ("malloc", "altstack", "below"),
    ("raw", "altstack", "below"),   # installed with the raw system call (issue 7)
    ("above", "altstack", "above"),
])
def test_signal_handler_inside_library_keeps_the_interrupted_universe(cm, mode, stack,
                                                                      where) -> None:
    with LiveProcess([cm["app"], mode], env={"LD_LIBRARY_PATH": str(cm["root"] / "lib")}) as app:
        assert app.next_line() == f"w ready mode={mode} altstack={where}"
        app.send("w hold\n")
        assert app.next_line() == "hold inside"           # W blocked in read() inside lib_hold
        apply(app.pid, cm["tag"])
        # the handler interrupts W inside L: its calls are nested, universe of lib_hold
        assert ask(app, "signal") == f"handler tag=1 nested=1 on={stack}"
        assert ask(app, "tag") == "main tag=2"
        app.send("release\n")
        assert app.next_line() == "w hold=11"             # the interrupted activation: old
        assert ask(app, "w tag") == "w tag=2"
        # and a handler interrupting W outside L is an external entry: new code
        assert ask(app, "signal") == f"handler tag=2 nested=2 on={stack}"


# ---- 6. Revert while inside ----------------------------------------------------

def test_revert_while_inside_keeps_the_patch_until_the_thread_leaves(cm) -> None:
    with start(cm) as app:
        apply(app.pid, cm["tag"])
        app.send("w hold\n")
        assert app.next_line() == "hold inside"           # entered after P: sees 2
        revert(app.pid, cm["tag"])
        assert ask(app, "tag") == "main tag=1"
        app.send("release\n")
        assert app.next_line() == "w hold=22"             # keeps P until it leaves L
        assert ask(app, "w tag") == "w tag=1"             # then the state without P


# ---- 7. Stacks of patches and dependencies ------------------------------------

def values(app: LiveProcess) -> str:
    return ask(app, "values")


@pytest.mark.parametrize("order", [(3, 2, 1), (2, 3, 1), (1, 3, 2), (1, 2, 3)])
def test_stacked_patches_revert_in_any_order(cm, order) -> None:
    patches = {1: cm["v200"], 2: cm["v300"], 3: cm["v400"]}
    tags = {1: 200, 2: 300, 3: 400}
    with start(cm) as app:
        assert values(app) == "value=100 other=1000"
        applied: list[int] = []
        for number in (1, 2, 3):
            apply(app.pid, patches[number])
            applied.append(number)
            assert values(app) == f"value={tags[number]} other=1000"
        for number in order:
            revert(app.pid, patches[number])
            applied.remove(number)
            expected = tags[max(applied)] if applied else 100
            assert values(app) == f"value={expected} other=1000", (order, number)


def test_patches_on_different_functions_are_independent(cm) -> None:
    with start(cm) as app:
        apply(app.pid, cm["v200"])
        apply(app.pid, cm["o2000"])
        assert values(app) == "value=200 other=2000"
        revert(app.pid, cm["v200"])
        assert values(app) == "value=100 other=2000"
        apply(app.pid, cm["v300"])
        assert values(app) == "value=300 other=2000"
        revert(app.pid, cm["o2000"])
        assert values(app) == "value=300 other=1000"
        revert(app.pid, cm["v300"])
        assert values(app) == "value=100 other=1000"


def status(pid: int) -> str:
    result = tool("ulp", "status", str(pid))
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_dependencies_are_checked_on_apply_and_on_revert(cm) -> None:
    with start(cm) as app:
        before = status(app.pid)
        refused = trigger(app.pid, cm["v500"])           # requires fix_v200, not applied
        assert refused.returncode == 14, refused.stderr
        assert values(app) == "value=100 other=1000"
        assert status(app.pid) == before
        apply(app.pid, cm["v200"])
        apply(app.pid, cm["v500"])
        assert values(app) == "value=500 other=1000"
        with_both = status(app.pid)
        refused = trigger("--revert", app.pid, cm["v200"])   # fix_v500 still needs it
        assert refused.returncode == 14, refused.stderr
        assert values(app) == "value=500 other=1000"
        assert status(app.pid) == with_both
        revert(app.pid, cm["v500"])
        assert values(app) == "value=200 other=1000"
        revert(app.pid, cm["v200"])
        assert values(app) == "value=100 other=1000"


# ---- 8. Recursion ---------------------------------------------------------------

def test_recursion_patched_midway_finishes_with_the_old_version(cm) -> None:
    with start(cm) as app:
        app.send("w rec 60 30\n")                          # blocks at depth 30 of 60
        assert app.next_line() == "rec inside"
        apply(app.pid, cm["rec"])
        app.send("release\n")
        assert app.next_line() == "w rec " + "1" * 61 + " sum=1830"
        assert ask(app, "w rec 60 -1") == "w rec " + "2" * 61 + " sum=1830"
        revert(app.pid, cm["rec"])
        assert ask(app, "w rec 60 -1") == "w rec " + "1" * 61 + " sum=1830"


# ---- 10. longjmp out of L --------------------------------------------------------

def test_longjmp_out_of_library_leaves_the_thread_able_to_migrate(cm) -> None:
    with start(cm) as app:
        assert ask(app, "w longjmp") == "w longjmp escaped tag=1"
        apply(app.pid, cm["tag"])
        assert ask(app, "w tag") == "w tag=2"
        assert ask(app, "w longjmp") == "w longjmp escaped tag=2"
        revert(app.pid, cm["tag"])
        assert ask(app, "w tag") == "w tag=1"


# ---- 3. One universe per activation ------------------------------------------------

ROUNDS = 20


@pytest.fixture(scope="module")
def combo(build_dir: Path) -> dict[str, Path]:
    """libcmcombo.so in two builds (calls through the PLT, direct calls), the
    program, and a patch for each build."""
    root = build_dir / "combo"
    built = {"root": root}
    for variant, flags in (("plt", ()), ("direct", ("-fno-semantic-interposition",))):
        lib = prepared_library(root / variant / "libcmcombo.so", [C_DIR / "cm_combo.c"], *flags)
        built[variant] = patch(root, f"fix_{variant}", lib,
                               {f"combo_{x}": f"combo_{x}_v2" for x in "abc"},
                               C_DIR / "cm_combo_fix.c")
        code = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(lib)],
                              capture_output=True, text=True, check=True).stdout
        body = code.split("<combo>:")[1].split("\n\n")[0]
        calls = [line.split("call")[1].strip() for line in body.splitlines() if "call" in line]
        for name in ("combo_a", "combo_b", "combo_c"):
            assert any(f"<{name}" in call for call in calls), body
        through_plt = all("@plt>" in call for call in calls)
        direct = all("@plt>" not in call for call in calls)
        assert through_plt if variant == "plt" else direct, calls
    built["app"] = cc(root / "app", [C_DIR / "cm_combo_app.c"], f"-L{root / 'plt'}",
                      "-lcmcombo", "-pthread")
    return built


@pytest.mark.parametrize("variant", ["plt", "direct"])
def test_each_activation_sees_one_universe_while_patches_come_and_go(combo, variant) -> None:
    fix = combo[variant]
    env = {"LD_LIBRARY_PATH": str(combo["root"] / variant)}
    with LiveProcess([combo["app"]], env=env) as app:
        assert app.next_line() == "running"
        assert ask(app, "sync") == "last 111 111 111"
        for _ in range(ROUNDS):
            apply(app.pid, fix)
            assert ask(app, "sync") == "last 222 222 222"     # every thread migrated
            revert(app.pid, fix)
            assert ask(app, "sync") == "last 111 111 111"
        totals = dict(item.split("=") for item in ask(app, "stop").split())
        assert totals["mixed"] == "0", totals
        assert int(totals["old"]) > 0 and int(totals["new"]) > 0, totals


# ---- 9./10. The stack stays intact: exceptions, cancellation, backtraces, gdb ------

@pytest.fixture(scope="module")
def cxx_build(build_dir: Path) -> dict[str, Path]:
    root = build_dir / "cxx"
    (root / "lib").mkdir(parents=True)
    lib = cxx(root / "lib" / "libcmcxx.so", [C_DIR / "cm_cxx_lib.cpp"], "-shared", "-fPIC",
              "-fexceptions", PATCHABLE)
    prepared = tool("ulp-prepare", lib)
    assert prepared.returncode == 0, prepared.stderr
    app = cxx(root / "app", [C_DIR / "cm_cxx_app.cpp"], "-rdynamic", f"-L{root / 'lib'}",
              "-lcmcxx", "-pthread")
    fix = patch(root, "fix_cxx", lib, {name: f"{name}_v2" for name in
                                       ("cxx_tag", "cxx_throw", "cxx_block", "cxx_backtrace")},
                C_DIR / "cm_cxx_fix.cpp", compiler=cxx)
    return {"root": root, "app": app, "fix": fix}


def start_cxx(cxx_build) -> LiveProcess:
    app = LiveProcess([cxx_build["app"]], env={"LD_LIBRARY_PATH": str(cxx_build["root"] / "lib")})
    assert app.next_line() == "ready"
    return app


def test_cxx_exception_thrown_inside_library_is_caught_before_and_after_patch(cxx_build) -> None:
    with start_cxx(cxx_build) as app:
        assert ask(app, "throw") == "caught v1 -7"
        apply(app.pid, cxx_build["fix"])
        assert ask(app, "throw") == "caught v2 -7"        # thrown inside the patched version
        revert(app.pid, cxx_build["fix"])
        assert ask(app, "throw") == "caught v1 -7"


def test_pthread_cancel_inside_library_runs_cleanup_handlers(cxx_build) -> None:
    canceled = "joined canceled=1 app_cleanup=1 lib_cleanup=1 lib_dtor=1 result=0"
    with start_cxx(cxx_build) as app:
        app.send("block\n")
        assert app.next_line() == "block1 inside"
        assert ask(app, "cancel") == canceled
        apply(app.pid, cxx_build["fix"])
        app.send("block\n")
        assert app.next_line() == "block2 inside"         # blocked in the patched version
        assert ask(app, "cancel") == canceled
        app.send("block\n")
        assert app.next_line() == "block2 inside"
        assert ask(app, "unblock") == \
            "joined canceled=0 app_cleanup=0 lib_cleanup=0 lib_dtor=1 result=2"


def backtrace_functions(line: str) -> list[str]:
    """Function names of `bt v1 path(fn+0x..) [..] ...`, in order."""
    names = []
    for frame in line.split()[2:]:
        if "(" in frame and "+" in frame:
            names.append(frame.split("(")[1].split("+")[0])
    return names


def test_backtrace_inside_library_shows_the_callers(cxx_build) -> None:
    with start_cxx(cxx_build) as app:
        for version in ("v1", "v2"):
            line = ask(app, "bt")
            assert line.startswith(f"bt {version} "), line
            names = backtrace_functions(line)
            callers = [name for name in names if name in ("bt_inner", "bt_outer", "main")]
            assert callers == ["bt_inner", "bt_outer", "main"], line
            if version == "v1":
                apply(app.pid, cxx_build["fix"])


def gdb_threads(pid: int) -> list[str]:
    """`thread apply all bt` of gdb attached to PID, one string per thread."""
    command = ["gdb", "-batch", "-nx", "-p", str(pid), "-ex", "thread apply all bt"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=20,
                                stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as hung:
        raise AssertionError(f"gdb attached to {pid} did not finish in 20 s; it printed "
                             f"{hung.stdout!r}") from None
    return result.stdout.split("\nThread ")


def test_gdb_backtrace_of_thread_inside_library_reaches_its_start(cxx_build) -> None:
    with start_cxx(cxx_build) as app:
        for version in ("1", "2"):
            app.send("block\n")
            assert app.next_line() == f"block{version} inside"
            threads = gdb_threads(app.pid)
            blocked = [text for text in threads if "cxx_block" in text]
            assert len(blocked) == 1, threads
            frames = blocked[0]
            assert "blocker_main" in frames, frames
            assert frames.index("cxx_block") < frames.index("blocker_main"), frames
            main_thread = [text for text in threads if " main " in text or " main (" in text]
            assert main_thread, threads
            assert app.alive()
            assert ask(app, "cancel").startswith("joined canceled=1")
            if version == "1":
                apply(app.pid, cxx_build["fix"])


def test_cxx_exception_crossing_library_leaves_the_thread_able_to_migrate(cxx_build) -> None:
    with start_cxx(cxx_build) as app:
        assert ask(app, "cross") == "crossed seen=11"
        apply(app.pid, cxx_build["fix"])
        assert ask(app, "tag") == "tag=2"
        assert ask(app, "cross") == "crossed seen=22"
        revert(app.pid, cxx_build["fix"])
        assert ask(app, "tag") == "tag=1"


# ---- 11. Arguments and returns ----------------------------------------------------

@pytest.fixture(scope="module")
def args_build(build_dir: Path) -> dict[str, Path]:
    root = build_dir / "args"
    include = f"-I{C_DIR}"
    lib = prepared_library(root / "prepared" / "libcmargs.so", [C_DIR / "cm_args_lib.c"], include)
    (root / "plain").mkdir()
    shared_library(root / "plain" / "libcmargs.so", [C_DIR / "cm_args_lib.c"], include)
    app = cc(root / "app", [C_DIR / "cm_args_app.c"], include, f"-L{root / 'plain'}",
             "-lcmargs", "-ldl")
    fix = patch(root, "fix_args", lib, {name: f"{name}_v2" for name in
                                        ("args_many", "args_varargs", "args_pair", "args_big")},
                C_DIR / "cm_args_fix.c", include)
    return {"root": root, "app": app, "fix": fix, "fix_so": root / "fix_args.so"}


def args_app(args_build, libdir: str, preload: bool = True) -> LiveProcess:
    env = {"LD_LIBRARY_PATH": str(args_build["root"] / libdir)}
    app = LiveProcess([args_build["app"]], env=env, preload_runtime=preload)
    assert app.next_line() == "ready"
    return app


def test_arguments_and_returns_identical_prepared_and_unprepared(args_build) -> None:
    with args_app(args_build, "plain", preload=False) as plain, \
            args_app(args_build, "plain") as plain_runtime, \
            args_app(args_build, "prepared", preload=False) as prepared, \
            args_app(args_build, "prepared") as tracked:
        expected = ask(plain, "call")
        assert expected.startswith("many=") and "nan" not in expected, expected
        assert ask(plain_runtime, "call") == expected
        assert ask(prepared, "call") == expected
        assert ask(tracked, "call") == expected


def test_arguments_and_returns_identical_patched_and_replacement_called_directly(
        args_build) -> None:
    with args_app(args_build, "prepared") as app:
        original = ask(app, "call")
        direct = ask(app, f"direct {args_build['fix_so']}")
        assert direct.startswith("many=") and direct != original
        for field_original, field_direct in zip(original.split(), direct.split(), strict=True):
            assert field_original != field_direct      # every function differs in the patch
        apply(app.pid, args_build["fix"])
        assert ask(app, "call") == direct
        revert(app.pid, args_build["fix"])
        assert ask(app, "call") == original


# ---- 12. Library shapes ------------------------------------------------------------

def symbol_address(lib: Path, name: str) -> int:
    from elftools.elf.elffile import ELFFile
    with open(lib, "rb") as stream:
        symbol = ELFFile(stream).get_section_by_name(".symtab").get_symbol_by_name(name)[0]
        return symbol["st_value"]


def page_crossing_library(out: Path) -> Path:
    """libcmpage.so, with page_tag's 14 bytes of padding across a 4 KiB boundary."""
    flags = ["-DNAME=page_tag", "-fno-toplevel-reorder", "-falign-functions=1"]
    shared_library(out, [C_DIR / "cm_shape.c"], *flags, "-DFILL=16")
    fill = 16 + (6 - symbol_address(out, "page_tag")) % 4096
    shared_library(out, [C_DIR / "cm_shape.c"], *flags, f"-DFILL={fill}")
    entry = symbol_address(out, "page_tag")
    assert 0 < entry % 4096 < 14, hex(entry)        # padding [entry-14, entry) crosses a page
    prepared = tool("ulp-prepare", out)
    assert prepared.returncode == 0, prepared.stderr
    assert symbol_address(out, "page_tag") == entry
    return out


@pytest.fixture(scope="module")
def shapes(build_dir: Path) -> dict[str, Path]:
    root = build_dir / "shapes"
    lib = root / "lib"
    shape = C_DIR / "cm_shape.c"
    libs = {
        "sym": prepared_library(lib / "libcmsym.so", [shape], "-DNAME=sym_tag", "-Wl,-Bsymbolic"),
        "weak": prepared_library(lib / "libcmweak.so", [shape], "-DNAME=weak_tag", "-DWEAK"),
        "cet": prepared_library(lib / "libcmcet.so", [shape], "-DNAME=cet_tag",
                                "-fcf-protection=full"),
        "page": page_crossing_library(lib / "libcmpage.so"),
        "a": prepared_library(lib / "libcma.so", [shape], "-DNAME=a_tag"),
        "b": prepared_library(lib / "libcmb.so", [shape], "-DNAME=b_tag"),
        "dl": prepared_library(root / "dl" / "libcmdl.so", [shape], "-DNAME=dl_tag"),
    }
    app = cc(root / "app", [C_DIR / "cm_shapes_app.c"], f"-L{lib}", "-lcmsym", "-lcmweak",
             "-lcmcet", "-lcmpage", "-lcma", "-lcmb", "-ldl")
    built = {"root": root, "app": app, **{f"lib_{k}": v for k, v in libs.items()}}
    for name, target in libs.items():
        built[name] = patch(root, f"fix_{name}", target, {f"{name}_tag": f"{name}_tag_v2"},
                            C_DIR / "cm_fix_value.c", f"-DNAME={name}_tag_v2", "-DVALUE=2")
    return built


ORIGINAL_SHAPES = "sym=1 sym_twice=11 weak=1 cet=1 page=1 a=1 b=1"


def start_shapes(shapes) -> LiveProcess:
    app = LiveProcess([shapes["app"]], env={"LD_LIBRARY_PATH": str(shapes["root"] / "lib")})
    assert app.next_line() == "ready"
    return app


def test_bsymbolic_library_routes_its_direct_internal_calls(shapes) -> None:
    code = subprocess.run(["objdump", "-d", str(shapes["lib_sym"])], capture_output=True,
                          text=True, check=True).stdout
    twice = code.split("<sym_tag_twice>:")[1].split("\n\n")[0]
    assert "<sym_tag>" in twice and "@plt" not in twice, twice   # -Bsymbolic: direct calls
    with start_shapes(shapes) as app:
        assert ask(app, "call") == ORIGINAL_SHAPES
        apply(app.pid, shapes["sym"])
        assert ask(app, "call") == ORIGINAL_SHAPES.replace("sym=1 sym_twice=11",
                                                           "sym=2 sym_twice=22")
        revert(app.pid, shapes["sym"])
        assert ask(app, "call") == ORIGINAL_SHAPES


@pytest.mark.parametrize("name", ["weak", "cet", "page"])
def test_library_shape_is_patched_and_reverted(shapes, name) -> None:
    if name == "cet":
        code = subprocess.run(["objdump", "-d", str(shapes["lib_cet"])], capture_output=True,
                              text=True, check=True).stdout
        body = code.split("<cet_tag>:")[1].split("\n\n")[0]
        assert "endbr64" in body.splitlines()[1], body         # endbr64 at the entry
    with start_shapes(shapes) as app:
        assert ask(app, "call") == ORIGINAL_SHAPES
        apply(app.pid, shapes[name])
        assert ask(app, "call") == ORIGINAL_SHAPES.replace(f"{name}=1", f"{name}=2")
        revert(app.pid, shapes[name])
        assert ask(app, "call") == ORIGINAL_SHAPES


def test_library_loaded_with_dlopen_after_start_is_patched(shapes) -> None:
    with start_shapes(shapes) as app:
        assert ask(app, "dl") == "dl=-1"
        refused = trigger(app.pid, shapes["dl"])                  # not loaded yet
        assert refused.returncode == 9, (refused.returncode, refused.stderr)
        assert ask(app, "dl") == "dl=-1"
        assert ask(app, f"dlopen {shapes['lib_dl']}") == "dl loaded"
        assert ask(app, "dl") == "dl=1"
        apply(app.pid, shapes["dl"])
        assert ask(app, "dl") == "dl=2"
        assert ask(app, "call") == ORIGINAL_SHAPES
        revert(app.pid, shapes["dl"])
        assert ask(app, "dl") == "dl=1"


def test_two_prepared_libraries_are_patched_independently(shapes) -> None:
    with start_shapes(shapes) as app:
        apply(app.pid, shapes["a"])
        assert ask(app, "call") == ORIGINAL_SHAPES.replace("a=1", "a=2")
        apply(app.pid, shapes["b"])
        assert ask(app, "call") == ORIGINAL_SHAPES.replace("a=1 b=1", "a=2 b=2")
        revert(app.pid, shapes["a"])
        assert ask(app, "call") == ORIGINAL_SHAPES.replace("b=1", "b=2")
        revert(app.pid, shapes["b"])
        assert ask(app, "call") == ORIGINAL_SHAPES


def test_forked_child_is_patched_on_its_own(shapes) -> None:
    with start_shapes(shapes) as app:
        app.send("fork\n")
        child = int(app.next_line().removeprefix("child pid="))
        try:
            apply(child, shapes["a"])                            # the child's own agent
            assert ask(app, "child call") == "child " + ORIGINAL_SHAPES.replace("a=1", "a=2")
            assert ask(app, "call") == ORIGINAL_SHAPES            # the parent is unchanged
            apply(app.pid, shapes["a"])
            assert ask(app, "call") == ORIGINAL_SHAPES.replace("a=1", "a=2")
            revert(child, shapes["a"])
            assert ask(app, "child call") == "child " + ORIGINAL_SHAPES
            assert ask(app, "call") == ORIGINAL_SHAPES.replace("a=1", "a=2")
        finally:
            app.send("child-exit\n")
        assert app.next_line() == "child exited 0"


# ---- coroutine stacks -------------------------------------------------------------

@pytest.fixture(scope="module")
def coro(build_dir: Path) -> dict[str, Path]:
    return patched_program(build_dir / "coro", "coro", C_DIR / "cm_coro_lib.c",
                           C_DIR / "cm_coro_app.c", {"coro_tag": "coro_tag_v2"},
                           C_DIR / "cm_coro_fix.c", "-pthread", fix_name="fix_coro")


def test_coroutine_on_another_stack_keeps_the_live_activation_universe(coro) -> None:
    """A callback of L switches to a coroutine on a heap stack, far below the
    thread's stack, which calls L: the activation on the thread's stack is
    live, so the coroutine's call is nested and sees its universe, and so does
    the rest of the activation; the next external call migrates."""
    with LiveProcess([coro["app"]], env={"LD_LIBRARY_PATH": str(coro["root"] / "lib")}) as app:
        assert app.next_line() == "ready"
        app.send("run\n")
        assert app.next_line() == "coroutine waiting"     # inside L, on the coroutine
        apply(app.pid, coro["fix"])
        app.send("go\n")
        assert app.next_line() == "run=11 coroutine=1"    # one universe: the old one
        assert ask(app, "tag") == "tag=2"
        app.send("run\n")
        assert app.next_line() == "coroutine waiting"
        app.send("go\n")
        assert app.next_line() == "run=22 coroutine=2"



@pytest.mark.parametrize("kernel", ["", "old kernel"])
@pytest.mark.parametrize("how", ["park unnoted", "park unnoted heap", "park unnoted static"])
def test_a_coroutine_parked_on_a_stack_not_noted_holds_the_commit_back(coro, how,
                                                                       kernel) -> None:
    """The parked coroutine of the test below, on a stack made without the
    runtime's makecontext and not noted (an mmap of its own, a block of
    malloc's heap, an array of the program's): no thread runs on it and
    nothing says it is a stack.
    The commit finds the return address the activation left there and
    changes nothing (15, RETRY, saying where), so the activation resumes in
    the universe it began in (12 was the mix).  Once it has ended, the
    same apply goes through.  "old kernel": the kernel's page-table walk
    and mapping queries refused (a seccomp filter), the search reads the
    text of /proc/self/maps and /proc/self/pagemap instead."""
    with LiveProcess([coro["app"]], env={"LD_LIBRARY_PATH": str(coro["root"] / "lib")}) as app:
        assert app.next_line() == "ready"
        if kernel:
            assert ask(app, kernel) == kernel
        assert ask(app, how) == "parked"
        refused_for_now(app.pid, coro["fix"], "a stack the runtime was not told of")
        assert ask(app, "tag") == "tag=1"                 # nothing changed
        assert ask(app, "resume") == "resumed run=11"
        assert ask(app, "unpark") == "unparked"
        apply(app.pid, coro["fix"])
        assert ask(app, "tag") == "tag=2"
        assert ask(app, how) == "parked"                  # began in the new universe
        assert ask(app, "resume") == "resumed run=22"




def test_a_coroutine_parked_by_a_signal_handler_holds_the_commit_back(coro) -> None:
    """On an unnoted stack a coroutine spins in coro_spin, the outermost
    frame of its activation, with no call made yet; a timer signal's handler
    switches back to main from inside the loop.  The activation's only word
    is the interrupted %rip in the signal frame, not a return address: the
    commit must find it all the same and wait (15).  Resumed, coro_spin's
    call runs in the universe the activation began in (1; 2 was the mix)."""
    with LiveProcess([coro["app"]], env={"LD_LIBRARY_PATH": str(coro["root"] / "lib")}) as app:
        assert app.next_line() == "ready"
        # the library registered from main's stack: the coroutine's stack
        # holds no word of the runtime's first-call code, only the frame
        assert ask(app, "tag") == "tag=1"
        assert ask(app, "park unnoted signal") == "parked"
        refused_for_now(app.pid, coro["fix"], "a stack the runtime was not told of")
        assert ask(app, "resume spin") == "resumed spin=1"
        apply(app.pid, coro["fix"])
        assert ask(app, "tag") == "tag=2"


def test_a_search_that_would_take_too_long_is_refused_and_can_be_waived(coro) -> None:
    """ULP_FOREIGN_STACKS=1 (MiB): the process has more memory to search
    than that, so the commit is refused (15) with a message that names the
    limit and the way out; with --trust-stacks the operator vouches for the
    program's stacks and the search is skipped: the same apply goes
    through, and so does a revert."""
    env = {"LD_LIBRARY_PATH": str(coro["root"] / "lib"), "ULP_FOREIGN_STACKS": "1"}
    with LiveProcess([coro["app"], "2"], env=env) as app:
        assert app.next_line() == "ready"
        refused = trigger(app.pid, coro["fix"])
        assert refused.returncode == 15, (refused.returncode, refused.stderr)
        assert "more than 1 MiB of memory to search" in refused.stderr
        assert "--trust-stacks" in refused.stderr
        assert ask(app, "tag") == "tag=1"
        done = trigger("--trust-stacks", app.pid, coro["fix"])
        assert done.returncode == 0, done.stderr
        assert ask(app, "tag") == "tag=2"
        done = trigger("--trust-stacks", "--revert", app.pid, coro["fix"])
        assert done.returncode == 0, done.stderr
        assert ask(app, "tag") == "tag=1"


def test_a_pointer_to_the_padding_after_a_call_that_never_returns_is_no_waiting_activation(
        build_dir: Path) -> None:
    """A library function ending with a call that never returns (abort),
    the next function laid right after it: the library's own
    __patchable_function_entries (writable data) holds a pointer to that
    function's padding, just past the call, the very word a return address
    would be.  The commit's search for activations on unnoted stacks must
    not take it for one (SQLite has 35 such words: every apply failed)."""
    root = build_dir / "noreturn"
    lib = prepared_library(root / "lib" / "libnr.so", [C_DIR / "nr_lib.c"],
                           "-falign-functions=1", "-fno-reorder-functions")
    with open(lib, "rb") as stream:
        elf = ELFFile(stream)
        text = elf.get_section_by_name(".text")
        value = next(s["st_value"] for s in elf.get_section_by_name(".symtab").iter_symbols()
                     if s.name == "nr_value")
        code = text.data()
        # what makes the case: a call (e8 rel32) ends where nr_value's padding begins
        padding = value - 14
        assert code[padding - text["sh_addr"] - 5] == 0xE8, code.hex()
    app = cc(root / "app", [C_DIR / "nr_app.c"], f"-L{lib.parent}", "-lnr")
    fix = patch(root, "fix", lib, {"nr_value": "nr_value_v2"}, C_DIR / "nr_fix.c")
    with LiveProcess([app], env={"LD_LIBRARY_PATH": str(lib.parent)}) as target:
        assert target.next_line() == "ready"
        assert ask(target, "call") == "value=1"
        apply(target.pid, fix)
        assert ask(target, "call") == "value=2"


@pytest.mark.parametrize("then,expected", [("let spin", "spun=11"),
                                           ("switch away", "away tag=2 spun=11")])
def test_a_coroutine_running_inside_the_library_at_the_commit_keeps_its_universe(
        coro, then, expected) -> None:
    """A thread runs a coroutine (makecontext) that spins in
    coro_spin_then_tag, the outermost frame of its activation, when the
    patch is applied: the activation is live on the coroutine's stack, but
    its only trace is the thread's %rip, no word on the stack.  The commit
    must keep that stack in the old universe as it keeps the thread: the
    activation's call after the commit sees 1 (11; 12 was the mix: the
    thread, pending, judged its nested call on a noted stack that was not
    pending as one of an activation begun there after the commit).
    "switch away": a signal's handler switches from the loop back to the
    thread's own stack, where the thread calls the library and moves to the
    new universe (2), then resumes the loop: the stack keeps the old one."""
    with LiveProcess([coro["app"]], env={"LD_LIBRARY_PATH": str(coro["root"] / "lib")}) as app:
        assert app.next_line() == "ready"
        # the library registered from main's stack: the coroutine's stack
        # holds no word of the runtime's first-call code
        assert ask(app, "tag") == "tag=1"
        assert ask(app, "spin thread") == "spinning"
        apply(app.pid, coro["fix"])
        assert ask(app, "tag") == "tag=2"
        assert ask(app, then) == expected


def test_a_thread_running_the_library_on_a_stack_not_noted_holds_the_commit_back(coro) -> None:
    """The activation above on a stack nobody noted: the commit cannot know
    it is a coroutine's, which a signal's handler may switch away from and
    which its thread may resume after leaving the library, and it has no
    word to find.  So a thread stopped running prepared code on such a stack
    holds the commit back (15, RETRY).  Before, the apply went through, the
    handler switched away, the thread moved to the new universe at its next
    call, resumed the loop, and the activation saw 1 and 2 (spun=12)."""
    with LiveProcess([coro["app"]], env={"LD_LIBRARY_PATH": str(coro["root"] / "lib")}) as app:
        assert app.next_line() == "ready"
        assert ask(app, "tag") == "tag=1"
        assert ask(app, "spin thread unnoted") == "spinning"
        refused_for_now(app.pid, coro["fix"], "runs library code (")
        assert ask(app, "switch away") == "away tag=1 spun=11"
        apply(app.pid, coro["fix"])
        assert ask(app, "tag") == "tag=2"


def test_a_resumed_coroutine_between_two_calls_keeps_the_transition_open(coro) -> None:
    """A coroutine parked inside L before the patch keeps its stack pending
    in the old universe.  Resumed on a new thread (never pending), it
    returns from the callback into L and spins there: for that time no
    live frame on the stack holds a return address into L, though the
    activation runs.  The agent's tick, which cannot see where a running thread is, must not take
    that for a stack with no activation and end the transition: the return
    address of the callback's call, popped but not overwritten, lies just
    below the stack pointer (a frame's last call out leaves it there until
    the frame makes another; docs/consistency.md, Invariant C), and keeps
    the stack pending: the activation's next call sees the old universe
    (11, not 12).  The transition ends once the stack is unmapped."""
    with LiveProcess([coro["app"]], env={"LD_LIBRARY_PATH": str(coro["root"] / "lib")}) as app:
        assert app.next_line() == "ready"
        assert ask(app, "park spin") == "parked"
        apply(app.pid, coro["fix"])
        assert ask(app, "tag") == "tag=2"
        assert ask(app, "resume spinning") == "resumed, spinning"
        # the agent ticks every few ms at first: give it 2 s to (wrongly) end it
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and in_transition(app.pid):
            time.sleep(0.05)
        assert ask(app, "finish") == "resumed run=11"
        assert ask(app, "unpark") == "unparked"
        wait_for_the_transition_to_end(app.pid)


@pytest.mark.parametrize("ending", ["sleep", "commit"])
def test_the_tick_clears_a_stack_only_while_every_other_thread_sleeps(coro, ending) -> None:
    """A coroutine parked inside L on a stack from malloc's heap keeps the
    stack pending after the patch; resumed, it finishes, and its stack is
    cleared and freed (readable still, nothing of L on it).  The agent's
    tick may take "nothing found" for "no activation" only if no other
    thread ran while it searched (one caught between pushing a stack
    argument and its call leaves no word; docs/consistency.md): while a
    thread of the program runs a loop, the transition stays open; once it
    sleeps, the transition ends.  Before, the tick ended it at once.
    "commit": the thread keeps running, and the next commit (the revert),
    with every thread stopped, finds nothing there and clears the stack."""
    with LiveProcess([coro["app"]], env={"LD_LIBRARY_PATH": str(coro["root"] / "lib")}) as app:
        assert app.next_line() == "ready"
        assert ask(app, "park heap") == "parked"
        apply(app.pid, coro["fix"])
        assert ask(app, "resume") == "resumed run=11"
        assert ask(app, "busy on") == "busy"
        assert ask(app, "unpark") == "unparked"
        # the agent ticks at 1, 2, 4 ... ms after the apply: 2 s hold several ticks
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            assert in_transition(app.pid), "the tick ended the transition while a thread ran"
            time.sleep(0.1)
        if ending == "sleep":
            assert ask(app, "busy off") == "idle"
        else:
            revert(app.pid, coro["fix"])
        wait_for_the_transition_to_end(app.pid)
        assert ask(app, "tag") == ("tag=2" if ending == "sleep" else "tag=1")
        if ending == "commit":
            assert ask(app, "busy off") == "idle"


def test_threads_sharing_one_thread_pointer_hold_the_commit_back(build_dir: Path) -> None:
    """A thread made with a raw clone that kept its creator's thread
    pointer shares the creator's TLS, so one record of the runtime for two
    threads: one's entry could end the other's pending state in the middle
    of its activation.  A commit that finds two stopped threads with one
    thread pointer changes nothing (15, RETRY, naming both); once the clone
    has ended, the same apply goes through.  Before, it went through at
    once."""
    coro = patched_program(build_dir / "rawclone", "coro", C_DIR / "cm_coro_lib.c",
                           C_DIR / "rc_app.c", {"coro_tag": "coro_tag_v2"},
                           C_DIR / "cm_coro_fix.c", fix_name="fix_coro")
    with LiveProcess([coro["app"]], env={"LD_LIBRARY_PATH": str(coro["root"] / "lib")}) as app:
        assert app.next_line() == "ready"
        assert ask(app, "tag") == "tag=1"
        assert ask(app, "clone") == "cloned"
        refused_for_now(app.pid, coro["fix"], "share one thread pointer")
        assert ask(app, "tag") == "tag=1"                 # nothing changed
        assert ask(app, "stop") == "stopped"
        apply(app.pid, coro["fix"])
        assert ask(app, "tag") == "tag=2"


@pytest.fixture(scope="module")
def fcontext(build_dir: Path) -> dict[str, Path]:
    boost = ctypes.util.find_library("boost_context")
    assert boost, "libboost_context is missing: `make system-deps` installs it"
    return patched_program(build_dir / "fcontext", "coro", C_DIR / "cm_coro_lib.c",
                           C_DIR / "cm_fcontext_app.c", {"coro_tag": "coro_tag_v2"},
                           C_DIR / "cm_coro_fix.c", "-pthread", f"-l:{boost}",
                           fix_name="fix_coro")


@pytest.mark.parametrize("where", ["resume", "resume thread"])
def test_a_boost_context_coroutine_parked_inside_the_library_resumes_in_its_universe(
        fcontext, where) -> None:
    """A coroutine made with boost.context (make_fcontext, the way
    Boost.Coroutine2, Boost.Fiber and folly's fibers make theirs) waits
    inside L on a stack no thread runs on.  The runtime follows
    make_fcontext as it follows makecontext, so the commit knows the stack:
    it goes through (before, it was refused, 15: a stack the runtime was
    not told of), and the activation resumes in the universe it began in,
    on this thread or another (12 would be the mix)."""
    env = {"LD_LIBRARY_PATH": str(fcontext["root"] / "lib")}
    with LiveProcess([fcontext["app"]], env=env) as app:
        assert app.next_line() == "ready"
        assert ask(app, "park") == "parked"
        apply(app.pid, fcontext["fix"])
        assert ask(app, "tag") == "tag=2"
        assert ask(app, where) == "resumed run=11"
        assert ask(app, "unpark") == "unparked"


@pytest.mark.parametrize("where", ["resume", "resume thread"])
def test_a_coroutine_begun_by_a_pending_thread_keeps_its_universe_after_the_thread_moves(
        fcontext, where) -> None:
    """Main is inside L (a callback waiting) when the patch is applied, so it
    is pending in the old universe; from inside that activation it starts a
    boost.context coroutine that enters L (the old universe, nested in
    main's) and waits there.  Main then leaves L and moves to the new
    universe; the coroutine, resumed afterwards by main or another thread,
    must finish its activation in the old one: its stack, known from
    make_fcontext, keeps the universe its activation began in.  On a stack
    the runtime knows nothing of this was the case docs/consistency.md
    lists as not covered (12: two versions in one activation)."""
    env = {"LD_LIBRARY_PATH": str(fcontext["root"] / "lib")}
    with LiveProcess([fcontext["app"]], env=env) as app:
        assert app.next_line() == "ready"
        assert ask(app, "hold") == "holding"
        apply(app.pid, fcontext["fix"])
        assert ask(app, "park") == "parked"
        assert ask(app, "release") == "held run=11"      # main's activation: the old one
        assert ask(app, "tag") == "tag=2"                # main has moved
        assert ask(app, where) == "resumed run=11"
        assert ask(app, "unpark") == "unparked"
        wait_for_the_transition_to_end(app.pid)
        assert ask(app, "park") == "parked"              # a new activation: the new universe
        assert ask(app, "resume") == "resumed run=22"


def test_a_coroutine_begun_in_the_new_universe_is_not_resumed_in_a_pending_threads(
        fcontext) -> None:
    """The other way round: main is pending in the old universe (inside L
    at the apply); a new thread, never pending, starts a boost.context
    coroutine that enters L in the new universe and waits there; main
    resumes it from inside its own old activation.  The coroutine's
    activation must finish in the new universe (22; 21 was the mix: its
    nested call judged by main's universe)."""
    env = {"LD_LIBRARY_PATH": str(fcontext["root"] / "lib")}
    with LiveProcess([fcontext["app"]], env=env) as app:
        assert app.next_line() == "ready"
        assert ask(app, "hold") == "holding"
        apply(app.pid, fcontext["fix"])
        assert ask(app, "park thread") == "parked"
        assert ask(app, "resume") == "resumed run=22"
        assert ask(app, "release") == "held run=11"
        assert ask(app, "unpark") == "unparked"


def in_transition(pid: int) -> bool:
    listed = tool("ulp", "patches", "--json", "-p", str(pid))
    assert listed.returncode == 0, listed.stderr
    return any(lib["in_transition"] for lib in json.loads(listed.stdout)[0]["libraries"])


def wait_for_the_transition_to_end(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while in_transition(pid):
        assert time.monotonic() < deadline, "the transition did not end"
        time.sleep(0.05)


def refused_for_now(pid: int, fix: Path, reason: str) -> None:
    """The trigger changes nothing and says to retry (15), one line saying REASON."""
    refused = trigger(pid, fix)
    assert refused.returncode == 15, (refused.returncode, refused.stderr)
    assert reason in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr


@pytest.mark.parametrize("how", ["park", "park own"])
@pytest.mark.parametrize("where", ["resume", "resume thread"])
def test_a_coroutine_parked_inside_the_library_resumes_in_its_universe(coro, where, how) -> None:
    """A coroutine on a stack of its own enters L, and L's callback switches
    back to main: its activation waits on a stack no thread runs on, which
    the commit would not see on any thread.  Resumed after the patch, on
    the same thread or on another (a coroutine may move), the rest of the
    activation must run in the universe it began in: coro_run's second
    coro_tag is 1, like its first (12 was the mix).  Its stack unmapped,
    the transition ends."""
    with LiveProcess([coro["app"]], env={"LD_LIBRARY_PATH": str(coro["root"] / "lib")}) as app:
        assert app.next_line() == "ready"
        assert ask(app, how) == "parked"
        apply(app.pid, coro["fix"])
        assert ask(app, "tag") == "tag=2"                 # main runs the new universe
        assert ask(app, where) == "resumed run=11"        # the parked activation: the old one
        assert ask(app, "tag") == "tag=2"
        assert ask(app, "unpark") == "unparked"
        wait_for_the_transition_to_end(app.pid)
        assert ask(app, how) == "parked"                  # a new activation: the new universe
        assert ask(app, where) == "resumed run=22"
