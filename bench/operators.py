"""Operator timings of ulp-trigger (issue 11), as docs/trigger.md "Speed" gives them.

  .venv/bin/python bench/operators.py [--processes 200] [--rounds 9]

1. one idle process: the whole command (interpreter start included), wall
   and CPU (user + system) medians over interleaved applies and reverts,
   with `python -c pass` and `ulp-trigger --help` for scale;
2. N idle processes in one command: the first apply (fresh processes), a
   revert, a second apply;
3. a target with 64 busy and 64 blocked threads: apply and revert wall time
   and the application's pause (--verbose), the trigger started in a
   session of its own (setsid) and in the target's session.

Medians with their spread and the load average: the machine is shared.
Write .pyc files first (a run without PYTHONDONTWRITEBYTECODE does it).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "bench-operators"
BIN = Path(sys.executable).parent
TRIGGER = str(BIN / "ulp-trigger")
RUNTIME = ROOT / "runtime" / "libulp.so"
PATCHABLE = "-fpatchable-function-entry=16,14"


def sh(*command: str | Path, cwd: Path = BUILD) -> None:
    subprocess.run([str(part) for part in command], check=True, cwd=cwd, capture_output=True,
                   timeout=300)


def build() -> None:
    shutil.rmtree(BUILD, ignore_errors=True)
    (BUILD / "lib").mkdir(parents=True)
    tests_c, bench_c = ROOT / "tests" / "c", ROOT / "bench"
    sh("gcc", "-O2", "-g", "-shared", "-fPIC", PATCHABLE, "-o", "lib/libe2e.so",
       tests_c / "e2e_lib.c")
    sh(BIN / "ulp-prepare", "lib/libe2e.so")
    sh("gcc", "-O2", "-o", "opbench-app", tests_c / "e2e_app.c", "-Llib", "-le2e", "-ldl")
    sh("gcc", "-O2", "-shared", "-fPIC", "-o", "libe2e_fix.so", tests_c / "e2e_fix.c")
    (BUILD / "fix.desc").write_text("libe2e_fix.so\n@lib/libe2e.so\nlib_value:lib_value_v2\n")
    sh(BIN / "ulp-packer", "fix.desc", "-o", "fix.ulp")
    sh("gcc", "-O2", "-shared", "-fPIC", "-fno-optimize-sibling-calls", PATCHABLE,
       "-o", "lib/libbench.so", bench_c / "libbench.c")
    sh(BIN / "ulp-prepare", "lib/libbench.so")
    sh("gcc", "-O2", "-shared", "-fPIC", "-o", "libbench_fix.so", bench_c / "bench_fix.c",
       "-Llib", "-lbench")
    sh("gcc", "-O2", "-o", "threads", bench_c / "threads.c", "-Llib", "-lbench", "-pthread")
    (BUILD / "bench.desc").write_text("libbench_fix.so\n@lib/libbench.so\n"
                                      "bench_inc:bench_inc_v2\n")
    sh(BIN / "ulp-packer", "bench.desc", "-o", "bench.ulp")


def spawn(argv: list[str | Path]) -> subprocess.Popen:
    env = dict(os.environ, LD_PRELOAD=str(RUNTIME), LD_LIBRARY_PATH=str(BUILD / "lib"))
    proc = subprocess.Popen([str(arg) for arg in argv], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    return proc


def ready(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.stdin.close()
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=60)


def timed(argv: list[str], check: bool = True) -> tuple[float, float, str]:
    """Wall and CPU seconds of one command, and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=BUILD)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if check and done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return wall, cpu, done.stdout


def spread(values: list[float]) -> str:
    ms = sorted(value * 1000 for value in values)
    return f"median {statistics.median(ms):7.1f} ms [{ms[0]:.0f}-{ms[-1]:.0f}]"


def load() -> str:
    return "load {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def one_idle_process(rounds: int) -> None:
    [app] = procs = [spawn([BUILD / "opbench-app"])]
    ready(procs)
    runs: dict[str, tuple[list[float], list[float]]] = {}
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "ulp-trigger --help": [TRIGGER, "--help"],
        "apply one process": [TRIGGER, str(app.pid), "fix.ulp"],
        "revert one process": [TRIGGER, "--revert", str(app.pid), "fix.ulp"],
    }
    try:
        for _ in range(rounds):
            for name, argv in commands.items():
                wall, cpu, _ = timed(argv)
                walls, cpus = runs.setdefault(name, ([], []))
                walls.append(wall)
                cpus.append(cpu)
    finally:
        stop(procs)
    for name, (walls, cpus) in runs.items():
        print(f"  {name:22} wall {spread(walls)}  cpu {spread(cpus)}")
    print(f"  ({rounds} rounds, {load()})")


def many_processes(count: int) -> None:
    procs = [spawn([BUILD / "opbench-app"]) for _ in range(count)]
    try:
        ready(procs)
        pids = [str(proc.pid) for proc in procs]
        for name, extra in (("first apply", []), ("revert", ["--revert"]),
                            ("apply again", [])):
            wall, cpu, out = timed([TRIGGER, "-q", *extra, *pids, "fix.ulp"])
            print(f"  {count} processes, {name:12} wall {wall * 1000:7.0f} ms, "
                  f"cpu {cpu * 1000:.0f} ms ({load()})")
    finally:
        stop(procs)


def busy_target(rounds: int) -> None:
    for session, prefix in (("own session", ["setsid", "-w"]), ("target's session", [])):
        procs = [spawn([BUILD / "threads", "128"])]
        walls: list[float] = []
        pauses: list[float] = []
        try:
            ready(procs)
            for round_ in range(rounds):
                extra = ["--revert"] if round_ % 2 else []
                wall, _, out = timed([*prefix, TRIGGER, "-v", *extra, str(procs[0].pid),
                                      "bench.ulp"])
                walls.append(wall)
                pauses += [float(line.split("for ")[1].split()[0]) / 1000
                           for line in out.splitlines() if "threads stopped" in line]
        finally:
            stop(procs)
        print(f"  64 busy threads, trigger in its {session:17} wall {spread(walls)}; "
              f"pause {spread(pauses) if pauses else '-'} ({load()})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--busy-rounds", type=int, default=6)
    args = parser.parse_args()
    build()
    print("one idle process:")
    one_idle_process(args.rounds)
    print("many idle processes, one command:")
    many_processes(args.processes)
    print("a busy target:")
    busy_target(args.busy_rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
