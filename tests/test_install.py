"""``pip install .`` from a clean clone installs the runtime with the tools,
and ``ulp runtime-path`` names it; the manual pages and bash completion go
where man and bash-completion look; ``ulp-trigger`` is the native launcher
(launcher/ulp-trigger.c) running ``ulp-trigger-py`` (issue 11, item 5).

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

    share = venv / "share"
    for command in ("ulp", "ulp-prepare", "ulp-packer", "ulp-trigger"):
        page = share / "man" / "man1" / f"{command}.1"
        assert page.read_text() == (ROOT / "man" / "man1" / f"{command}.1").read_text()
        completion = share / "bash-completion" / "completions" / command
        registered = subprocess.run(["bash", "-c", f"source {completion}; complete -p {command}"],
                                    capture_output=True, text=True, timeout=60)
        assert registered.returncode == 0 and command in registered.stdout, registered.stderr
    rendered = subprocess.run(["man", "-l", "-P", "cat", str(share / "man/man1/ulp.1")],
                              capture_output=True, text=True, timeout=60) \
        if shutil.which("man") else None
    assert rendered is None or "messages" in rendered.stdout

    trigger = venv / "bin" / "ulp-trigger"
    assert trigger.read_bytes()[:4] == b"\x7fELF" and (venv / "bin" / "ulp-trigger-py").exists()
    version = subprocess.run([str(trigger), "--version"], capture_output=True, text=True,
                             timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("ulp-trigger "), version.stderr
