"""``pip install .`` from a clean clone installs the runtime with the tools,
and ``ulp runtime-path`` names it (issue 11, item 5).

The clone is the checkout's tracked files only (no libulp.so, no build
directory), built by pip as a user would (an isolated build, setup.py's
hook compiling the runtime with the Makefile's rule), installed into a
fresh virtual environment without the tools' dependencies, which
``ulp runtime-path`` does not use.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import ROOT
from ulp.trigger.elfscan import ElfScan

INSTALL_TIMEOUT = 300


def tracked_files(root: Path) -> list[str]:
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True,
                            timeout=60)
    if listed.returncode != 0 or not shutil.which("make"):
        pytest.skip("needs a git checkout and make")
    return [name for name in listed.stdout.decode().split("\0") if name]


def test_pip_install_from_a_clean_clone_installs_the_runtime(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    for name in tracked_files(ROOT):
        if (ROOT / name).is_file():  # a file deleted but not yet committed is not in a clone
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, clone / name)
    assert not (clone / "runtime" / "libulp.so").exists()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=INSTALL_TIMEOUT)
    installed = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin/python"),
                                "install", "-q", "--no-deps", str(clone)],
                               capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    assert installed.returncode == 0, installed.stderr

    printed = subprocess.run([str(venv / "bin" / "ulp"), "runtime-path"], capture_output=True,
                             text=True, timeout=60)
    assert printed.returncode == 0, printed.stderr
    runtime = Path(printed.stdout.rstrip("\n"))
    assert runtime.is_absolute() and runtime.is_relative_to(venv)
    with ElfScan(str(runtime)) as elf:
        assert elf.dynamic_symbol_value("ulp_mailbox") is not None
    maps = subprocess.run(["sh", "-c", f'LD_PRELOAD="$({venv / "bin" / "ulp"} runtime-path)" '
                           "exec cat /proc/self/maps"], capture_output=True, text=True,
                          timeout=60)
    assert maps.returncode == 0 and str(runtime) in maps.stdout, maps.stderr
