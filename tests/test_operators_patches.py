"""`ulp patches`: what a process runs, per thread, read through /proc/PID/mem
without stopping it or using its agent.  Real processes; every wait has a
timeout."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from consistency_support import C_DIR, LiveProcess, apply, ask, cc, patch, prepared_library, tool

from ulp.trigger.tracee import Tracee


@pytest.fixture(scope="module")
def cm(build_dir: Path) -> dict[str, Path]:
    root = build_dir / "operators-patches"
    lib = prepared_library(root / "lib" / "libcm.so", [C_DIR / "cm_lib.c"], "-fexceptions")
    app = cc(root / "app", [C_DIR / "cm_app.c"], f"-L{root / 'lib'}", "-lcm", "-pthread")
    tag = patch(root, "fix_tag", lib, {"lib_tag": "lib_tag_v2"}, C_DIR / "cm_fix_tag.c")
    return {"root": root, "lib": lib, "app": app, "tag": tag}


def start(cm: dict[str, Path]) -> LiveProcess:
    app = LiveProcess([cm["app"], "none"], env={"LD_LIBRARY_PATH": str(cm["root"] / "lib")})
    assert app.next_line().startswith("w ready mode=none ")
    return app


def patches(*args: str | int) -> list[dict]:
    result = tool("ulp", "patches", "--json", *map(str, args))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def thread_named(pid: int, name: str) -> int:
    return next(int(tid) for tid in os.listdir(f"/proc/{pid}/task")
                if Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip() == name)


def worker_tid(app: LiveProcess) -> int:
    """The program's worker W: neither its main thread nor the ulp agent."""
    agent = thread_named(app.pid, "ulp-agent")
    return next(int(tid) for tid in os.listdir(f"/proc/{app.pid}/task")
                if int(tid) not in (app.pid, agent))


def test_a_thread_that_stays_in_the_library_is_shown_on_old_code(cm) -> None:
    with start(cm) as app:
        assert ask(app, "tag") == "main tag=1"
        app.send("w spin\n")
        assert ask(app, "spinwait 1000") == "spun"  # W is looping inside L
        apply(app.pid, cm["tag"])
        assert ask(app, "tag") == "main tag=2"      # main entered again: new universe
        [view] = patches("-p", app.pid)
        assert view["pid"] == app.pid and view["global_universe"] == 2
        [library] = [lib for lib in view["libraries"] if lib["path"].endswith("libcm.so")]
        assert {"name": "lib_tag", "versions": [[2, None]]} in library["functions"]
        assert library["in_transition"]             # W may still be inside
        threads = {thread["tid"]: thread for thread in view["threads"]}
        [main_record] = threads[app.pid]["records"]
        assert main_record["universe"] == 2 and not main_record["old_code"]
        [w_record] = threads[worker_tid(app)]["records"]
        assert w_record["universe"] == 1 and w_record["inside"] and w_record["old_code"]
        text = tool("ulp", "patches", "-p", app.pid)
        assert "may run old code" in text.stdout and "lib_tag applied at 2" in text.stdout
        app.send("spinstop\n")
        assert app.next_line().startswith("w spin seen=")
        assert ask(app, "w tag") == "w tag=2"      # W's next external entry migrates it
        [view] = patches("-p", app.pid)
        [w_record] = {t["tid"]: t for t in view["threads"]}[worker_tid(app)]["records"]
        assert w_record["universe"] == 2 and not w_record["old_code"]
        # no thread pending any more: the agent ends the transition at its next tick
        deadline = time.monotonic() + 30
        while any(lib["in_transition"] for lib in patches("-p", app.pid)[0]["libraries"]):
            assert time.monotonic() < deadline, "the transition did not end"
            time.sleep(0.05)


def test_it_reads_a_process_whose_agent_a_debugger_holds(cm) -> None:
    with start(cm) as app:
        assert ask(app, "tag") == "main tag=1"
        # the agent answers: it has started (else status says "not running yet")
        assert tool("ulp", "status", app.pid).returncode == 0
        holder = Tracee(thread_named(app.pid, "ulp-agent"))
        holder.stop(time.monotonic() + 30)
        try:
            [view] = patches("-p", app.pid)
            status = tool("ulp", "status", app.pid, "--timeout", "2")
        finally:
            holder.detach()
        assert view["global_universe"] == 1
        assert status.returncode == 7  # the agent's way needs the agent
        assert ask(app, "tag") == "main tag=1"


def test_applied_patches_are_listed_and_checked_while_a_debugger_holds_the_agent(cm) -> None:
    """The runtime's table of applied patches (runtime/applied.c): `ulp
    patches` shows each with its id, label, library, universe, time and
    patch object, and `ulp check` says whether it is applied, neither
    asking the agent (here stopped by another tracer)."""
    labelled = cm["root"] / "labelled.desc"
    labelled.write_text((cm["root"] / "fix_tag.desc").read_text() + "!fix for the tag\n")
    packed = tool("ulp-packer", labelled, "-o", cm["root"] / "labelled.ulp")
    assert packed.returncode == 0, packed.stderr
    fix = cm["root"] / "labelled.ulp"
    patch_id = json.loads(tool("ulp", "dump", "--json", fix).stdout)["patch_id"]
    with start(cm) as app:
        assert patches("-p", app.pid)[0]["patches"] == []
        before = time.time_ns()
        apply(app.pid, fix)
        after = time.time_ns()
        holder = Tracee(thread_named(app.pid, "ulp-agent"))
        holder.stop(time.monotonic() + 30)
        try:
            [view] = patches("-p", app.pid)
            text = tool("ulp", "patches", "-p", app.pid).stdout
            check = tool("ulp", "check", app.pid, fix)
        finally:
            holder.detach()
        [shown] = view["patches"]
        assert shown["patch_id"] == patch_id and shown["label"] == "fix for the tag"
        assert shown["library"] == str(cm["lib"]) and shown["universe"] == 2
        assert before <= shown["time_ns"] <= after
        assert shown["object_path"] == str(cm["root"] / "fix_tag.so")
        assert (shown["part"], shown["nparts"]) == (0, 1)
        assert f"patch {patch_id} fix for the tag: libcm.so, applied at 2" in text, text
        assert check.returncode == 0 and f"patch {patch_id} is applied (universe 2" in \
            check.stdout, check.stdout
        reverted = tool("ulp-trigger", "--revert", app.pid, fix)
        assert reverted.returncode == 0, reverted.stderr
        assert patches("-p", app.pid)[0]["patches"] == []
        check = tool("ulp", "check", app.pid, fix)
        assert check.returncode == 0 and "is not applied, and can be" in check.stdout


def test_without_a_process_it_lists_every_process_with_the_runtime(cm) -> None:
    with start(cm) as first, start(cm) as second:
        pids = {view["pid"] for view in patches()}
        assert {first.pid, second.pid} <= pids
