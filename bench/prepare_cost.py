"""ulp-prepare's cost on a library of many exported functions: CPU seconds
and peak resident memory of the ulp-prepare process.

bench/prepare_speed.py, where present, owns this measurement
(``measure(nfuncs) -> {"cpu_s", "peak_rss_mb"}``); otherwise a generated
library is prepared here and the child's rusage is read."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from calls import HERE, TIMEOUT, checked

from support import BIN_DIR, shared_library


def measure(nfuncs: int, work: Path) -> dict[str, float | str]:
    if importlib.util.find_spec("prepare_speed") is not None and \
            (HERE / "prepare_speed.py").exists():
        import prepare_speed

        result = dict(prepare_speed.measure(nfuncs))
        result["source"] = "bench/prepare_speed.py"
        return result
    return _measure_here(nfuncs, work)


def _generated_library(nfuncs: int, work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    source = work / f"many{nfuncs}.c"
    source.write_text("".join(f"int f{i}(int x) {{ return x * {i + 3} + {i}; }}\n"
                              for i in range(nfuncs)))
    return shared_library(work / f"libmany{nfuncs}.so", [source], "-O1")


#: runs its arguments as a child and prints the child's CPU seconds and peak RSS (KiB)
RUSAGE_OF_CHILD = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
                   "usage = resource.getrusage(resource.RUSAGE_CHILDREN); "
                   "print(usage.ru_utime + usage.ru_stime, usage.ru_maxrss)")


def _measure_here(nfuncs: int, work: Path) -> dict[str, float | str]:
    library = _generated_library(nfuncs, work)
    out = work / f"libmany{nfuncs}.prepared.so"
    done = subprocess.run([sys.executable, "-c", RUSAGE_OF_CHILD, str(BIN_DIR / "ulp-prepare"),
                           str(library), "-o", str(out)],
                          capture_output=True, text=True, timeout=TIMEOUT)
    checked(done)
    cpu, rss_kib = done.stdout.split()[-2:]
    return {"cpu_s": float(cpu), "peak_rss_mb": int(rss_kib) / 1024,
            "source": f"bench/prepare_cost.py ({nfuncs} generated functions)"}
