"""Prepare, pack, apply live and revert, on real processes with real ptrace."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from support import C_DIR, LiveProcess, cc, shared_library, tool

ORIGINAL = "value=100 twice=42 plus=101 half=2.5"
PATCHED = "value=200 twice=42 plus=201 half=2.5"


@pytest.fixture(scope="module")
def e2e(build_dir: Path) -> Path:
    """lib/libe2e.so (prepared), app, libe2e_fix.so, fix.ulp and fix.rev.ulp."""
    root = build_dir / "e2e"
    (root / "lib").mkdir(parents=True)
    lib = shared_library(root / "lib" / "libe2e.so", [C_DIR / "e2e_lib.c"])
    shutil.copy(lib, root / "libe2e.unprepared.so")
    assert tool("ulp-prepare", lib).returncode == 0
    cc(root / "app", [C_DIR / "e2e_app.c"], f"-L{root / 'lib'}", "-le2e", "-ldl")
    shared_library(root / "libe2e_fix.so", [C_DIR / "e2e_fix.c"], patchable=False)
    (root / "fix.desc").write_text("libe2e_fix.so\n@lib/libe2e.so\nlib_value:lib_value_v2\n")
    packed = tool("ulp-packer", root / "fix.desc", "-o", root / "fix.ulp")
    assert packed.returncode == 0, packed.stderr
    return root


def start(root: Path, libdir: str = "lib", preload: bool = True) -> LiveProcess:
    app = LiveProcess([root / "app"], env={"LD_LIBRARY_PATH": str(root / libdir)},
                      preload_runtime=preload)
    assert app.next_line() == "ready"
    return app


def results(app: LiveProcess) -> str:
    app.send("call\n")
    return app.next_line()


def trigger(*args: str | Path):
    return tool("ulp-trigger", "--timeout", "10", *map(str, args))


def test_apply_then_revert_in_a_running_process(e2e: Path) -> None:
    with start(e2e) as app:
        assert results(app) == ORIGINAL
        applied = trigger(app.pid, e2e / "fix.ulp")
        assert applied.returncode == 0, applied.stderr
        assert f"process {app.pid}" in applied.stdout
        assert results(app) == PATCHED
        reverted = trigger("--revert", app.pid, e2e / "fix.ulp")
        assert reverted.returncode == 0, reverted.stderr
        assert results(app) == ORIGINAL
        assert app.alive()


def test_a_patch_object_larger_than_the_mailbox_travels_through_a_staged_memfd(
        e2e: Path, tmp_path: Path) -> None:
    """The PREPARE request carries a small patch object itself; one larger
    than the agent's mailbox (256 KiB) is staged in a memfd first (STAGE),
    and applies and reverts the same."""
    ballast = tmp_path / "ballast.c"
    ballast.write_text("__attribute__((used)) const unsigned char ulp_test_ballast[400000] = "
                       "{1, 2, 3};\n")
    shared_library(tmp_path / "libe2e_fix.so", [C_DIR / "e2e_fix.c", ballast], patchable=False)
    assert (tmp_path / "libe2e_fix.so").stat().st_size > 300_000
    (tmp_path / "fix.desc").write_text(f"libe2e_fix.so\n@{e2e / 'lib' / 'libe2e.so'}\n"
                                       "lib_value:lib_value_v2\n")
    packed = tool("ulp-packer", tmp_path / "fix.desc", "-o", tmp_path / "big.ulp")
    assert packed.returncode == 0, packed.stderr
    with start(e2e) as app:
        applied = trigger(app.pid, tmp_path / "big.ulp")
        assert applied.returncode == 0, applied.stderr
        assert results(app) == PATCHED
        reverted = trigger("--revert", app.pid, tmp_path / "big.ulp")
        assert reverted.returncode == 0, reverted.stderr
        assert results(app) == ORIGINAL


def test_reverse_patch_file_reverts_and_patch_applies_again(e2e: Path) -> None:
    with start(e2e) as app:
        assert trigger(app.pid, e2e / "fix.ulp").returncode == 0
        assert results(app) == PATCHED
        assert trigger(app.pid, e2e / "fix.rev.ulp").returncode == 0
        assert results(app) == ORIGINAL
        assert trigger(app.pid, e2e / "fix.ulp").returncode == 0
        assert results(app) == PATCHED


def _routes(pid: int, library_path: Path) -> dict[str, str]:
    """Where each exported function's descriptor sends calls now, read from
    the process: "stub" (the padding stub: not registered yet), "body", or
    an address elsewhere."""
    import struct

    from ulp import layout
    from ulp.prepared import PreparedLibrary
    from ulp.process import Process

    process = Process(pid)
    real = os.path.realpath(library_path)
    base = min(m.start - m.offset for m in process.mappings() if m.path == real)
    library = PreparedLibrary.open(real)
    routes = {}
    for function in library.functions:
        fd = base + function.func_desc
        (current,) = struct.unpack("<q", process.read(fd + layout.FD_CURRENT, 8))
        target = fd + current
        routes[function.names[0]] = ("stub" if target == base + function.entry
                                     - layout.PADDING_SIZE else
                                     "body" if target == base + function.body else hex(target))
    return routes


def test_each_exported_function_is_routed_by_its_descriptor(e2e: Path) -> None:
    """The trampoline of every exported function jumps where its descriptor
    says: to the padding stub (and so to the runtime, which registers the
    library) until the first call, then straight to the body."""
    with start(e2e) as app:
        routes = _routes(app.pid, e2e / "lib" / "libe2e.so")
        assert set(routes.values()) == {"stub"}, routes
        assert results(app) == ORIGINAL
        routes = _routes(app.pid, e2e / "lib" / "libe2e.so")
        assert set(routes.values()) == {"body"}, routes
        assert {"lib_value", "lib_twice", "lib_value_plus", "lib_half"} <= set(routes)


def test_prepared_library_without_runtime_behaves_like_the_original(e2e: Path) -> None:
    unprepared = e2e / "unprepared"
    unprepared.mkdir(exist_ok=True)
    shutil.copy(e2e / "libe2e.unprepared.so", unprepared / "libe2e.so")
    with start(e2e, preload=False) as prepared_app, \
            start(e2e, libdir="unprepared", preload=False) as original_app:
        assert results(prepared_app) == results(original_app) == ORIGINAL


def test_already_applied_is_reported_with_its_own_exit_code(e2e: Path) -> None:
    with start(e2e) as app:
        assert trigger(app.pid, e2e / "fix.ulp").returncode == 0
        again = trigger(app.pid, e2e / "fix.ulp")
        assert again.returncode == 12
        assert "already applied" in again.stderr
        assert results(app) == PATCHED


def test_revert_of_a_patch_not_applied_is_refused(e2e: Path) -> None:
    with start(e2e) as app:
        refused = trigger("--revert", app.pid, e2e / "fix.ulp")
        assert refused.returncode == 13
        assert "not applied" in refused.stderr
        assert results(app) == ORIGINAL


def one_line_error(result, code: int, words: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ulp-trigger: "), result.stderr
    assert words in lines[0], lines[0]


def test_missing_patch_file(e2e: Path) -> None:
    with start(e2e) as app:
        one_line_error(trigger(app.pid, e2e / "nothing.ulp"), 3, "no such file")
        assert results(app) == ORIGINAL


def test_truncated_patch_file(e2e: Path, tmp_path: Path) -> None:
    data = (e2e / "fix.ulp").read_bytes()
    truncated = tmp_path / "truncated.ulp"
    truncated.write_bytes(data[: len(data) // 2])
    with start(e2e) as app:
        one_line_error(trigger(app.pid, truncated), 4, "truncated")
        assert results(app) == ORIGINAL


def test_corrupted_patch_file(e2e: Path, tmp_path: Path) -> None:
    data = bytearray((e2e / "fix.ulp").read_bytes())
    data[-3] ^= 0xFF
    corrupted = tmp_path / "corrupted.ulp"
    corrupted.write_bytes(bytes(data))
    with start(e2e) as app:
        one_line_error(trigger(app.pid, corrupted), 4, "corrupted")
        assert results(app) == ORIGINAL


def test_wrong_target_library_is_refused(e2e: Path) -> None:
    other = e2e / "other"
    other.mkdir(exist_ok=True)
    lib = shared_library(other / "libe2e.so", [C_DIR / "e2e_other.c"])
    assert tool("ulp-prepare", lib).returncode == 0
    with start(e2e, libdir="other") as app:
        before = results(app)
        one_line_error(trigger(app.pid, e2e / "fix.ulp"), 10, "not the library")
        assert results(app) == before


def test_process_without_the_target_library(e2e: Path, build_dir: Path) -> None:
    plain = cc(build_dir / "plain_app", [C_DIR / "e2e_plain.c"])
    with LiveProcess([plain]) as app:
        assert app.next_line() == "ready"
        one_line_error(trigger(app.pid, e2e / "fix.ulp"), 9, "not loaded")
        assert app.alive()


def test_process_without_the_runtime(e2e: Path) -> None:
    with start(e2e, preload=False) as app:
        one_line_error(trigger(app.pid, e2e / "fix.ulp"), 8, "runtime")
        assert results(app) == ORIGINAL


def test_no_such_process(e2e: Path) -> None:
    pid = int(Path("/proc/sys/kernel/pid_max").read_text()) - 1
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    one_line_error(trigger(pid, e2e / "fix.ulp"), 6, f"no process with PID {pid}")


def test_patch_object_changed_after_packing_changes_nothing(e2e: Path, tmp_path: Path) -> None:
    """The patch file carries the patch .so it was packed with: tampering with
    the file on disk, or removing it, changes nothing (tests/test_portable.py
    has the rest)."""
    copy = tmp_path / "patch"
    shutil.copytree(e2e, copy, ignore=shutil.ignore_patterns("unprepared", "other"))
    (copy / "fix.desc").write_text("libe2e_fix.so\n@lib/libe2e.so\nlib_value:lib_value_v2\n")
    assert tool("ulp-packer", copy / "fix.desc", "-o", copy / "fix.ulp").returncode == 0
    with open(copy / "libe2e_fix.so", "ab") as stream:
        stream.write(b"tampered")
    with start(e2e) as app:
        assert trigger(app.pid, copy / "fix.ulp").returncode == 0
        assert results(app) == PATCHED
        assert trigger("--revert", app.pid, copy / "fix.ulp").returncode == 0
        (copy / "libe2e_fix.so").unlink()
        assert trigger(app.pid, copy / "fix.ulp").returncode == 0
        assert results(app) == PATCHED


def test_ulp_status_lists_applied_patches(e2e: Path) -> None:
    patch_id = tool("ulp-packer", "--dump", e2e / "fix.ulp").stdout
    with start(e2e) as app:
        status = tool("ulp", "status", str(app.pid))
        assert status.returncode == 0, status.stderr
        assert "0 patch(es) applied" in status.stdout
        assert trigger(app.pid, e2e / "fix.ulp").returncode == 0
        status = tool("ulp", "status", str(app.pid))
        assert "1 patch(es) applied" in status.stdout
        listed = status.stdout.splitlines()[1].strip()
        assert listed in patch_id
        assert results(app) == PATCHED


def test_ulp_flags_prints_the_build_flags() -> None:
    flags = tool("ulp", "flags")
    assert flags.returncode == 0
    assert flags.stdout.strip() == "-fpatchable-function-entry=16,14"
