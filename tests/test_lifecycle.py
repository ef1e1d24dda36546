"""The runtime never harms its process (issue 7, items 9, 10, 12, 13, 14):
a library loaded twice, libraries unloaded under pending or applied
patches, a process whose threads all end, a process never patched, a
process that calls execve while the trigger works.  Real processes, real
ptrace; every wait has a timeout.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

import support
from support import C_DIR, RUNTIME, LiveProcess, cc, shared_library, tool
from ulp import patchfile
from ulp.agent_abi import Op, Status
from ulp.errors import ExitCode
from ulp.process import Process
from ulp.trigger import transition
from ulp.trigger.agent import Agent

TIMEOUT = 20


@pytest.fixture(scope="module")
def lc(build_dir: Path) -> Path:
    """app, lib/liblc.so (prepared), copy/liblc.so (the same file under
    another path), fix.ulp (lc_value returns 2), exec.ulp (its constructor
    execs the program again), slow.ulp (ld.so takes 300 ms to load it)."""
    root = build_dir / "lc"
    (root / "lib").mkdir(parents=True)
    (root / "copy").mkdir()
    lib = shared_library(root / "lib" / "liblc.so", [C_DIR / "lc_lib.c"])
    assert tool("ulp-prepare", lib).returncode == 0
    shutil.copy(lib, root / "copy" / "liblc.so")
    cc(root / "app", [C_DIR / "lc_app.c"], "-I", str(RUNTIME.parent), "-ldl", "-lpthread")
    for name, source, pair in (("fix", "lc_fix.c", "lc_value:lc_value_v2"),
                               ("exec", "lc_fix_exec.c", "lc_value:lc_value_v3"),
                               ("slow", "lc_fix_slow.c", "lc_value:lc_value_v4")):
        shared_library(root / f"lib{name}.so", [C_DIR / source], patchable=False)
        (root / f"{name}.desc").write_text(f"lib{name}.so\n@lib/liblc.so\n{pair}\n")
        packed = tool("ulp-packer", root / f"{name}.desc", "-o", root / f"{name}.ulp")
        assert packed.returncode == 0, packed.stderr
    return root


def start(root: Path, *args: str, env: dict[str, str] | None = None,
          runtime: bool = True) -> LiveProcess:
    app = LiveProcess([root / "app", *args], env=env, preload_runtime=runtime)
    assert app.next_line() == "ready"
    return app


def ask(app: LiveProcess, command: str) -> str:
    app.send(command + "\n")
    return app.next_line(TIMEOUT)


def trigger_here(*args: str | Path | int) -> tuple[int, str]:
    """ulp-trigger's main() in this process: exit code and stderr."""
    code, _, err = support.trigger_here("--timeout", str(TIMEOUT), "--retries", "20", *args)
    return code, err


def apply(app: LiveProcess, patch: Path) -> None:
    code, err = trigger_here(app.pid, patch)
    assert code == 0, err


def revert(app: LiveProcess, patch: Path) -> None:
    code, err = trigger_here("--revert", app.pid, patch)
    assert code == 0, err


def prepare_only(app: LiveProcess, patch: Path) -> None:
    """What a trigger killed between PREPARE and COMMIT leaves: a prepared
    patch whose versions no universe can see."""
    process = Process(app.pid)
    try:
        patch_file = patchfile.read_patch_file(str(patch))
        md = patch_file.metadata
        target = transition.find_target(process, md)
        so_bytes = patch_file.patch_object
        agent = Agent(process, TIMEOUT)
        agent.attach()
        try:
            status, message = agent.call(transition._request(Op.STAGE, md))
            assert status == Status.OK, message
            staged = agent.fill_staged(so_bytes)
            status, message = agent.call(transition._request(Op.PREPARE, md, target, staged,
                                                             len(so_bytes)))
            assert status == Status.OK, message
        finally:
            agent.release()
    finally:
        process.close()


def tracer_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as stream:
        return next(int(line.split()[1]) for line in stream if line.startswith("TracerPid:"))


def agent_threads(pid: int) -> int:
    count = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):
            count += Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip() == "ulp-agent"
    return count


# --- item 9: a library loaded twice ---------------------------------------------------


def test_library_loaded_twice_is_refused_never_half_patched(lc: Path) -> None:
    """Two copies of the target (the same file under two paths): the apply is
    refused with one line and nothing changes; with one copy left it works;
    a copy loaded after the apply makes the next apply refuse again (not
    "already applied"), and the revert still works."""
    with start(lc) as app:
        assert ask(app, f"open 0 {lc / 'lib' / 'liblc.so'}") == "opened"
        assert ask(app, f"open 1 {lc / 'copy' / 'liblc.so'}") == "opened"
        assert ask(app, "call 0") == ask(app, "call 1") == "value=1"
        code, err = trigger_here(app.pid, lc / "fix.ulp")
        assert code == ExitCode.TARGET_MISMATCH, err
        assert "loaded 2 times" in err and len(err.strip().splitlines()) == 1, err
        assert ask(app, "call 0") == ask(app, "call 1") == "value=1"
        assert ask(app, "close 1") == "closed"
        apply(app, lc / "fix.ulp")
        assert ask(app, "call 0") == "value=2"
        assert ask(app, f"open 1 {lc / 'copy' / 'liblc.so'}") == "opened"
        assert ask(app, "call 1") == "value=1"
        code, err = trigger_here(app.pid, lc / "fix.ulp")
        assert code == ExitCode.TARGET_MISMATCH and "loaded 2 times" in err, err
        revert(app, lc / "fix.ulp")
        assert ask(app, "call 0") == ask(app, "call 1") == "value=1"


# --- item 10: libraries unloaded under patches ---------------------------------------------


def test_dlclose_after_a_dead_trigger(lc: Path) -> None:
    """A prepared, never committed patch, then the program dlcloses the
    library: the next request must not touch the unmapped descriptors."""
    path = lc / "lib" / "liblc.so"
    with start(lc) as app:
        assert ask(app, f"open 0 {path}") == "opened"
        assert ask(app, "call 0") == "value=1"
        prepare_only(app, lc / "fix.ulp")
        assert ask(app, "close 0") == "closed"
        code, err = trigger_here("--revert", app.pid, lc / "fix.ulp")
        assert code == ExitCode.NOT_APPLIED, err
        assert app.alive()
        assert ask(app, f"open 0 {path}") == "opened"
        assert ask(app, "call 0") == "value=1"
        apply(app, lc / "fix.ulp")
        assert ask(app, "call 0") == "value=2"


def test_seventy_load_cycles_under_every_kind_of_patch_state(lc: Path) -> None:
    """70 times: dlopen the library, call it, leave it unpatched, applied,
    applied then reverted, or with a pending patch, dlclose it.  The process
    never crashes, the library table forgets every unloaded copy (64 slots),
    and the 71st copy is patched and reverted."""
    path = lc / "lib" / "liblc.so"
    patch = lc / "fix.ulp"
    with start(lc) as app:
        for cycle in range(70):
            assert ask(app, f"open 0 {path}") == "opened", cycle
            assert ask(app, "call 0") == "value=1", cycle
            kind = cycle % 4
            if kind == 1:
                apply(app, patch)
                assert ask(app, "call 0") == "value=2", cycle
            elif kind == 2:
                apply(app, patch)
                revert(app, patch)
                assert ask(app, "call 0") == "value=1", cycle
            elif kind == 3:
                prepare_only(app, patch)
                assert ask(app, "call 0") == "value=1", cycle
            assert ask(app, "close 0") == "closed", cycle
            if kind in (1, 2):  # unmapped once the agent lets go of the commit's pins
                support.wait_unmapped(app.pid, "liblc.so")
        code, err = trigger_here("--revert", app.pid, patch)
        assert code == ExitCode.NOT_APPLIED and "unloaded" in err, err
        assert ask(app, f"open 0 {path}") == "opened"
        assert ask(app, "call 0") == "value=1"
        apply(app, patch)
        assert ask(app, "call 0") == "value=2"
        revert(app, patch)
        assert ask(app, "call 0") == "value=1"
        assert app.alive()


def runtime_address(pid: int, symbol: str) -> int:
    """Where the runtime's (static) ``symbol`` is in process ``pid``: its
    value in libulp.so's symbol table plus the load address."""
    from elftools.elf.elffile import ELFFile

    with open(RUNTIME, "rb") as stream:
        [found] = ELFFile(stream).get_section_by_name(".symtab").get_symbol_by_name(symbol)
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) == 6 and fields[5] == str(RUNTIME) and int(fields[2], 16) == 0:
            return int(fields[0].split("-")[0], 16) + found["st_value"]
    raise AssertionError(f"{RUNTIME} is not mapped in process {pid}")


def test_a_fork_child_gets_an_agent_although_the_parents_held_its_lock(lc: Path) -> None:
    """The parent's agent holds the runtime's transition lock (its ticks
    take it) at the moment another thread forks: the child inherits it
    locked, with no thread to unlock it.  Made here by holding the agent in
    its idle wait and marking the lock taken in its memory during the fork:
    the child's own agent must not wait for it forever, and the child is
    patched."""
    with start(lc) as app:
        assert ask(app, f"open 0 {lc / 'lib' / 'liblc.so'}") == "opened"
        process = Process(app.pid)
        agent = Agent(process, TIMEOUT)
        agent.attach()  # in its idle wait: it holds nothing
        lock = runtime_address(app.pid, "transition_lock")
        try:
            process.write(lock, (1).to_bytes(4, "little"))  # as a tick under way leaves it
            answer = ask(app, "fork-child")
        finally:
            process.write(lock, bytes(4))
            agent.release()
            process.close()
        assert answer.startswith("child="), answer
        try:
            code, err = trigger_here(int(answer.split("=")[1]), lc / "fix.ulp")
            assert code == 0, err
        finally:
            assert ask(app, "child-end") == "child-ended 1"


# --- item 12: the process must be able to end -------------------------------------------------


def test_fork_while_the_agent_is_inside_the_loader(lc: Path) -> None:
    """A thread forks again and again while the agent loads a patch that
    takes ld.so 300 ms to relocate (inside dlopen, holding the loader's
    lock); every child dlopens a library and must succeed: glibc's fork
    does not wait for the loader's lock, it resets it in the child (the
    children of a program whose own thread sits in dlopen fare the same;
    measured with the loader's list marked as changing too, RT_ADD: 796
    children, none failed)."""
    with start(lc) as app:
        assert ask(app, "open 0 " + str(lc / "lib" / "liblc.so")) == "opened"
        assert ask(app, "call 0") == "value=1"
        assert ask(app, "fork-loop " + str(lc / "copy" / "liblc.so")) == "forking"
        apply(app, lc / "slow.ulp")
        result = ask(app, "fork-result")
        counts = dict(field.split("=") for field in result.split())
        assert int(counts["forks"]) > 0, result
        assert counts["bad"] == "0", result
        assert ask(app, "call 0") == "value=4"


def test_process_ends_when_its_last_thread_returns(lc: Path) -> None:
    """main calls pthread_exit; when the last application thread returns, the
    process exits (status 0) although the agent runs, patched or not."""
    with start(lc, "pthread-exit") as app:
        assert agent_threads(app.pid) == 1
        app.send("end\n")
        assert app.proc.wait(timeout=TIMEOUT) == 0
    with start(lc) as app:
        assert ask(app, f"open 0 {lc / 'lib' / 'liblc.so'}") == "opened"
        apply(app, lc / "fix.ulp")
        assert ask(app, "call 0") == "value=2"
        assert ask(app, "handoff") == "handed"
        assert ask(app, "call 0") == "value=2"
        deadline = time.monotonic() + TIMEOUT
        while Path(f"/proc/{app.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the main thread did not exit"
            time.sleep(0.002)
        code, err = trigger_here("--revert", app.pid, lc / "fix.ulp")
        assert code == ExitCode.FAILURE and "main thread" in err, err
        app.send("end\n")
        assert app.proc.wait(timeout=TIMEOUT) == 0


def test_sigterm_ends_a_process_whose_last_thread_just_returned(lc: Path) -> None:
    """SIGTERM right after the last application thread returned: taken by
    that thread, or the process ends anyway; never pending forever."""
    with start(lc, "pthread-exit") as app:
        app.send("end\n")
        os.kill(app.pid, signal.SIGTERM)
        assert app.proc.wait(timeout=TIMEOUT) in (0, -signal.SIGTERM)


# --- item 13: a process never patched -----------------------------------------------------------


def observed(app: LiveProcess) -> tuple[str, str]:
    return ask(app, "threads"), ask(app, "fork-unshare")


def test_ulp_agent_off_is_as_single_threaded_as_without_the_runtime(lc: Path) -> None:
    """ULP_AGENT=off: one thread, unshare(CLONE_NEWUSER) and fork children as
    without the runtime; the trigger refuses with one line (exit 8).  By
    default the agent runs from the start, at the cost the docs state."""
    with start(lc, runtime=False) as app:
        baseline = observed(app)
    assert baseline[0] == "threads=1" and "child-threads=1" in baseline[1], baseline
    with start(lc, env={"ULP_AGENT": "off"}) as app:
        assert observed(app) == baseline
        assert agent_threads(app.pid) == 0
        assert ask(app, f"open 0 {lc / 'lib' / 'liblc.so'}") == "opened"
        assert ask(app, "call 0") == "value=1"
        code, err = trigger_here(app.pid, lc / "fix.ulp")
        assert code == ExitCode.NO_RUNTIME and "ULP_AGENT=off" in err, err
        assert len(err.strip().splitlines()) == 1
    with start(lc) as app:
        threads, forked = observed(app)
        assert threads == "threads=2" and "child-threads=2" in forked, forked
        if "unshare=ok" in baseline[1]:
            assert "unshare=EINVAL" in forked, forked
        assert ask(app, f"open 0 {lc / 'lib' / 'liblc.so'}") == "opened"
        apply(app, lc / "fix.ulp")
        assert ask(app, "call 0") == "value=2"


def runtime_log(pid: int) -> list[str]:
    log = json.loads(tool("ulp", "messages", "--json", str(pid)).stdout)
    return [message["text"] for message in log["messages"]]


def test_the_administrators_rules_keep_the_agent_out_of_the_processes_they_name(
        lc: Path, tmp_path: Path) -> None:
    """Rules of /etc/ulp/agent.conf's form (runtime/config.c), here in the
    file ULP_AGENT_CONFIG names besides it: the first rule that matches the
    program's path or its user decides; a line that does not parse is
    logged and skipped; the environment cannot give the agent back."""
    import pwd

    baseline = ("threads=1", "unshare=ok child-threads=1")
    rules = tmp_path / "agent.conf"
    user = pwd.getpwuid(os.getuid()).pw_name
    cases = [
        # (the rules, ULP_AGENT, the mode the process gets, the line deciding)
        (f"# keep it out\noff path {lc / 'app'}\n", None, "off", 2),
        (f"off path {lc}/a*\nstart user {user}\n", "demand", "off", 1),
        (f"off path /nowhere/*\nthis is not a rule\noff user {user}\n", None, "off", 3),
        (f"demand user {os.getuid()}\noff user {user}\n", None, "demand", 1),
        (f"off path /nowhere/*\noff user nobody-{os.getpid()}\n", None, "start", 0),
    ]
    for text, env_mode, mode, line in cases:
        rules.write_text(text)
        env = {"ULP_AGENT_CONFIG": str(rules)} | ({"ULP_AGENT": env_mode} if env_mode else {})
        with start(lc, env=env) as app:
            assert ask(app, f"open 0 {lc / 'lib' / 'liblc.so'}") == "opened"
            log = runtime_log(app.pid)
            loaded = next(entry for entry in log if entry.startswith("runtime loaded"))
            if mode == "start":
                assert agent_threads(app.pid) == 1 and "agent starting" in loaded, (text, log)
                continue
            assert observed(app) == baseline, text
            assert f"agent {'off' if mode == 'off' else 'on demand'}" in loaded, (text, log)
            assert any(entry.startswith(f"agent {mode} by line {line} (") for entry in log), \
                (text, log)
            if "not a rule" in text:
                assert any(entry.startswith("ignored line 2 (not MODE KIND PATTERN) of ")
                           for entry in log), log
            if mode == "off":
                code, err = trigger_here(app.pid, lc / "fix.ulp")
                assert code == ExitCode.NO_RUNTIME and "agent.conf" in err, err
                assert ask(app, "call 0") == "value=1"
            else:
                apply(app, lc / "fix.ulp")
                assert ask(app, "call 0") == "value=2"


# --- item 14: execve while the trigger works ------------------------------------------------------


def test_ulp_agent_demand_stays_single_threaded_until_a_trigger_starts_it(lc: Path) -> None:
    """ULP_AGENT=demand: one thread, unshare and fork as without the runtime;
    the first trigger starts the agent on the thread blocked in read() (its
    read goes on: the next command is answered), the patch applies, and a
    fork child is single-threaded again (no agent until a trigger of its
    own)."""
    with start(lc, env={"ULP_AGENT": "demand"}) as app:
        assert ask(app, "open 0 " + str(lc / "lib" / "liblc.so")) == "opened"
        assert observed(app) == ("threads=1", "unshare=ok child-threads=1")
        apply(app, lc / "fix.ulp")
        assert ask(app, "call 0") == "value=2"
        assert ask(app, "threads") == "threads=2"
        assert ask(app, "fork-unshare") == "unshare=ok child-threads=1"
        revert(app, lc / "fix.ulp")
        assert ask(app, "call 0") == "value=1"
        log = json.loads(tool("ulp", "messages", "--json", str(app.pid)).stdout)
        texts = [message["text"] for message in log["messages"]]
        assert any("agent on demand" in text for text in texts), texts
        assert sum(text.startswith("agent started") for text in texts) == 1, texts


def test_ulp_agent_demand_with_no_thread_at_a_safe_point_is_refused(lc: Path) -> None:
    """The only thread is busy (no system call): the agent cannot be started
    safely; the trigger says so (RETRY) within its timeout and the process
    runs on; once the thread waits in read() again, the apply goes through."""
    with start(lc, env={"ULP_AGENT": "demand"}) as app:
        assert ask(app, "open 0 " + str(lc / "lib" / "liblc.so")) == "opened"
        assert ask(app, "spin 4000") == "spinning"
        code, _, err = support.trigger_here("--timeout", "1", app.pid, lc / "fix.ulp")
        assert code == ExitCode.RETRY and "ULP_AGENT=demand" in err, err
        assert app.next_line(TIMEOUT) == "spun"
        assert ask(app, "threads") == "threads=1"
        apply(app, lc / "fix.ulp")
        assert ask(app, "call 0") == "value=2"


def test_ulp_agent_demand_start_survives_a_killed_trigger(lc: Path) -> None:
    """The thread that starts the agent returns to its read() by itself: a
    trigger killed at any moment of that leaves the process working, and a
    later trigger applies."""
    chooser = random.Random(5)
    for attempt in range(8):
        with start(lc, env={"ULP_AGENT": "demand"}) as app:
            assert ask(app, "open 0 " + str(lc / "lib" / "liblc.so")) == "opened"
            trigger = subprocess.Popen([str(support.BIN_DIR / "ulp-trigger"), str(app.pid),
                                        str(lc / "fix.ulp")],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(chooser.uniform(0, 0.08))
            trigger.kill()
            trigger.wait(timeout=TIMEOUT)
            assert ask(app, "call 0") in ("value=1", "value=2"), attempt
            code, err = trigger_here(app.pid, lc / "fix.ulp")
            assert code in (0, ExitCode.ALREADY_APPLIED), (attempt, err)
            assert ask(app, "call 0") == "value=2", attempt


def test_execve_by_the_patch_being_loaded_is_process_exited(lc: Path) -> None:
    """The patch object's constructor execs the program while the agent loads
    it: the real command reports the process gone (16) in one line, and the
    process runs on in its new image, traced by nobody."""
    with start(lc) as app:
        assert ask(app, f"open 0 {lc / 'lib' / 'liblc.so'}") == "opened"
        result = subprocess.run([str(RUNTIME.parents[1] / ".venv" / "bin" / "ulp-trigger"),
                                 "--timeout", str(TIMEOUT), str(app.pid), str(lc / "exec.ulp")],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == ExitCode.PROCESS_EXITED, result.stderr
        assert "execve" in result.stderr and len(result.stderr.strip().splitlines()) == 1
        assert app.next_line() == "execd"
        assert ask(app, "threads") == "threads=2"
        assert tracer_of(app.pid) == 0


def trigger_returning_within(seconds: float, *args: str | Path | int) -> tuple[int, str]:
    """ulp-trigger's main() on a thread of this process, waited for SECONDS:
    given a longer --timeout, a trigger that waits out its own timeout for
    something that can no longer happen fails the test instead of
    answering late with a plausible exit code."""
    answer: list[tuple[int, str, str]] = []
    thread = threading.Thread(target=lambda: answer.append(support.trigger_here(*args)),
                              daemon=True)
    thread.start()
    thread.join(seconds)
    assert answer, f"ulp-trigger {args} did not return within {seconds} s"
    code, _, err = answer[0]
    return code, err


def test_execve_at_random_moments_of_an_apply(lc: Path) -> None:
    """40 trials: a thread of the target execs the program 0-3 ms after it
    sees the trigger at work (the agent traced, or an answer of the agent).
    Every answer is 0 (done before the exec) or 16, never another code, and
    comes without waiting out the trigger's timeout (a thread interrupted
    inside its execve never stops: the trigger once waited for it until the
    timeout, then answered 16 anyway); nothing stays traced."""
    rng = random.Random(14)
    codes: dict[int, int] = {}
    for trial in range(40):
        with start(lc) as app:
            assert ask(app, f"open 0 {lc / 'lib' / 'liblc.so'}") == "opened"
            assert ask(app, f"exec-traced {rng.randrange(0, 3000)}") == "armed"
            code, err = trigger_returning_within(TIMEOUT, "--timeout", str(3 * TIMEOUT),
                                                 app.pid, lc / "fix.ulp")
            codes[code] = codes.get(code, 0) + 1
            assert code in (ExitCode.OK, ExitCode.PROCESS_EXITED), (trial, code, err)
            assert app.next_line() == "execd"
            deadline = time.monotonic() + TIMEOUT
            while tracer_of(app.pid) != 0:
                assert time.monotonic() < deadline, "still traced"
                time.sleep(0.002)
    print(f"\nexit codes when the target execs: {codes}")


def test_a_silent_target_is_described_by_its_threads(lc: Path) -> None:
    """When a target prints nothing, the failure says what each thread was
    doing (a target left stopped or traced, or one waiting for an event that
    never came, as the exec thread above once did, shows at once)."""
    with start(lc) as app, pytest.raises(AssertionError) as failure:
        app.next_line(0.2)
    message = str(failure.value)
    assert f"process {app.pid} printed nothing for 0.2s; its threads: {app.pid} app " in message
    assert re.search(r"\d+ ulp-agent [RS] \(\w+\) traced by 0 in \S+", message), message


def test_a_plugin_with_its_own_boost_context_still_makes_coroutines(build_dir: Path) -> None:
    """The runtime's make_fcontext (which notes boost.context's coroutine
    stacks) must hand every call on to the boost.context the caller would
    have reached without it, also one that only the caller's own scope
    holds: a plugin loaded with RTLD_LOCAL that links libboost_context,
    which the runtime's lookup of the next definition does not see.  Before,
    make_fcontext returned NULL there and the plugin's coroutine could not
    start."""
    boost = ctypes.util.find_library("boost_context")
    assert boost, "libboost_context is missing: `make system-deps` installs it"
    root = build_dir / "fc_plugin"
    root.mkdir(exist_ok=True)
    plugin = shared_library(root / "libplugin.so", [C_DIR / "fc_plugin.c"], f"-l:{boost}",
                            patchable=False)
    program = cc(root / "main", [C_DIR / "fc_main.c"], "-ldl")
    for env in ({}, {"LD_PRELOAD": str(RUNTIME)}):
        ran = subprocess.run([program, plugin], capture_output=True, text=True, timeout=60,
                             env={**os.environ, **env})
        assert (ran.returncode, ran.stdout) == (0, "plugin_run=42\n"), (env, ran)
