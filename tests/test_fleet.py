"""A short slice of `make bench-fleet`: one ulp-trigger call applies to every
process of a fleet forked as libpulp's stress test forks it (bench/fleet.c),
each with the agent the runtime restarts after fork, and one call reverts
it everywhere.  Real processes; every wait has a timeout."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from consistency_support import C_DIR, patch, prepared_library, tool

from support import ROOT, RUNTIME, TIMEOUT, cc

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
        reverted = tool("ulp-trigger", "--revert", fix, timeout=300)
        child = max(result["pid"] for result in json.loads(applied.stdout)["results"])
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
