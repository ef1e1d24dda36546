"""What ulp-prepare costs: CPU time and peak memory for a library of N functions.

``measure(nfuncs)`` builds a generated library of ``nfuncs`` exported
functions (``generate_library``), runs ``ulp-prepare -o`` on it as a user
would, and reads the child's CPU time (user + system) and peak resident set
size from ``wait4``: no timer around a shared machine's scheduling, and the
memory figure is the kernel's high-water mark of the whole process.

    python bench/prepare_speed.py [NFUNCS ...]   # default 5000; prints JSON

The budget (DESIGN.md, issue 8): 5,000 exported functions in at most 2 s of
CPU and 300 MB.  The suite asserts no timing; ``make bench`` reports it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PATCHABLE = "-fpatchable-function-entry=16,14"


def library_source(nfuncs: int) -> str:
    """C source of ``nfuncs`` small exported functions, each with its own body."""
    return "".join(f"int f{i}(int x) {{ return x * {i} + {i % 7}; }}\n"
                   for i in range(nfuncs))


def generate_library(directory: Path, nfuncs: int, *flags: str,
                     name: str | None = None) -> Path:
    """Build ``lib<name>.so`` with ``nfuncs`` patchable exported functions in ``directory``."""
    name = name or f"gen{nfuncs}"
    source = directory / f"{name}.c"
    source.write_text(library_source(nfuncs))
    library = directory / f"lib{name}.so"
    command = ["gcc", "-O2", "-g", "-shared", "-fPIC", PATCHABLE, *flags, "-o", str(library),
               str(source)]
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    return library


def run_prepare(library: Path, output: Path, command: list[str] | None = None,
                cwd: Path | None = None) -> dict:
    """Run ulp-prepare LIB -o OUT; its exit code, CPU seconds and peak RSS in MB.

    ``command`` replaces the installed ulp-prepare (to compare another checkout).
    """
    argv = [*(command or [str(BIN / "ulp-prepare")]), str(library), "-o", str(output)]
    with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          cwd=cwd) as child:
        stderr = child.stderr.read().decode(errors="replace")
        _pid, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    return {"exit": child.returncode, "stderr": stderr.strip(),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def measure(nfuncs: int) -> dict:
    """Prepare a generated library of ``nfuncs`` functions; cpu_s and peak_rss_mb."""
    with tempfile.TemporaryDirectory(prefix="ulp-prepare-speed-") as directory:
        library = generate_library(Path(directory), nfuncs)
        result = run_prepare(library, Path(directory) / "prepared.so")
    if result["exit"] != 0:
        raise RuntimeError(f"ulp-prepare failed on {nfuncs} functions: {result['stderr']}")
    return {"nfuncs": nfuncs, "cpu_s": result["cpu_s"], "peak_rss_mb": result["peak_rss_mb"]}


def main(argv: list[str]) -> int:
    counts = [int(arg) for arg in argv] or [5000]
    print(json.dumps([measure(count) for count in counts] if len(counts) > 1
                     else measure(counts[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
