"""The installed ulp-trigger is launcher/ulp-trigger.c: it raises its scheduling
priority before any interpreter starts, then runs ulp-trigger-py beside it
with the same arguments (a trigger started in a busy target's own session
otherwise waits seconds for its interpreter to start: docs/trigger.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from support import ROOT, cc

#: stands in for the Python command: prints its scheduling policy and arguments
FAKE_COMMAND = """#!/bin/sh
awk '/^policy/ {print "policy", $3}' /proc/$$/sched
printf 'arg %s\\n' "$@"
exit 7
"""


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """A bin directory as pip lays it out: the launcher and ulp-trigger-py."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cc(bin_dir / "ulp-trigger", [ROOT / "launcher" / "ulp-trigger.c"], "-Wextra", "-Werror")
    command = bin_dir / "ulp-trigger-py"
    command.write_text(FAKE_COMMAND)
    command.chmod(0o755)
    return bin_dir


def run(program: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(program), *args], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(os.geteuid() != 0, reason="SCHED_FIFO needs root or CAP_SYS_NICE")
def test_the_command_runs_with_a_real_time_policy_from_its_first_instruction(installed) -> None:
    done = run(installed / "ulp-trigger", "1234", "fix.ulp", "with space")
    assert done.returncode == 7, done.stderr
    assert done.stdout.splitlines() == ["policy 1", "arg 1234", "arg fix.ulp",
                                        "arg with space"]  # 1: SCHED_FIFO


def test_found_through_a_symlink_and_without_the_privilege(installed, tmp_path: Path) -> None:
    """Through a symbolic link elsewhere, and with a real-time policy refused
    (as a user without the privilege): the command still runs, as it is."""
    link = tmp_path / "elsewhere" / "ulp-trigger"
    link.parent.mkdir()
    link.symlink_to(installed / "ulp-trigger")
    unprivileged = shutil.which("setpriv") is not None and os.geteuid() == 0
    done = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-sys_nice",
                           str(link), "x"], capture_output=True, text=True, timeout=60) \
        if unprivileged else run(link, "x")
    assert done.returncode == 7, done.stderr
    policy, *args = done.stdout.splitlines()
    assert args == ["arg x"]
    if unprivileged:
        assert policy == "policy 0"  # SCHED_OTHER: refused, and the command ran all the same


def test_a_missing_command_is_one_line_and_exit_1(installed) -> None:
    (installed / "ulp-trigger-py").unlink()
    done = run(installed / "ulp-trigger", "--help")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("ulp-trigger: cannot run ") and done.stderr.count("\n") == 1
