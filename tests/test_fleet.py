"""A short slice of `make bench-fleet`: one ulp-trigger call applies to every
process of a fleet forked as libpulp's stress test forks it (bench/fleet.c),
each with the agent the runtime restarts after fork, and one call reverts
it everywhere; and what makes that fast (docs/trigger.md, "Speed"): the
thread table asked of the kernel, the worker processes.  Real processes;
every wait has a timeout."""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest
from consistency_support import C_DIR, LiveProcess, ask, patch, prepared_library, tool

from support import ROOT, RUNTIME, TIMEOUT, cc
from ulp import agent_abi, patchfile
from ulp.process import Process
from ulp.trigger import threadtable, workers
from ulp.trigger.tracee import Tracee

CHILDREN = 30


def test_one_call_applies_to_a_forked_fleet_and_one_reverts_it(build_dir: Path) -> None:
    root = build_dir / "fleet"
    lib = prepared_library(root / "lib" / "libe2e.so", [C_DIR / "e2e_lib.c"])
    fleet = cc(root / "fleet", [ROOT / "bench" / "fleet.c"], f"-L{root / 'lib'}", "-le2e")
    fix = patch(root, "fix", lib, {"lib_value": "lib_value_v2"}, C_DIR / "e2e_fix.c")
    proc = subprocess.Popen([str(fleet), str(CHILDREN)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            env={"LD_PRELOAD": str(RUNTIME), "LD_LIBRARY_PATH": str(lib.parent)})
    try:
        assert proc.stdout.readline() == f"ready {CHILDREN}\n"
        applied = tool("ulp-trigger", "--json", fix, timeout=300)
        child = max(result["pid"] for result in json.loads(applied.stdout)["results"])
        # the trigger never looks into the patch objects staged before: so named
        staged = [line for line in Path(f"/proc/{child}/maps").read_text().splitlines()
                  if line.split(maxsplit=5)[5:] and line.split(maxsplit=5)[5].startswith(
                      agent_abi.STAGED_OBJECT_PATH)]
        reverted = tool("ulp-trigger", "--revert", fix, timeout=300)
        log = json.loads(tool("ulp", "messages", "--json", child).stdout)
        child_threads = set(os.listdir(f"/proc/{child}/task"))
    finally:
        proc.stdin.close()
        code = proc.wait(timeout=TIMEOUT)
    assert applied.returncode == 0, applied.stderr
    results = json.loads(applied.stdout)["results"]
    assert len(results) == CHILDREN + 1 and {r["outcome"] for r in results} == {"applied"}
    assert proc.pid in {r["pid"] for r in results}
    assert reverted.returncode == 0, reverted.stderr
    assert f"{CHILDREN + 1} process(es): {CHILDREN + 1} reverted" in reverted.stdout
    kinds = [message["kind"] for message in log["messages"]]
    assert kinds[-3:] == ["staged", "applied", "reverted"], kinds
    # the child's log: its parent's up to the fork (the parent's agent may
    # not have logged its start yet), then its own agent's start
    started = [re.fullmatch(r"agent started \(thread (\d+)\)", message["text"])
               for message in log["messages"] if message["kind"] == "agent"]
    assert started and all(started) and started[-1].group(1) in child_threads, log
    assert all(match.group(1) not in child_threads for match in started[:-1]), log
    assert code == 0  # every child ended normally
    assert staged, "the applied patch object is not mapped under STAGED_OBJECT_PATH"


def test_the_thread_table_asked_of_the_kernel_is_the_one_read_from_maps(build_dir: Path) -> None:
    """PROCMAP_QUERY (one question per address) gives the COMMIT the same
    stacks as the text of /proc/PID/maps: the main thread's [stack], the
    agent's own stack found from its thread pointer, and the mapping each
    stack pointer is in.  Both threads stopped with real ptrace."""
    root = build_dir / "fleet-table"
    lib = prepared_library(root / "lib" / "libe2e.so", [C_DIR / "e2e_lib.c"])
    app = cc(root / "app", [C_DIR / "e2e_app.c"], f"-L{root / 'lib'}", "-le2e", "-ldl")
    with LiveProcess([app], env={"LD_LIBRARY_PATH": str(lib.parent)}) as proc:
        assert proc.next_line() == "ready"
        process = Process(proc.pid)
        tracees = [Tracee(tid) for tid in process.threads()]
        try:
            threads = []
            for tracee in tracees:
                tracee.stop(time.monotonic() + TIMEOUT)
                threads.append((tracee.tid, tracee.get_registers()))
            queried = threadtable._queried_table(process, threads)
            read = threadtable._read_table(process, threads)
        finally:
            for tracee in tracees:
                tracee.let_go(time.monotonic() + TIMEOUT)
            process.close()
    assert len(threads) == 2  # the program and the agent
    assert [row[2:] for row in queried] == [row[2:] for row in read]
    assert all(own and here for _, _, own, here in queried)


def _request_threads(process: Process, mailbox: int) -> tuple[int, list]:
    """The flags and the thread table of the last request written to the
    mailbox, as the agent left it (it fills a COMMIT's stacks in place)."""
    header = struct.calcsize(agent_abi.REQUEST_HEADER_FORMAT)
    fields = struct.unpack(agent_abi.REQUEST_HEADER_FORMAT,
                           process.read(mailbox + agent_abi.REQUEST_OFFSET, header))
    nunits, nrequires, nprivates, nrefs, nthreads = (fields[1], fields[2], fields[11],
                                                     fields[12], fields[16])
    start = (header + 16 * nrequires + struct.calcsize(agent_abi.REQUEST_UNIT_FORMAT) * nunits
             + struct.calcsize(agent_abi.REQUEST_PRIVATE_FORMAT) * nprivates
             + struct.calcsize(agent_abi.REQUEST_REF_FORMAT) * nrefs)
    size = struct.calcsize(agent_abi.REQUEST_THREAD_FORMAT)
    data = process.read(mailbox + agent_abi.REQUEST_OFFSET + start, size * nthreads)
    return fields[17], [agent_abi.RequestThread(tid, rip, rsp, tp, low, high, here)
                        for tid, _, rip, rsp, tp, low, high, here
                        in struct.iter_unpack(agent_abi.REQUEST_THREAD_FORMAT, data)]


def test_the_stacks_the_runtime_finds_are_the_ones_the_trigger_would_send(
        build_dir: Path, monkeypatch) -> None:
    """Above 16 threads the trigger leaves each thread's stacks 0 in the
    COMMIT (REQUEST_FILL_BOUNDS) and the runtime finds them in its own
    mappings (runtime/threadstacks.c): they must be exactly the ones the
    trigger reads from /proc/PID/maps at the same stop, for every thread
    (the main thread's [stack], the others' from their thread pointers, the
    mapping of each stack pointer).  One real apply to 40 threads."""
    from ulp.trigger import agent as agent_module
    from ulp.trigger import transition
    from ulp.trigger.tracee import block_sigchld

    root = build_dir / "fill-bounds"
    lib = prepared_library(root / "lib" / "libe2e.so", [C_DIR / "e2e_lib.c"])
    app = cc(root / "app", [C_DIR / "many_threads_app.c"], f"-L{root / 'lib'}", "-le2e",
             "-pthread")
    fix = patch(root, "fix", lib, {"lib_value": "lib_value_v2"}, C_DIR / "e2e_fix.c")
    own_tables = []
    original = threadtable.thread_table

    def both_tables(process, stopped, runtime_finds_stacks=False):
        own_tables.append(original(process, stopped))
        return original(process, stopped, runtime_finds_stacks)

    monkeypatch.setattr(transition, "thread_table", both_tables)
    block_sigchld()
    with LiveProcess([app, "40"], env={"LD_LIBRARY_PATH": str(lib.parent)}) as proc:
        assert proc.next_line() == "ready"
        process = Process(proc.pid)
        try:
            transition.apply(process, patchfile.read_patch_file(str(fix)), TIMEOUT, str(fix))
            flags, filled = _request_threads(process, agent_module.find_mailbox(process))
        finally:
            process.close()
        assert ask(proc, "call") == "value=200"       # the patched lib_value
    assert flags & agent_abi.REQUEST_FILL_BOUNDS          # the runtime did find them
    assert len(own_tables) == 1 and len(own_tables[0]) == 42  # 40, the spinner, main
    assert sorted(filled, key=lambda t: t.tid) == sorted(own_tables[0], key=lambda t: t.tid)
    assert all(thread.stack_high and thread.here_high for thread in filled)


def test_a_worker_that_dies_leaves_its_process_without_an_outcome() -> None:
    """ulp.trigger.workers: every PID's result comes back from the forked
    workers, whichever took it; a worker that dies (here at PID 3) costs only
    the result it was working on, which run() reports, and the rest go on."""
    answers: dict[int, object] = {}

    def work(pid: int) -> object:
        if pid == 3:
            os._exit(9)
        return [pid, "done"]

    lost = workers.run(list(range(1, 41)), work, 3, answers.__setitem__)
    assert lost == {3}
    assert answers == {pid: [pid, "done"] for pid in range(1, 41) if pid != 3}


def test_a_ctrl_c_tells_the_outcome_of_every_process_started_and_starts_no_other(
        tmp_path: Path) -> None:
    """ulp.trigger.workers on SIGINT (here sent by the work of PID 5 to the
    parent): no PID is started after it, the one under way finishes (a
    worker ignores SIGINT: an apply is never cut in the middle) and every
    process started has its outcome told before the interrupt goes on."""
    answers: dict[int, object] = {}

    def work(pid: int) -> object:
        (tmp_path / str(pid)).touch()  # started
        if pid == 5:
            os.kill(os.getppid(), signal.SIGINT)
            time.sleep(0.2)  # still under way when the parent stops
        else:
            time.sleep(0.005)
        return pid

    with pytest.raises(KeyboardInterrupt):
        workers.run(list(range(1, 201)), work, 3, answers.__setitem__)
    started = {int(path.name) for path in tmp_path.iterdir()}
    assert 5 in answers and set(answers) == started
    assert len(started) < 200

