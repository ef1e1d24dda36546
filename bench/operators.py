"""Operator timings of ulp-trigger (issue 11), as docs/trigger.md "Speed" gives them.

  .venv/bin/python bench/operators.py [--processes 200] [--rounds 9]
  .venv/bin/python bench/operators.py --fleet 4000 [--libpulp DIR]   (make bench-fleet)

1. one idle process: the whole command (interpreter start included), wall
   and CPU (user + system) medians over interleaved applies and reverts,
   with `python -c pass` and `ulp-trigger --help` for scale, and the
   instructions of one apply and one revert (callgrind: the machine is
   shared, instruction counts are not).  Measured on ulp as `pip install .`
   installs it (a wheel of this checkout in build/bench-operators/venv, its
   dependencies taken from .venv) and on the editable .venv of `make setup`,
   whose import hook costs ~50 million instructions at every start;
2. N idle processes in one command: the first apply (fresh processes), a
   revert, a second apply;
3. a target with 64 busy and 64 blocked threads: apply and revert wall time
   and the application's pause (--verbose), the trigger started in a
   session of its own (setsid) and in the target's session.

--fleet N instead: N + 1 idle processes forked as libpulp's tests/stress.c
forks them (bench/fleet.c), one `ulp-trigger fix.ulp` (no PID: every process
that has the runtime and the target) applying to all, then one reverting;
with --libpulp DIR (a built libpulp tree: ./bootstrap && ./configure &&
make), the same with libpulp's own stress program and `ulp trigger` in the
same run.  libpulp is not in any package registry this project can reach;
docs/benchmarks.md says how its figure was taken.

Medians with their spread and the load average: the machine is shared.
The .pyc files are written first (compileall), as an installed package has
them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "bench-operators"
BIN = Path(sys.executable).parent
TRIGGER = str(BIN / "ulp-trigger")
INSTALLED = BUILD / "venv"
INSTALLED_TRIGGER = str(INSTALLED / "bin" / "ulp-trigger")
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
    sh("gcc", "-O2", "-o", "fleet", bench_c / "fleet.c", "-Llib", "-le2e")
    sh(sys.executable, "-m", "compileall", "-q", *(ROOT / part for part in (
        "ulp", "trigger", "packer", "toolchain")))
    install()


def install() -> None:
    """This checkout as `pip install .` installs it, into INSTALLED; the
    dependencies (not needed by ulp-trigger, by the other commands) come from
    .venv through a .pth line, so that nothing is downloaded."""
    sh(sys.executable, "-m", "venv", "--without-pip", INSTALLED)
    sh(sys.executable, "-m", "pip", "--python", INSTALLED / "bin" / "python", "install", "-q",
       "--no-deps", ROOT)
    site = next(INSTALLED.glob("lib/python*/site-packages"))
    deps = next(Path(sys.executable).parent.parent.glob("lib/python*/site-packages"))
    (site / "ulp-bench-deps.pth").write_text(f"{deps}\n")
    sh(INSTALLED / "bin" / "python", "-m", "compileall", "-q", site / "ulp")


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


def timed(argv: list[str], check: bool = True, cwd: Path = BUILD) -> tuple[float, float, str]:
    """Wall and CPU seconds of one command, and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=1800, cwd=cwd)
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


def instructions(argv: list[str]) -> str:
    """Instructions one command executes (callgrind), or '-' without valgrind;
    through execve too (the launcher runs the interpreter)."""
    if not shutil.which("valgrind"):
        return "-"
    done = subprocess.run(["valgrind", "--tool=callgrind", "--trace-children=yes",
                           "--callgrind-out-file=/dev/null", *argv], capture_output=True,
                          text=True, timeout=600, cwd=BUILD)
    found = [int(line.split()[-1]) for line in done.stderr.splitlines() if "Collected :" in line]
    return f"{sum(found) / 1e6:.1f} M" if found and done.returncode == 0 else "-"


def one_idle_process(rounds: int) -> None:
    [app] = procs = [spawn([BUILD / "opbench-app"])]
    ready(procs)
    runs: dict[str, tuple[list[float], list[float]]] = {}
    commands = {
        "python -c pass": [str(INSTALLED / "bin" / "python"), "-c", "pass"],
        "ulp-trigger --help": [INSTALLED_TRIGGER, "--help"],
        "apply one process": [INSTALLED_TRIGGER, str(app.pid), "fix.ulp"],
        "revert one process": [INSTALLED_TRIGGER, "--revert", str(app.pid), "fix.ulp"],
        "editable: python": [sys.executable, "-c", "pass"],
        "editable: apply": [TRIGGER, str(app.pid), "fix.ulp"],
        "editable: revert": [TRIGGER, "--revert", str(app.pid), "fix.ulp"],
    }
    try:
        for _ in range(rounds):
            for name, argv in commands.items():
                wall, cpu, _ = timed(argv)
                walls, cpus = runs.setdefault(name, ([], []))
                walls.append(wall)
                cpus.append(cpu)
        counted = {name: instructions(commands[name]) for name in (
            "python -c pass", "apply one process", "revert one process", "editable: apply")}
    finally:
        stop(procs)
    for name, (walls, cpus) in runs.items():
        count = f"  instructions {counted[name]}" if name in counted else ""
        print(f"  {name:22} wall {spread(walls)}  cpu {spread(cpus)}{count}")
    print(f"  ({rounds} rounds, {load()}; the first four: installed with pip install .)")


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


def fleet(count: int, libpulp: Path | None, rounds: int) -> None:
    """N + 1 idle processes, one trigger call applying to all, one reverting;
    with libpulp, its fleet and trigger too, the two in turn over ROUNDS
    rounds, the order swapped every round: the first fleet after the machine
    was idle runs slower (3.89 s, then 3.63, 2.95, 2.5-2.7 s for the same
    ulp in four runs in a row, 2026-11-24), and libpulp's always came
    second."""
    ulp_walls: list[float] = []
    libpulp_walls: list[float] = []
    for number in range(rounds):
        runs = [lambda: ulp_walls.append(ulp_fleet(count))]
        if libpulp is not None:
            runs.append(lambda: libpulp_walls.append(libpulp_fleet(libpulp)))
        for run in runs if number % 2 == 0 else reversed(runs):
            run()
    if libpulp is None:
        print("  libpulp: not run (no --libpulp DIR: it is in no package registry this "
              "project reaches; docs/benchmarks.md)")
        return
    verdict = "faster" if statistics.median(ulp_walls) < statistics.median(libpulp_walls) \
        else "NOT faster"
    print(f"  apply to every process, {rounds} round(s), order swapped each round: "
          f"ulp {spread(ulp_walls)}, libpulp {spread(libpulp_walls)}: ulp is {verdict} by "
          f"median (faster in {sum(u < p for u, p in zip(ulp_walls, libpulp_walls, strict=True))}"
          f" of {rounds} rounds)")


def ulp_fleet(count: int) -> float:
    """The wall time of ulp's apply to the fleet."""
    return run_fleet("ulp", [BUILD / "fleet", str(count)], count,
                     [[INSTALLED_TRIGGER, "fix.ulp"], [INSTALLED_TRIGGER, "--revert", "fix.ulp"]],
                     BUILD, spawn)


def libpulp_fleet(libpulp: Path) -> float:
    """The wall time of libpulp's trigger on its own 4,001-process stress test."""
    tests = libpulp / "tests"
    env = dict(os.environ, LD_PRELOAD=str(libpulp / "lib" / ".libs" / "libpulp.so"),
               LD_LIBRARY_PATH=str(tests / ".libs"))
    ulp = str(libpulp / "tools" / "ulp")
    return run_fleet("libpulp", [tests / ".libs" / "stress"], 4000,
                     [[ulp, "trigger", ".libs/libstress_livepatch1.so"]], tests,
                     lambda argv: on_terminal(argv, env, tests))


def on_terminal(argv: list, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """libpulp's stress program prints with stdio's default buffering, which
    holds its one line back on a pipe: it gets a terminal (as its own test
    suite gives it, through pexpect)."""
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen([str(arg) for arg in argv], env=env, stdin=subprocess.PIPE,
                            stdout=follower, cwd=cwd)
    os.close(follower)
    proc.stdout = open(leader, encoding="utf-8", errors="replace")  # noqa: SIM115
    return proc


SETTLE = 3.0  # seconds between a fleet's "ready" and the first command


def run_fleet(name: str, argv: list, count: int, commands: list[list[str]], cwd: Path,
              start) -> float:
    """Start the fleet, run COMMANDS on it, stop it: the first command's wall time."""
    walls = []
    started = time.perf_counter()
    proc = start(argv)
    # the fleet's children outlive a parent that is killed: they are killed too
    alarm = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(
        TimeoutError(f"{name}: the fleet did not start within 600 s")))
    signal.alarm(600)
    try:
        line = proc.stdout.readline().strip()
        signal.alarm(0)
        assert line in (f"ready {count}", "Processes launched"), line
        print(f"  {name}: {count} + 1 processes started in "
              f"{time.perf_counter() - started:.1f} s ({load()}); left {SETTLE:g} s to settle")
        # a fleet is patched long after it started: ulp's agents tick about
        # ten times in their first second (binding the libraries' own calls,
        # runtime/agent.c), CPU that belongs to starting a process, not to
        # patching it; the same wait for libpulp's fleet
        time.sleep(SETTLE)
        for command in commands:
            wall, cpu, out = timed(command, cwd=cwd)
            walls.append(wall)
            shown = " ".join([Path(command[0]).name, *command[1:]])
            summary = [line for line in out.splitlines() if "process(es):" in line]
            print(f"  {name}: {shown}: wall {wall:.2f} s, cpu {cpu:.2f} s ({load()})"
                  + (f"\n    {summary[-1].strip()}" if summary else ""))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, alarm)
        children = children_of(proc.pid)
        stop([proc])
        for pid, started_at in children.items():  # still there: left behind
            if (process_start(pid) or (0, None))[1] == started_at:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    return walls[0]


def process_start(pid: int) -> tuple[int, int] | None:
    """(parent, start time) of ``pid``, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stream:
            fields = stream.read().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def children_of(pid: int) -> dict[int, int]:
    """The processes whose parent is ``pid`` now, with their start times."""
    found = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        stat = process_start(int(entry))
        if stat is not None and stat[0] == pid:
            found[int(entry)] = stat[1]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--busy-rounds", type=int, default=6)
    parser.add_argument("--fleet", type=int, metavar="N",
                        help="only the fleet benchmark: N + 1 idle processes (make bench-fleet)")
    parser.add_argument("--libpulp", type=Path, metavar="DIR",
                        help="with --fleet: a built libpulp tree to compare with")
    parser.add_argument("--fleet-rounds", type=int, default=4, metavar="R",
                        help="with --fleet: rounds of both fleets, in turn (default: 4)")
    args = parser.parse_args()
    build()
    if args.fleet:
        print(f"a fleet of idle processes, one command ({time.strftime('%Y-%m-%d %H:%M')}):")
        fleet(args.fleet, args.libpulp, args.fleet_rounds)
        return 0
    print("one idle process:")
    one_idle_process(args.rounds)
    print("many idle processes, one command:")
    many_processes(args.processes)
    print("a busy target:")
    busy_target(args.busy_rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
