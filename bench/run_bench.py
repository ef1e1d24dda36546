"""make bench: the costs ulp adds, as ratios measured in one run.

Budgets (../shared/DESIGN.md): the tracker at most +1.5 ns per call with the
runtime loaded and close to nothing without it; a patched function at most
1.3x the cost of calling its replacement directly; recursive code with every
call patched at most 1.5x native; application threads held stopped at most
a few milliseconds during an apply.  Each configuration runs several times,
interleaved with the others, and keeps its best figure: the machine is
shared and noisy, so compare ratios, not absolute times.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "bench"
BUILD = ROOT / "build" / "bench"
BIN = Path(sys.executable).parent
RUNTIME = ROOT / "runtime" / "libulp.so"
PATCHABLE = "-fpatchable-function-entry=16,14"
REPEATS = 3


def sh(*command: str | Path) -> None:
    subprocess.run([str(part) for part in command], check=True, cwd=BUILD,
                   capture_output=True, timeout=300)


def build() -> None:
    shutil.rmtree(BUILD, ignore_errors=True)
    for sub in ("plain", "prepared"):
        (BUILD / sub).mkdir(parents=True)
    for name in ("libbench.c", "bench_fix.c", "callbench.c", "threads.c"):
        shutil.copy(HERE / name, BUILD / name)
    common = ["gcc", "-O2", "-fPIC", "-shared", "-fno-optimize-sibling-calls"]
    sh(*common, PATCHABLE, "-o", "plain/libbench.so", "libbench.c")
    shutil.copy(BUILD / "plain" / "libbench.so", BUILD / "prepared" / "libbench.so")
    sh(BIN / "ulp-prepare", "prepared/libbench.so")
    sh(*common, "-o", "libbench_fix.so", "bench_fix.c", "-Lprepared", "-lbench")
    sh("gcc", "-O2", "-o", "callbench", "callbench.c", "-Lplain", "-lbench", "-ldl")
    sh("gcc", "-O2", "-o", "threads", "threads.c", "-Lplain", "-lbench", "-pthread")
    (BUILD / "fix.desc").write_text("libbench_fix.so\n@prepared/libbench.so\n"
                                    "bench_inc:bench_inc_v2\nbench_fib:bench_fib_v2\n")
    sh(BIN / "ulp-packer", "fix.desc", "-o", "fix.ulp")


def measure(libdir: str, runtime: bool, patched: bool) -> dict[str, float]:
    env = dict(os.environ, LD_LIBRARY_PATH=str(BUILD / libdir))
    env.pop("LD_PRELOAD", None)
    if runtime:
        env["LD_PRELOAD"] = str(RUNTIME)
    argv = [str(BUILD / "callbench")]
    if patched:
        argv.append(str(BUILD / "libbench_fix.so"))
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        if patched:
            subprocess.run([BIN / "ulp-trigger", str(proc.pid), BUILD / "fix.ulp"], check=True,
                           capture_output=True, timeout=60)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        line = proc.stdout.readline().split()
    finally:
        proc.stdin.close()
        proc.wait(timeout=120)
    return {key: float(value) for key, value in (item.split("=") for item in line)}


def apply_pauses(threads: int, rounds: int = 6) -> list[float]:
    """Milliseconds the application threads were held, per apply or revert."""
    env = dict(os.environ, LD_LIBRARY_PATH=str(BUILD / "prepared"), LD_PRELOAD=str(RUNTIME))
    proc = subprocess.Popen([str(BUILD / "threads"), str(threads)], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    pauses = []
    try:
        assert proc.stdout.readline().strip() == "ready"
        for round_ in range(rounds):
            revert = ["--revert"] if round_ % 2 else []
            done = subprocess.run([BIN / "ulp-trigger", "--verbose", *revert, str(proc.pid),
                                   BUILD / "fix.ulp"], check=True, capture_output=True,
                                  text=True, timeout=120)
            for line in done.stdout.splitlines():
                if line.startswith("application threads stopped"):
                    pauses.append(float(line.split("for ")[1].split()[0]))
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    return pauses


CONFIGS = {
    "plain": ("plain", False, False),
    "prepared": ("prepared", False, False),
    "tracked": ("prepared", True, False),
    "patched": ("prepared", True, True),
}


def best_of_runs() -> dict[str, dict[str, float]]:
    best: dict[str, dict[str, float]] = {}
    for _ in range(REPEATS):
        for name, config in CONFIGS.items():
            result = measure(*config)
            previous = best.setdefault(name, result)
            for key, value in result.items():
                previous[key] = min(previous[key], value) if value else previous[key]
    return best


def report(best: dict[str, dict[str, float]]) -> list[tuple[str, str, bool]]:
    plain, prepared = best["plain"]["inc"], best["prepared"]["inc"]
    tracked, patched = best["tracked"]["inc"], best["patched"]["inc"]
    direct = best["patched"]["direct_inc"]
    fib_native, fib_patched = best["plain"]["fib"], best["patched"]["fib"]
    return [
        ("call through the PLT (unprepared library)", f"{plain:.2f} ns", True),
        ("prepared, runtime absent: extra per call",
         f"{prepared - plain:+.2f} ns ({prepared / plain:.2f}x)", prepared - plain <= 0.5),
        ("prepared, runtime loaded: extra per call (budget +1.5 ns)",
         f"{tracked - plain:+.2f} ns ({tracked / plain:.2f}x)", tracked - plain <= 1.5),
        ("patched call vs its replacement called directly (budget 1.3x)",
         f"{patched / direct:.2f}x ({patched:.2f} vs {direct:.2f} ns)", patched / direct <= 1.3),
        ("recursion, every call patched, vs native (budget 1.5x)",
         f"{fib_patched / fib_native:.2f}x", fib_patched / fib_native <= 1.5),
    ]


def pause_rows() -> list[tuple[str, str, bool]]:
    rows = []
    for threads in (8, 256):
        pauses = sorted(apply_pauses(threads))
        if not pauses:  # a revert writes no code: only applies stop the threads
            continue
        rows.append((f"threads held stopped during an apply, {threads} threads",
                     f"median {pauses[len(pauses) // 2]:.1f} ms, max {pauses[-1]:.1f} ms",
                     pauses[-1] <= 10.0))
    return rows


def main() -> int:
    build()
    rows = report(best_of_runs()) + pause_rows()
    width = max(len(label) for label, _, _ in rows)
    print(f"ulp benchmark (best of {REPEATS} interleaved runs)")
    for label, value, within in rows:
        print(f"  {label:<{width}}  {value:>22}  {'ok' if within else 'OVER BUDGET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
