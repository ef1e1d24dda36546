"""ulp-trigger on production-like processes (issue 4): no deadlock, no damage,
clear errors.  Real processes, real ptrace; every wait has a timeout.

Many rounds run ``ulp.trigger.cli.main`` inside this process (spawning
hundreds of Python processes would take minutes); the real ``ulp-trigger``
command runs in every test as well, and alone where it must be killed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from support import (
    BIN_DIR,
    C_DIR,
    LiveProcess,
    cc,
    hand_made_patch,
    rechecksummed_patch,
    shared_library,
    tool,
    trigger_here,
)
from ulp import metadata, patchfile
from ulp.errors import ExitCode
from ulp.trigger import codewrite
from ulp.trigger.tracee import Tracee

ORIGINAL = "both=11"
PATCHED = "both=22"


@pytest.fixture(scope="module")
def ts(build_dir: Path) -> Path:
    """lib/libts.so (prepared), app, parent, libts_dl.so and the patches:
    fix.ulp (ts_a and ts_b), dep.ulp (requires fix.ulp), exit.ulp (its
    constructor ends the process), slow.ulp (its constructor takes 1.5 s)."""
    root = build_dir / "ts"
    (root / "lib").mkdir(parents=True)
    lib = shared_library(root / "lib" / "libts.so", [C_DIR / "ts_lib.c"])
    assert tool("ulp-prepare", lib).returncode == 0
    cc(root / "app", [C_DIR / "ts_app.c"], f"-L{root / 'lib'}", "-lts", "-ldl", "-lpthread")
    cc(root / "parent", [C_DIR / "ts_parent.c"])
    shared_library(root / "libts_dl.so", [C_DIR / "ts_dl.c"], patchable=False)
    patches = {
        "fix": ("ts_fix.c", ["ts_a:ts_a_v2", "ts_b:ts_b_v2"], []),
        "dep": ("ts_fix_dep.c", ["ts_b:ts_b_v5"], ["fix.ulp"]),
        "exit": ("ts_fix_exit.c", ["ts_a:ts_a_v3"], []),
        "slow": ("ts_fix_slow.c", ["ts_a:ts_a_v4"], []),
    }
    for name, (source, pairs, requires) in patches.items():
        shared_library(root / f"lib{name}.so", [C_DIR / source], patchable=False)
        lines = [f"lib{name}.so", "@lib/libts.so", *pairs,
                 *(f"requires: {path}" for path in requires)]
        (root / f"{name}.desc").write_text("\n".join(lines) + "\n")
        packed = tool("ulp-packer", root / f"{name}.desc", "-o", root / f"{name}.ulp")
        assert packed.returncode == 0, packed.stderr
    return root


# --- driving the target and the trigger ----------------------------------------


def start(root: Path, *features: str | Path, cwd: Path | None = None) -> LiveProcess:
    app = LiveProcess([root / "app", *features], env={"LD_LIBRARY_PATH": str(root / "lib")},
                      cwd=cwd)
    line = app.next_line()
    if line.startswith("hardened"):
        line = app.next_line()
    assert line == "ready", line
    return app


def ask(app: LiveProcess, command: str, timeout: float = 60) -> str:
    app.send(command + "\n")
    return app.next_line(timeout)


def both(app: LiveProcess) -> str:
    return ask(app, "call")


def stats(app: LiveProcess) -> dict[str, int]:
    line = ask(app, "stats")
    return {key: int(value) for key, value in (part.split("=") for part in line.split())}


def run_trigger(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real ulp-trigger command."""
    return tool("ulp-trigger", *args, timeout=timeout)


def apply_here(app: LiveProcess, patch: Path, *options: str) -> None:
    code, _, err = trigger_here("--timeout", "20", "--retries", "50", *options, app.pid, patch)
    assert code == 0, err


def revert_here(app: LiveProcess, patch: Path, *options: str) -> None:
    code, _, err = trigger_here("--timeout", "20", "--retries", "50", "--revert", *options,
                                app.pid, patch)
    assert code == 0, err


def one_line_error(code: int, stderr: str, expected: int, words: str = "") -> None:
    assert code == expected, (code, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ulp-trigger: "), stderr
    assert "Traceback" not in stderr
    assert words in lines[0], lines[0]


def tracer_pids(pid: int) -> dict[int, int]:
    """TracerPid of every thread of ``pid``."""
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as stream:
                for line in stream:
                    if line.startswith("TracerPid:"):
                        found[int(tid)] = int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            pass  # the thread ended meanwhile
    return found


def assert_not_traced(app: LiveProcess) -> None:
    traced = {tid: tracer for tid, tracer in tracer_pids(app.pid).items() if tracer}
    assert not traced, f"threads still traced after the trigger: {traced}"


def wait_until(predicate, timeout: float = 30, what: str = "condition") -> None:
    """Poll an observable state of the target (never used as a delay)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


def threads_named(pid: int, name: str) -> list[int]:
    tids = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            if Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip() == name:
                tids.append(int(tid))
        except FileNotFoundError:
            pass
    return tids


def blocked_in_syscall(pid: int, tid: int) -> bool:
    try:
        first = Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return first not in ("running", "-1")


def agent_tid(pid: int) -> int:
    [tid] = threads_named(pid, "ulp-agent")
    return tid


def agent_idle(pid: int, tid: int) -> bool:
    """The agent waits in its idle loop: the only place it calls ppoll (271)."""
    with open(f"/proc/{pid}/task/{tid}/syscall") as stream:
        return stream.read().split()[0] == "271"


# --- the basics, through the real command ------------------------------------------


def test_apply_and_revert_leave_no_tracer_and_report_the_pause(ts: Path) -> None:
    with start(ts, "busy", "2", "blocked", "2") as app:
        applied = run_trigger("--verbose", app.pid, ts / "fix.ulp")
        assert applied.returncode == 0, applied.stderr
        assert "application threads stopped" in applied.stdout
        assert_not_traced(app)
        assert both(app) == PATCHED
        assert ask(app, "expect 22") == "expect 22 ok"
        reverted = run_trigger("--revert", app.pid, ts / "fix.ulp")
        assert reverted.returncode == 0, reverted.stderr
        assert_not_traced(app)
        assert both(app) == ORIGINAL
        assert ask(app, "expect 11") == "expect 11 ok"
        assert stats(app)["mixed"] == 0


# --- 1. no deadlock ---------------------------------------------------------------------


def test_no_deadlock_with_allocator_loader_and_signal_handler(ts: Path) -> None:
    """50 threads in malloc/realloc/free and dlopen/dlsym/dlclose, SIGUSR1 sent
    in a loop to a handler calling the library: 200 apply/revert rounds, each
    done or RETRY then done (--retries); nothing interposes malloc."""
    rounds = 200
    retried = 0
    with start(ts, "hammer", "50", ts / "libts_dl.so") as app:
        for number in range(rounds):
            for args in ((app.pid, ts / "fix.ulp"), ("--revert", app.pid, ts / "fix.ulp")):
                code, _, err = trigger_here("--timeout", "20", *args)
                if code == ExitCode.RETRY:
                    retried += 1
                    code, _, err = trigger_here("--timeout", "20", "--retries", "50", *args)
                assert code == 0, (number, err)
            if number % 50 == 0:
                # now and then through the real command, and a look at the target
                assert run_trigger(app.pid, ts / "fix.ulp").returncode == 0
                assert both(app) == PATCHED
                assert run_trigger("--revert", app.pid, ts / "fix.ulp").returncode == 0
                assert both(app) == ORIGINAL
        assert_not_traced(app)
        counters = stats(app)
        assert counters["mixed"] == 0 and counters["dlerrors"] == 0, counters
        assert counters["signals"] > 0 and counters["hammer"] > 0, counters
        maps = Path(f"/proc/{app.pid}/maps").read_text()
        assert "libulp.so" in maps
    print(f"\n{rounds} rounds, {retried} RETRY answers; signals {counters['signals']}, "
          f"dlopen rounds {counters['hammer']}")


# --- 2. interrupted system calls ------------------------------------------------------


SYSCALL_THREADS = ("ts-read", "ts-poll", "ts-accept", "ts-sleep", "ts-futex", "ts-cond")


def test_blocked_system_calls_resume_as_if_nothing_happened(ts: Path, tmp_path: Path) -> None:
    """Threads blocked in read, poll, accept, nanosleep, a futex wait and
    pthread_cond_wait while the trigger stops every thread: each call goes on
    (no EINTR seen, no sleep shorter than asked, measured by the program)."""
    fifo_read, fifo_poll, sock = tmp_path / "read.fifo", tmp_path / "poll.fifo", tmp_path / "s"
    os.mkfifo(fifo_read)
    os.mkfifo(fifo_poll)
    with start(ts, "syscalls", fifo_read, fifo_poll, sock) as app:
        for name in SYSCALL_THREADS:
            wait_until(lambda name=name: threads_named(app.pid, name), what=name)
            [tid] = threads_named(app.pid, name)
            wait_until(lambda tid=tid: blocked_in_syscall(app.pid, tid), what=f"{name} blocked")
        for _ in range(3):
            assert run_trigger(app.pid, ts / "fix.ulp").returncode == 0
            assert run_trigger("--revert", app.pid, ts / "fix.ulp").returncode == 0
        for _ in range(20):
            apply_here(app, ts / "fix.ulp")
            revert_here(app, ts / "fix.ulp")
        assert_not_traced(app)
        # now let every blocked call complete
        with open(fifo_read, "w") as stream:
            stream.write("x")
        with open(fifo_poll, "w") as stream:
            stream.write("y")
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(sock))
            app.send("wake\n")
            seen = {app.next_line() for _ in range(6)}
        assert seen == {"read ok x", "poll ok 1", "accept ok", "futex ok", "cond ok", "woken"}
        counters = stats(app)
        assert counters["sleeps"] > 0
        assert counters["eintr"] == 0 and counters["short"] == 0, counters
        assert both(app) == ORIGINAL


# --- 3. registers -------------------------------------------------------------------------


def agent_registers(pid: int) -> tuple[dict[str, int], bytes]:
    """The agent's registers and FP/SSE/AVX state, read with ptrace by this test."""
    tracee = Tracee(agent_tid(pid))
    tracee.stop(time.monotonic() + 30)
    try:
        regs = tracee.get_registers()
        values = {name: getattr(regs, name) for name, _ in regs._fields_}
        return values, tracee.get_xstate()
    finally:
        tracee.detach()


XSTATE_BV = slice(512, 520)


def xstate_values(raw: bytes) -> bytes:
    """The register values of an XSAVE image, without XSTATE_BV: the kernel
    writes the init value of a component whose bit is clear, and the CPU may
    clear the bit of a component holding its init value (init optimisation)."""
    return raw[: XSTATE_BV.start] + raw[XSTATE_BV.stop:]


def test_every_register_survives_apply_and_revert(ts: Path) -> None:
    """Threads holding values in ymm0-15, the red zone, the general-purpose
    registers, the flags and MXCSR see them unchanged; the hijacked agent
    gets every register and its whole XSAVE state back."""
    threads = 4
    with start(ts, "regs", str(threads), "busy", "2") as app:
        wait_until(lambda: ask(app, "regs-ready") == f"regs-ready {threads}", what="regs ready")
        regs_before, xstate_before = agent_registers(app.pid)
        for _ in range(3):
            assert run_trigger(app.pid, ts / "fix.ulp").returncode == 0
            assert both(app) == PATCHED
            assert run_trigger("--revert", app.pid, ts / "fix.ulp").returncode == 0
        for _ in range(10):
            apply_here(app, ts / "fix.ulp")
            revert_here(app, ts / "fix.ulp")
        regs_after, xstate_after = agent_registers(app.pid)
        assert regs_after == regs_before
        assert xstate_values(xstate_after) == xstate_values(xstate_before)
        assert ask(app, "regs-check") == "regs errors=0"
        assert_not_traced(app)


# --- 4. no stop signal leaks ---------------------------------------------------------------


def test_a_waiting_parent_sees_no_stop_or_continue(ts: Path) -> None:
    """A parent waiting with waitpid(WUNTRACED | WCONTINUED) sees nothing while
    its child is patched and reverted 32 times."""
    parent = LiveProcess([ts / "parent", ts / "app", "busy", "2", "blocked", "1"],
                         env={"LD_LIBRARY_PATH": str(ts / "lib")})
    with parent:
        # the parent's "child PID" and the child's "ready" share one pipe: either
        # may come first
        first = {parent.next_line(), parent.next_line()}
        assert "ready" in first, first
        child_pid = int((first - {"ready"}).pop().removeprefix("child "))
        for number in range(32):
            if number % 8 == 0:
                assert run_trigger(child_pid, ts / "fix.ulp").returncode == 0
                assert run_trigger("--revert", child_pid, ts / "fix.ulp").returncode == 0
            else:
                for args in ((child_pid, ts / "fix.ulp"), ("--revert", child_pid, ts / "fix.ulp")):
                    code, _, err = trigger_here("--timeout", "20", "--retries", "20", *args)
                    assert code == 0, err
            assert ask(parent, "events") == "events stops=0 continues=0 sigchld=0"
        assert ask(parent, "child call") == ORIGINAL
        assert all(tracer == 0 for tracer in tracer_pids(child_pid).values())


# --- 5. many threads --------------------------------------------------------------------------


def test_256_threads_half_busy_half_blocked(ts: Path) -> None:
    """Apply and revert with 128 threads calling the library and 128 blocked;
    prints how long the application was held stopped."""
    with start(ts, "busy", "128", "blocked", "128") as app:
        assert len(os.listdir(f"/proc/{app.pid}/task")) >= 257
        pauses = []
        # once through the real command: Python starting up among 128 busy
        # threads on a small machine takes tens of seconds
        applied = run_trigger("--verbose", "--timeout", "60", app.pid, ts / "fix.ulp")
        assert applied.returncode == 0, applied.stderr
        pauses.append(applied.stdout.splitlines()[-1])
        assert ask(app, "expect 22") == "expect 22 ok"
        revert_here(app, ts / "fix.ulp")
        assert ask(app, "expect 11") == "expect 11 ok"
        in_process = []
        for _ in range(5):
            apply_here(app, ts / "fix.ulp")
            in_process.append(codewrite.last_pause())
            revert_here(app, ts / "fix.ulp")
        assert ask(app, "expect 11") == "expect 11 ok"
        assert stats(app)["mixed"] == 0
        assert_not_traced(app)
    print("\nulp-trigger --verbose, 256 threads:", *pauses, sep="\n  ")
    longest = max(pause.seconds for pause in in_process)
    shortest = min(pause.seconds for pause in in_process)
    print(f"in-process applies: {in_process[0].threads} threads stopped for "
          f"{shortest * 1000:.2f} to {longest * 1000:.2f} ms")


# --- 6. the trigger killed ------------------------------------------------------------------


def trigger_process(*args: str | Path) -> subprocess.Popen:
    return subprocess.Popen([str(BIN_DIR / "ulp-trigger"), "--timeout", "20", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def is_traced_by(pid: int, tid: int, tracer: int) -> bool:
    return tracer_pids(pid).get(tid) == tracer


def test_trigger_killed_at_random_moments(ts: Path) -> None:
    """SIGKILL the real ulp-trigger at random moments of applies and reverts
    (120 trials): the target keeps running, fully patched or fully unpatched
    (ts_both: 11 or 22, never 12 or 21, also in busy threads), and the next
    trigger call works (after RETRY while the agent finishes, --retries)."""
    rng = random.Random(4)
    outcomes = {"patched": 0, "unpatched": 0}
    with start(ts, "busy", "2") as app:
        agent = agent_tid(app.pid)
        patched = False
        for trial in range(120):
            args = ("--revert",) if patched else ()
            trigger = trigger_process(*args, app.pid, ts / "fix.ulp")
            try:
                if trial % 2:
                    # while it works on the agent: the interesting moments
                    with contextlib.suppress(AssertionError):
                        wait_until(lambda trigger=trigger: trigger.poll() is not None
                                   or is_traced_by(app.pid, agent, trigger.pid),
                                   timeout=20, what="attach")
                    time.sleep(rng.uniform(0, 0.004))  # a random moment, not a synchronisation
                else:
                    time.sleep(rng.uniform(0, 0.6))
                trigger.kill()
            finally:
                trigger.wait(timeout=30)
            assert app.alive()
            # a request the killed trigger had handed to the agent still completes
            wait_until(lambda: agent_idle(app.pid, agent), what="agent idle")
            state = both(app)
            assert state in (ORIGINAL, PATCHED), (trial, state)
            patched = state == PATCHED
            outcomes["patched" if patched else "unpatched"] += 1
            # the next call works: revert what is applied, or apply
            args = ("--revert",) if patched else ()
            code, _, err = trigger_here("--timeout", "20", "--retries", "100", *args,
                                        app.pid, ts / "fix.ulp")
            assert code == 0, (trial, err)
            assert both(app) == (ORIGINAL if patched else PATCHED)
            patched = not patched
            wait_until(lambda: not any(tracer_pids(app.pid).values()), what="no tracer")
        assert stats(app)["mixed"] == 0
    print(f"\nafter a kill: {outcomes}")


# --- 7. the target dies ----------------------------------------------------------------------


def test_target_killed_while_the_trigger_works(ts: Path) -> None:
    """The target is SIGKILLed at a random moment: the trigger reports the
    process gone (16), or whatever it had reached, in one line, never a
    traceback; after a kill during an in-process trigger nothing stays traced."""
    rng = random.Random(7)
    codes: dict[int, int] = {}
    for trial in range(40):
        app = start(ts, "busy", "2", "churn")
        with app:
            killer = threading.Timer(rng.uniform(0, 0.05 if trial % 2 else 0.5),
                                     lambda app=app: os.kill(app.pid, signal.SIGKILL))
            killer.start()
            try:
                if trial % 2:
                    code, _, err = trigger_here("--timeout", "10", app.pid, ts / "fix.ulp")
                else:
                    result = run_trigger("--timeout", "10", app.pid, ts / "fix.ulp")
                    code, err = result.returncode, result.stderr
            finally:
                killer.join()
            app.proc.wait(timeout=30)  # reaped: no traced thread keeps it a zombie
        codes[code] = codes.get(code, 0) + 1
        if code != 0:
            one_line_error(code, err, code)
            assert code in (ExitCode.PROCESS_EXITED, ExitCode.NO_PROCESS), err
    print(f"\nexit codes when the target was killed: {codes}")


def test_target_exiting_on_its_own_during_apply(ts: Path) -> None:
    """The patch's constructor ends the process in the middle of PREPARE."""
    with start(ts, "busy", "2") as app:
        result = run_trigger(app.pid, ts / "exit.ulp")
        one_line_error(result.returncode, result.stderr, ExitCode.PROCESS_EXITED,
                       f"process {app.pid} exited")
        assert app.proc.wait(timeout=30) == 7
    with start(ts, "busy", "2") as app:
        code, _, err = trigger_here(app.pid, ts / "exit.ulp")
        one_line_error(code, err, ExitCode.PROCESS_EXITED, f"process {app.pid} exited")
        assert app.proc.wait(timeout=30) == 7


# --- 8. bad input ----------------------------------------------------------------------------


def hand_made(ts: Path, tmp_path: Path, name: str, patch_object: bytes | None = None,
              **changes) -> Path:
    """fix.ulp with some fields changed, written with valid checksums and
    the id its new content gives."""
    return hand_made_patch(ts / "fix.ulp", tmp_path / f"{name}.ulp", patch_object, **changes)


def refused(app: LiveProcess, patch: Path, code: int, words: str, *options: str) -> None:
    """The real command refuses ``patch`` with one line and leaves the target as it was."""
    result = run_trigger(*options, app.pid, patch)
    one_line_error(result.returncode, result.stderr, code, words)
    assert both(app) == ORIGINAL
    assert stats(app)["mixed"] == 0
    assert_not_traced(app)


def test_identity_build_id_and_layout_mismatches(ts: Path, tmp_path: Path) -> None:
    original = patchfile.read_patch(str(ts / "fix.ulp"))
    other_build_id = bytes(20) if original.target_build_id != bytes(20) else b"\1" * 20
    with start(ts, "busy", "1") as app:
        refused(app, hand_made(ts, tmp_path, "build_id", target_build_id=other_build_id),
                ExitCode.TARGET_MISMATCH, "build-id")
        refused(app, hand_made(ts, tmp_path, "layout", layout_version=original.layout_version + 1),
                ExitCode.TARGET_MISMATCH, "layout")
        refused(app, hand_made(ts, tmp_path, "identity", target_identity=b"\x55" * 32),
                ExitCode.TARGET_MISMATCH, "not the library the patch was packed for")


def test_units_that_do_not_fit_the_target(ts: Path, tmp_path: Path) -> None:
    """Identity matches but a unit names another function or one past the end."""
    original = patchfile.read_patch(str(ts / "fix.ulp"))
    first = original.units[0]
    wrong_name = (dataclasses.replace(first, old_name="ts_nothing"), *original.units[1:])
    past_end = (dataclasses.replace(first, index=1000), *original.units[1:])
    with start(ts) as app:
        refused(app, hand_made(ts, tmp_path, "name", units=wrong_name), ExitCode.BAD_INPUT,
                "not ts_nothing")
        refused(app, hand_made(ts, tmp_path, "index", units=past_end), ExitCode.BAD_INPUT,
                "is not in the target")


def test_patch_object_lacking_a_function(ts: Path, tmp_path: Path) -> None:
    original = patchfile.read_patch(str(ts / "fix.ulp"))
    missing = (original.units[0], dataclasses.replace(original.units[1], new_name="ts_b_v9"))
    with start(ts, "busy", "1") as app:
        refused(app, hand_made(ts, tmp_path, "missing", units=missing), ExitCode.PATCH_OBJECT,
                "does not define ts_b_v9")


def not_loadable(ts: Path, tmp_path: Path) -> Path:
    """A patch whose .so passes the hash check but is not an ELF object."""
    return hand_made(ts, tmp_path, "not_elf", b"this is not an ELF file\n" * 10)


def test_patch_object_not_loadable(ts: Path, tmp_path: Path) -> None:
    with start(ts, "busy", "1") as app:
        refused(app, not_loadable(ts, tmp_path), ExitCode.PATCH_OBJECT,
                "cannot load patch object")
        apply_here(app, ts / "fix.ulp")
        assert both(app) == PATCHED


def test_the_object_hashed_is_the_object_loaded(ts: Path, tmp_path: Path) -> None:
    """A failed apply leaves its patch object loaded as /proc/self/fd/N; the
    next patch object opened on the same descriptor number must still be the
    one loaded, not the old one found by name."""
    original = patchfile.read_patch(str(ts / "fix.ulp"))
    missing = (original.units[0], dataclasses.replace(original.units[1], new_name="ts_b_v9"))
    with start(ts, "busy", "1") as app:
        refused(app, hand_made(ts, tmp_path, "missing", units=missing), ExitCode.PATCH_OBJECT,
                "does not define ts_b_v9")
        refused(app, not_loadable(ts, tmp_path), ExitCode.PATCH_OBJECT,
                "cannot load patch object")


def test_wrong_format_version(ts: Path, tmp_path: Path) -> None:
    data = bytearray((ts / "fix.ulp").read_bytes())
    struct.pack_into("<H", data, 8, patchfile.FORMAT_VERSION + 1)
    path = tmp_path / "v4.ulp"
    path.write_bytes(rechecksummed_patch(bytes(data)))
    with start(ts) as app:
        refused(app, path, ExitCode.BAD_INPUT, "version")


def test_apply_refused_without_its_requirement(ts: Path) -> None:
    with start(ts, "busy", "1") as app:
        refused(app, ts / "dep.ulp", ExitCode.DEPENDENCY, "is not applied")


def test_revert_refused_while_a_dependent_patch_is_applied(ts: Path) -> None:
    with start(ts, "busy", "1") as app:
        apply_here(app, ts / "fix.ulp")
        apply_here(app, ts / "dep.ulp")
        assert both(app) == "both=25"
        result = run_trigger("--revert", app.pid, ts / "fix.ulp")
        one_line_error(result.returncode, result.stderr, ExitCode.DEPENDENCY, "depends on it")
        assert both(app) == "both=25"
        revert_here(app, ts / "dep.ulp")
        assert both(app) == PATCHED
        revert_here(app, ts / "fix.ulp")
        assert both(app) == ORIGINAL


AS_ANOTHER_USER = """
import os, sys
import ulp.trigger.cli  # imported as root: the interpreter lives under /root
os.setgroups([])
os.setgid(54321)
os.setuid(54321)  # a user that needs no account
sys.exit(ulp.trigger.cli.main(sys.argv[1:]))
"""


def test_ptrace_not_permitted(ts: Path) -> None:
    """Another user's process, and a process another tracer holds."""
    shared = Path(tempfile.mkdtemp(prefix="ulp-ts-"))
    try:
        os.chmod(shared, 0o755)
        shutil.copy(ts / "fix.ulp", shared / "fix.ulp")
        with start(ts, "busy", "1") as app:
            result = subprocess.run([sys.executable, "-c", AS_ANOTHER_USER, str(app.pid),
                                     str(shared / "fix.ulp")], capture_output=True, text=True,
                                    timeout=120)
            one_line_error(result.returncode, result.stderr, ExitCode.PERMISSION,
                           "permission denied")
            assert both(app) == ORIGINAL
            # a debugger (here: this test) holds the agent
            holder = Tracee(agent_tid(app.pid))
            holder.stop(time.monotonic() + 30)
            try:
                result = run_trigger(app.pid, ts / "fix.ulp")
                one_line_error(result.returncode, result.stderr, ExitCode.PERMISSION,
                               "another ulp-trigger or a debugger")
            finally:
                holder.detach()
            assert both(app) == ORIGINAL
            assert_not_traced(app)
            apply_here(app, ts / "fix.ulp")
            assert both(app) == PATCHED
    finally:
        shutil.rmtree(shared)


def packed(md: metadata.PatchMetadata, patch_object: bytes,
           version: int = metadata.FORMAT_VERSION, flags: int | None = None) -> bytes:
    """``md`` and ``patch_object`` as a patch file with valid checksums, the
    fields NOT validated: what a hostile or buggy packer could write."""
    payload = metadata._pack_payload(md)
    if flags is None:
        flags = metadata.FLAG_REVERSE if md.reverse else 0
    checked = struct.pack("<8sHHI", metadata.MAGIC, version, flags, len(payload))
    record = checked + hashlib.sha256(checked + payload).digest() + payload
    header = struct.pack("<8sHHIQ", patchfile.MAGIC, patchfile.FORMAT_VERSION, 0, len(record),
                         len(patch_object))
    return rechecksummed_patch(header + bytes(32) + record + patch_object)


def structured_mutation(md: metadata.PatchMetadata, patch_object: bytes, rng: random.Random,
                        fix_so: str) -> bytes:
    """One field of a valid patch replaced by something plausible or absurd."""
    def some_bytes(size: int) -> bytes:
        return bytes(rng.getrandbits(8) for _ in range(size))

    def some_name() -> str:
        return rng.choice(["", "ts_a", "ts_b", "ts_both", "ts_a_v2", "ts_b_v2", "x" * 5000,
                           "ts_\u00e9", "ulp_entry", "malloc", "a\0b", some_bytes(4).hex()])
    unit = rng.randrange(len(md.units))
    changes = {
        "patch_id": lambda: {"patch_id": some_bytes(16)},
        "identity": lambda: {"target_identity": some_bytes(rng.choice([32, 31, 0]))},
        "build_id": lambda: {"target_build_id": some_bytes(rng.randrange(0, 21))},
        "layout": lambda: {"layout_version": rng.choice([0, 2, 0xFFFFFFFF])},
        "target_path": lambda: {"target_path": rng.choice(["/", "/nonexistent/libts.so",
                                                           "relative.so", fix_so, "/proc/self"])},
        "so_path": lambda: {"patch_so_path": rng.choice(["/nonexistent.so", "/", "/proc/self",
                                                         "relative.so", ""])},
        "so_hash": lambda: {"patch_so_sha256": some_bytes(32)},
        "unit_index": lambda: {"units": tuple(
            dataclasses.replace(u, index=rng.choice([2, 3, 99, 2**31, 2**32 - 1]))
            if i == unit else u for i, u in enumerate(md.units))},
        "old_name": lambda: {"units": tuple(
            dataclasses.replace(u, old_name=some_name()) if i == unit else u
            for i, u in enumerate(md.units))},
        "new_name": lambda: {"units": tuple(
            dataclasses.replace(u, new_name=some_name()) if i == unit else u
            for i, u in enumerate(md.units))},
        "units": lambda: {"units": rng.choice([(), md.units[:1], md.units * 2,
                                               md.units[::-1]])},
        "requires": lambda: {"requires": tuple(some_bytes(16)
                                               for _ in range(rng.randrange(1, 4)))},
    }
    kind = rng.choice(list(changes))
    try:
        return packed(dataclasses.replace(md, **changes[kind]()), patch_object)
    except (struct.error, UnicodeEncodeError):
        return packed(md, patch_object, version=rng.choice([0, 1, 3, 0xFFFF]))


def byte_mutation(data: bytes, rng: random.Random) -> bytes:
    """Flipped bytes, a truncation, or header fields; with or without a checksum
    that matches again."""
    mutated = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0:
        del mutated[rng.randrange(len(mutated)):]
    elif kind == 1:
        mutated += some_tail(rng)
    elif kind == 2:
        # a field of the file's header or of its metadata record's
        field = rng.choice([(8, "<H"), (10, "<H"), (12, "<I"), (16, "<Q"), (64, "<H"),
                            (66, "<H"), (68, "<I")])
        bits = {"<H": 16, "<I": 32, "<Q": 64}[field[1]]
        struct.pack_into(field[1], mutated, field[0], rng.getrandbits(bits))
    else:
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(patchfile.HEADER_SIZE if kind == 3 else 0, len(mutated))
            mutated[position] ^= 1 << rng.randrange(8)
    result = bytes(mutated)
    if rng.random() < 0.6:
        result = rechecksummed_patch(result)
    return result


def some_tail(rng: random.Random) -> bytes:
    return bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 64)))


def test_fuzzed_patch_files_are_refused_cleanly(ts: Path, tmp_path: Path) -> None:
    """10,000 damaged or hostile patch files through the trigger's main() against
    a live target: each refused with one line and a ulp exit code (or, when
    the change left a valid patch, applied and reverted), never a traceback,
    never a damaged target."""
    rng = random.Random(1234)
    data = (ts / "fix.ulp").read_bytes()
    original = patchfile.read_patch_file(str(ts / "fix.ulp"))
    md = original.metadata
    refusals = {ExitCode.BAD_INPUT, ExitCode.LIBRARY_NOT_LOADED, ExitCode.TARGET_MISMATCH,
                ExitCode.PATCH_OBJECT, ExitCode.NOT_APPLIED, ExitCode.DEPENDENCY,
                ExitCode.ALREADY_APPLIED}
    codes: dict[int, int] = {}
    path = tmp_path / "fuzzed.ulp"
    with start(ts, "busy", "2") as app:
        for number in range(10_000):
            if number % 8 == 0:
                mutated = structured_mutation(md, original.patch_object, rng, md.patch_so_path)
            else:
                mutated = byte_mutation(data, rng)
            path.write_bytes(mutated)
            code, _, err = trigger_here("--timeout", "20", app.pid, path)
            codes[code] = codes.get(code, 0) + 1
            if code == 0:
                # still a valid patch (a new patch id, another target path...)
                reverted, _, err = trigger_here("--timeout", "20", "--revert", app.pid, path)
                assert reverted == 0, (number, err)
            else:
                assert code in refusals, (number, code, err, mutated.hex())
                assert len(err.strip().splitlines()) == 1, err
            if number % 1000 == 0:
                assert both(app) == ORIGINAL, number
        assert both(app) == ORIGINAL  # (a valid one-function patch made 21 meanwhile)
        assert_not_traced(app)
        apply_here(app, ts / "fix.ulp")
        assert both(app) == PATCHED
    print(f"\nfuzzed patch files, exit codes: {dict(sorted(codes.items()))}")


# --- 9. hardened processes -------------------------------------------------------------------


def test_process_forbidding_writable_code_is_patched(ts: Path) -> None:
    """prctl(PR_SET_MDWE, REFUSE_EXEC_GAIN) and a seccomp filter that kills
    the process on a writable+executable mmap/mprotect: apply and revert work."""
    with start(ts, "hardened", "busy", "2") as app:
        assert ask(app, "wx").startswith("wx refused")  # the hardening is real
        for _ in range(2):
            assert run_trigger(app.pid, ts / "fix.ulp").returncode == 0
            assert both(app) == PATCHED
            assert ask(app, "expect 22") == "expect 22 ok"
            assert run_trigger("--revert", app.pid, ts / "fix.ulp").returncode == 0
            assert both(app) == ORIGINAL
        assert app.alive()
        assert stats(app)["mixed"] == 0


# --- 10. timeouts and retries ------------------------------------------------------------------


def test_stopped_process_times_out_and_is_left_as_it_was(ts: Path) -> None:
    """A process stopped with SIGSTOP stays stopped: the trigger gives up after
    --timeout with RETRY; after SIGCONT it runs on, unpatched."""
    with start(ts, "busy", "2") as app:
        os.kill(app.pid, signal.SIGSTOP)
        try:
            wait_until(lambda: Path(f"/proc/{app.pid}/stat").read_text().rsplit(")", 1)[1]
                       .split()[0] == "T", what="stopped")
            result = run_trigger("--timeout", "1", app.pid, ts / "fix.ulp")
            one_line_error(result.returncode, result.stderr, ExitCode.RETRY, "stopped")
            code, _, err = trigger_here("--timeout", "0.5", "--retries", "1", app.pid,
                                        ts / "fix.ulp")
            one_line_error(code, err, ExitCode.RETRY, "stopped")
            assert all(state == "T" for state in thread_states(app.pid))
        finally:
            os.kill(app.pid, signal.SIGCONT)
        assert both(app) == ORIGINAL
        assert_not_traced(app)
        apply_here(app, ts / "fix.ulp")
        assert both(app) == PATCHED


def thread_states(pid: int) -> list[str]:
    states = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):
            states.append(Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                          .rsplit(")", 1)[1].split()[0])
    return states


def test_thread_that_cannot_stop_times_out_and_nothing_changes(ts: Path) -> None:
    """The main thread waits in vfork (uninterruptible, no ptrace stop is
    possible): the code-writing step gives up after --timeout, drops the
    prepared patch, lets every thread go and answers RETRY."""
    with start(ts, "busy", "2") as app:
        assert ask(app, "vfork") == "vfork child"
        wait_until(lambda: Path(f"/proc/{app.pid}/stat").read_text().rsplit(")", 1)[1]
                   .split()[0] == "D", what="main thread in vfork")
        result = run_trigger("--timeout", "1", app.pid, ts / "fix.ulp")
        one_line_error(result.returncode, result.stderr, ExitCode.RETRY, "timed out")
        app.send("go\n")
        assert app.next_line() == "vfork done"
        assert both(app) == ORIGINAL
        assert_not_traced(app)
        assert run_trigger(app.pid, ts / "fix.ulp").returncode == 0
        assert both(app) == PATCHED


def test_busy_agent_is_retried(ts: Path) -> None:
    """The agent still loads a slow patch after --timeout: RETRY, and the agent
    finishes on its own; a later call with --retries succeeds."""
    with start(ts, "busy", "2") as app:
        result = run_trigger("--timeout", "0.3", app.pid, ts / "slow.ulp")
        one_line_error(result.returncode, result.stderr, ExitCode.RETRY, "did not answer")
        assert both(app) == ORIGINAL
        busy = run_trigger(app.pid, ts / "fix.ulp")
        assert busy.returncode in (0, ExitCode.RETRY), busy.stderr
        if busy.returncode == ExitCode.RETRY:
            assert "busy" in busy.stderr
            assert run_trigger("--retries", "100", app.pid, ts / "fix.ulp").returncode == 0
        assert both(app) == PATCHED
        assert_not_traced(app)


# --- threads coming and going ------------------------------------------------------------------


def test_threads_coming_and_going_during_apply(ts: Path) -> None:
    """A thread creates and joins short-lived threads in a loop (each calls the
    library) while the patch is applied and reverted 60 times."""
    with start(ts, "churn", "busy", "1") as app:
        for number in range(60):
            if number % 20 == 0:
                assert run_trigger(app.pid, ts / "fix.ulp").returncode == 0
                assert run_trigger("--revert", app.pid, ts / "fix.ulp").returncode == 0
            else:
                apply_here(app, ts / "fix.ulp")
                revert_here(app, ts / "fix.ulp")
            assert_not_traced(app)
        counters = stats(app)
        assert counters["mixed"] == 0 and counters["churned"] > 0, counters
        assert both(app) == ORIGINAL
