"""`make demo`: every step in the order it happened, and commands a user can
copy and run as shown (issue 11, item 8)."""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120


def test_the_demo_shows_every_step_in_order_with_commands_that_run_as_shown() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "demo" / "run_demo.py")],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    apply = next(i for i, line in enumerate(lines) if line.startswith("$ ulp-trigger ")
                 and "--revert" not in line)
    revert = next(i for i, line in enumerate(lines) if line.startswith("$ ulp-trigger --revert"))
    patched = [i for i, line in enumerate(lines) if "PATCHED" in line]
    assert patched and apply < patched[0] and patched[-1] < revert, done.stdout
    shown = [line for line in lines if line.strip()]
    assert "original library" in shown[-2] and shown[-1].startswith("=== done"), done.stdout
    # the line that starts the program, typed where the demo says its commands run
    [preload] = [line[2:] for line in lines if line.startswith("$ LD_PRELOAD=")]
    assert preload.endswith(" &") and "(in build/demo: every command below runs there" in \
        done.stdout
    env = {key: value for key, value in os.environ.items() if key != "LD_PRELOAD"}
    # as typed (without the &), the shell replaced by the program so that it can be killed
    command = preload.removesuffix(" &").replace(" ./app", " exec ./app")
    program = subprocess.Popen(["sh", "-c", command],
                               cwd=ROOT / "build" / "demo", env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        ready, _, _ = select.select([program.stdout], [], [], 30)
        assert ready, "the program printed nothing in 30 s"
        first = program.stdout.readline()
        assert "tick 0: hello from the original library" in first, (first, program.stderr)
        maps = Path(f"/proc/{program.pid}/maps").read_text()
        assert "libulp.so" in maps  # the runtime preloaded as the line says
    finally:
        program.kill()
        program.wait(timeout=30)
