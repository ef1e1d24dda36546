"""Builders shared by the consistency-model tests (tests/test_consistency*.py)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from support import C_DIR, LiveProcess, cc, shared_library, tool

TRIGGER_TIMEOUT = "10"


def prepared_library(out: Path, sources: list[Path | str], *flags: str) -> Path:
    """Build a library live-patchable and run ulp-prepare on it in place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    lib = shared_library(out, sources, *flags)
    prepared = tool("ulp-prepare", lib)
    assert prepared.returncode == 0, prepared.stderr
    return lib


def patched_program(root: Path, name: str, lib_source: Path, app_source: Path,
                    replacements: dict[str, str], fix_source: Path, *app_flags: str,
                    fix_name: str = "fix", app_name: str = "app") -> dict[str, Path]:
    """ROOT/lib/libNAME.so built from LIB_SOURCE and prepared, the program
    APP_NAME from APP_SOURCE linked to it, and the patch FIX_NAME.ulp of
    it: {"root", "lib", "app", "fix"}."""
    lib = prepared_library(root / "lib" / f"lib{name}.so", [lib_source])
    app = cc(root / app_name, [app_source], f"-L{lib.parent}", f"-l{name}", *app_flags)
    fix = patch(root, fix_name, lib, replacements, fix_source)
    return {"root": root, "lib": lib, "app": app, "fix": fix}


def cxx(out: Path, sources: list[Path | str], *flags: str) -> Path:
    """Compile C++ with g++; fail with g++'s message if it fails."""
    return cc(out, sources, *flags, compiler="g++")


def patch(root: Path, name: str, target: Path, replacements: dict[str, str],
          source: Path | str, *flags: str, requires: list[Path] = (),
          compiler=shared_library) -> Path:
    """Build the patch object NAME.so from SOURCE and pack NAME.ulp for TARGET."""
    if compiler is shared_library:
        so = shared_library(root / f"{name}.so", [source], *flags, patchable=False)
    else:
        so = compiler(root / f"{name}.so", [source], "-shared", "-fPIC", *flags)
    lines = [str(so), f"@{target}"]
    lines += [f"{old}:{new}" for old, new in replacements.items()]
    lines += [f"requires: {required}" for required in requires]
    desc = root / f"{name}.desc"
    desc.write_text("\n".join(lines) + "\n")
    packed = tool("ulp-packer", desc, "-o", root / f"{name}.ulp")
    assert packed.returncode == 0, packed.stderr
    return root / f"{name}.ulp"


def trigger(*args: str | Path) -> subprocess.CompletedProcess:
    return tool("ulp-trigger", "--timeout", TRIGGER_TIMEOUT, *map(str, args))


def apply(pid: int, patch_file: Path) -> None:
    result = trigger(pid, patch_file)
    assert result.returncode == 0, (result.returncode, result.stderr)


def revert(pid: int, patch_file: Path) -> None:
    result = trigger("--revert", pid, patch_file)
    assert result.returncode == 0, (result.returncode, result.stderr)


def counts(line: str) -> dict[str, str]:
    """The NAME=VALUE pairs of a line a test program printed."""
    return dict(re.findall(r"(\w+)=([\d,]+)", line))


def ask(app: LiveProcess, command: str) -> str:
    """Send one command and return the next line the program prints."""
    app.send(command + "\n")
    return app.next_line()


__all__ = ["C_DIR", "LiveProcess", "cc", "cxx", "shared_library", "tool", "prepared_library",
           "patch", "trigger", "apply", "revert", "ask", "counts"]
