"""How long ulp-trigger holds the application threads stopped during an
apply, in a fresh process with THREADS threads (half calling the prepared library
in a loop, half blocked in read()), and how long the whole command takes."""

from __future__ import annotations

import re
import time
from pathlib import Path

from calls import HERE, TIMEOUT, checked, environment

from support import LiveProcess, cc, tool

PAUSE_LINE = re.compile(r"application threads stopped: (\d+), for ([0-9.]+) ms")


def build(work: Path) -> None:
    """The threads program, against the prepared library built by calls.build."""
    cc(work / "threads", [HERE / "threads.c"], f"-L{work}", "-lbench_prep",
       "-Wl,-rpath,$ORIGIN", "-pthread")


def apply_pauses(work: Path, threads: int, applies: int) -> list[dict[str, float]]:
    """One {"pause_ms", "threads", "command_ms"} per apply, each into a fresh process."""
    return [_one_apply(work, threads) for _ in range(applies)]


def _one_apply(work: Path, threads: int) -> dict[str, float]:
    with LiveProcess([work / "threads", str(threads)], env=environment("loaded"),
                     cwd=work) as target:
        target.wait_for(lambda line: line == "ready", TIMEOUT)
        started = time.monotonic()
        done = tool("ulp-trigger", "--verbose", target.pid, work / "fix.ulp", timeout=TIMEOUT)
        took = time.monotonic() - started
        checked(done)
        target.proc.stdin.close()  # the program ends when its stdin closes
        target.proc.wait(timeout=TIMEOUT)
    match = PAUSE_LINE.search(done.stdout)
    if not match:
        raise RuntimeError(f"ulp-trigger --verbose printed no pause: {done.stdout!r}")
    return {"pause_ms": float(match.group(2)), "threads": int(match.group(1)),
            "command_ms": took * 1000}
