"""What an apply imports: ulp-trigger's whole run is timed in milliseconds
(docs/trigger.md, "Speed"), so the modules only other paths need stay out
of it.  The real command, on a real process, with the interpreter's own
import log (PYTHONPROFILEIMPORTTIME)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from consistency_support import C_DIR, LiveProcess, patched_program

from support import BIN_DIR

#: never needed to apply or revert in one process
NOT_ON_THE_PATH = {
    "lief", "elftools", "capstone", "keystone", "jinja2", "ptrace",  # the other tools' libraries
    "json", "tempfile", "queue", "typing", "hashlib", "_hashlib",  # --json, packing, fleets
    "ulp.trigger.revertall", "ulp.elfinfo", "ulp.toolchain", "ulp.packer",
}


@pytest.fixture(scope="module")
def e2e(build_dir: Path) -> dict[str, Path]:
    return patched_program(build_dir / "trigger-imports", "e2e", C_DIR / "e2e_lib.c",
                           C_DIR / "e2e_app.c", {"lib_value": "lib_value_v2"},
                           C_DIR / "e2e_fix.c", "-ldl")


def imported(*args: str | Path) -> set[str]:
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1")
    done = subprocess.run([str(BIN_DIR / "ulp-trigger"), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return {match.group(1) for match in re.finditer(r"^import time:.*\|\s*(\S+)$",
                                                    done.stderr, flags=re.M)}


def test_an_apply_and_a_revert_import_only_what_they_use(e2e) -> None:
    app = LiveProcess([e2e["app"]], env={"LD_LIBRARY_PATH": str(e2e["root"] / "lib")})
    with app:
        assert app.next_line() == "ready"
        for modules in (imported(app.pid, e2e["fix"]), imported("--revert", app.pid, e2e["fix"])):
            assert "ulp.trigger.transition" in modules  # the log is read right
            assert {name for name in modules
                    if name in NOT_ON_THE_PATH or name.split(".")[0] in NOT_ON_THE_PATH
                    or name.rsplit(".", 1)[0] in NOT_ON_THE_PATH} == set()
