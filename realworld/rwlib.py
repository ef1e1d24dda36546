"""What every real-world library run shares: Debian sources, the ulp tools,
the gdb line check, the three ways to run a test, the live trigger cycle and
interleaved timing.

Everything is cached under build/realworld: a step whose output exists (and
whose inputs are older) is skipped, so a second `make realworld` only runs
the tests.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "realworld"
WORK = ROOT / "build" / "realworld"
SOURCES = WORK / "sources"
#: the libraries of the suite, each with its module NAME_suite (run.py)
LIBRARIES = ("zlib", "sqlite")
#: what `make bench` reads (bench/report.py): every library's results, and
#: SQLite's speedtest1 ratio
RESULTS = WORK / "results.json"
SPEEDTEST = WORK / "speedtest1.json"
RUNTIME = ROOT / "runtime" / "libulp.so"
BIN = Path(sys.executable).parent
APT_SOURCES = Path("/etc/apt/sources.list.d/ulp-realworld-src.sources")
STEP_TIMEOUT = 1800.0


class Failure(Exception):
    """A check of the suite failed: printed as one line, exit status 1."""


def log(message: str) -> None:
    print(f"realworld: {message}", flush=True)


def sh(argv: list[str | Path], *, cwd: Path | None = None, env: dict[str, str] | None = None,
       timeout: float = STEP_TIMEOUT, stdin: bytes | None = None, check: bool = True,
       ) -> subprocess.CompletedProcess:
    """Run a command; its output is captured and shown only when it fails."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    result = subprocess.run([str(a) for a in argv], cwd=cwd, env=full_env, input=stdin,
                            capture_output=True, timeout=timeout)
    if check and result.returncode != 0:
        tail = (result.stdout + result.stderr).decode(errors="replace")[-3000:]
        raise Failure(f"{shlex.join(map(str, argv))} exited {result.returncode}\n{tail}")
    return result


def ulp_flags() -> list[str]:
    return sh([BIN / "ulp", "flags"]).stdout.decode().split()


def debian_flags() -> tuple[list[str], list[str], list[str]]:
    """CFLAGS, CPPFLAGS and LDFLAGS as dpkg-buildflags gives them to every
    Debian package build."""
    def get(name: str) -> list[str]:
        return sh(["dpkg-buildflags", "--get", name]).stdout.decode().split()
    return get("CFLAGS"), get("CPPFLAGS"), get("LDFLAGS")


# -- Debian source packages ------------------------------------------------

DEB_SRC = """\
# Written by ulp's `make realworld` (realworld/rwlib.py): the source
# packages of the distribution, for `apt-get source`.
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def enable_deb_src() -> None:
    """Add the deb-src entries apt-get source needs, once (then apt-get update)."""
    if APT_SOURCES.exists():
        return
    if os.geteuid() != 0:
        raise Failure(f"{APT_SOURCES} is missing and only root can write it (run as root)")
    log(f"enabling Debian source packages in {APT_SOURCES}")
    APT_SOURCES.write_text(DEB_SRC)
    sh(["apt-get", "update", "-qq"], timeout=600)


def debian_source(package: str, version: str) -> Path:
    """The unpacked source tree of PACKAGE at VERSION (Debian patches applied),
    downloaded once into build/realworld/sources."""
    upstream = version.split(":")[-1].rsplit("-", 1)[0]
    tree = SOURCES / f"{package}-{upstream}"
    if (tree / ".unpacked").exists():
        return tree
    SOURCES.mkdir(parents=True, exist_ok=True)
    dsc = SOURCES / f"{package}_{version.split(':')[-1]}.dsc"
    if not dsc.exists():
        enable_deb_src()
        log(f"apt-get source {package}={version}")
        sh(["apt-get", "source", "-qq", "--download-only", f"{package}={version}"],
           cwd=SOURCES, timeout=900)
    if tree.exists():
        sh(["rm", "-rf", tree])
    sh(["dpkg-source", "-x", dsc.name, tree.name], cwd=SOURCES)
    (tree / ".unpacked").touch()
    return tree


# -- ulp steps ----------------------------------------------------------------

def prepare(plain: Path, prepared: Path) -> None:
    """ulp-prepare PLAIN into PREPARED, every run: a second or two, and a
    cached copy could be of an older prepared layout than the runtime's."""
    prepared.parent.mkdir(parents=True, exist_ok=True)
    sh([BIN / "ulp-prepare", plain, "-o", prepared])


def fresh_tree(source: Path, tree: Path) -> None:
    """TREE: a new copy of the unpacked SOURCE, to build in."""
    if tree.exists():
        shutil.rmtree(tree)
    shutil.copytree(source, tree, symlinks=True)


def install(library: Path, work: Path, soname: str) -> tuple[Path, Path]:
    """WORK/plain/SONAME: the library as built; WORK/prepared/SONAME: the
    same file after ulp-prepare.  Returns both directories."""
    plain, prepared = work / "plain", work / "prepared"
    plain.mkdir(parents=True, exist_ok=True)
    if not (plain / soname).exists() or (plain / soname).stat().st_mtime < library.stat().st_mtime:
        sh(["cp", "-p", library, plain / soname])
    prepare(plain / soname, prepared / soname)
    return plain, prepared


def load_program(source: Path, out: Path, include: Path, libdir: Path, soname: str) -> Path:
    """A load program (built on realworld/load_common.h), linked against the
    library as built."""
    inputs = (source, HERE / "load_common.h")
    if not out.exists() or out.stat().st_mtime < max(path.stat().st_mtime for path in inputs):
        sh(["gcc", "-O2", "-g", "-Wall", "-Wextra", "-Werror", "-pthread", "-I", HERE,
            "-I", include, "-o", out, source, "-L", libdir, "-l:" + soname])
    return out


def gdb_lines(library: Path, functions: list[str]) -> list[str]:
    """`info line F` for each F, as gdb answers on the file alone."""
    argv: list[str | Path] = ["gdb", "-nx", "-batch"]
    for name in functions:
        argv += ["-ex", f"info line {name}"]
    out = sh([*argv, library], timeout=600).stdout.decode().splitlines()
    return [line for line in out if line.strip()]


def check_gdb_lines(plain: Path, prepared: Path, functions: list[str]) -> dict:
    # sorted: a static function inlined in several places has several
    # locations, which gdb lists in an order of its own that may differ
    before = sorted(gdb_lines(plain, functions))
    after = sorted(gdb_lines(prepared, functions))
    if before != after:
        diff = [f"- {b}\n+ {a}" for b, a in zip(before, after, strict=False) if a != b]
        diff += [f"- {b}" for b in before[len(after):]] + [f"+ {a}" for a in after[len(before):]]
        raise Failure("gdb info line differs after ulp-prepare:\n" + "\n".join(diff[:10]))
    missing = [line for line in before if "No line number" in line or "not defined" in line]
    if missing:
        raise Failure(f"gdb knows no line for: {missing[:5]}")
    return {"functions": len(functions), "identical": True}


def pack(desc: Path) -> Path:
    sh([BIN / "ulp-packer", desc])
    return desc.with_suffix(".ulp")


@dataclass
class Way:
    """One of the three ways a test runs: the library as built, prepared, or
    prepared with the ulp runtime preloaded."""

    name: str
    libdir: Path
    runtime: bool

    def env(self) -> dict[str, str]:
        env = {"LD_LIBRARY_PATH": str(self.libdir)}
        env["LD_PRELOAD"] = str(RUNTIME) if self.runtime else ""
        return env


def three_ways(plain_dir: Path, prepared_dir: Path) -> list[Way]:
    return [Way("unprepared", plain_dir, False), Way("prepared", prepared_dir, False),
            Way("prepared+runtime", prepared_dir, True)]


def check_loaded(way: Way, program: Path, library_name: str) -> None:
    """The dynamic loader picks the intended copy of the library (and the
    runtime) for PROGRAM when run this way."""
    env = way.env() | {"LD_TRACE_LOADED_OBJECTS": "1"}
    out = sh([program], env=env).stdout.decode()
    wanted = str(way.libdir / library_name)
    if wanted not in out or (str(RUNTIME) in out) != way.runtime:
        raise Failure(f"{program.name} run {way.name} does not load {wanted}:\n{out}")


def same_results(results: dict[str, object], what: str) -> None:
    values = list(results.values())
    if any(v != values[0] for v in values[1:]):
        raise Failure(f"{what}: results differ between the three ways: {results}")


def interleaved_ratio(argv: list[str | Path], base: Way, variant: Way, rounds: int,
                      cwd: Path | None = None) -> dict:
    """Wall time of ARGV run BASE's way and VARIANT's way, taking turns
    ROUNDS times (the machine's load drifts over both alike), and the ratio
    variant/base of each pair: median, min, max."""
    times: dict[str, list[float]] = {base.name: [], variant.name: []}
    for _ in range(rounds):
        for way in (base, variant):
            start = time.perf_counter()
            sh(argv, env=way.env(), cwd=cwd)
            times[way.name].append(time.perf_counter() - start)
    ratios = [v / b for v, b in zip(times[variant.name], times[base.name], strict=True)]
    return {"times": {name: spread(values) for name, values in times.items()},
            "ratio_median": statistics.median(ratios), "min": min(ratios), "max": max(ratios),
            "runs": rounds, "ratio": f"{variant.name} / {base.name}", "loadavg": loadavg()}


IREFS = re.compile(rb"Collected : (\d+)")


def instructions(argv: list[str | Path], ways: list[Way], cwd: Path | None = None) -> dict:
    """Instructions ARGV executes each way (valgrind's callgrind, user space,
    every thread and the runtime's start included): a count that does not
    depend on the machine's load."""
    counts = {}
    for way in ways:
        out = sh(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *argv],
                 env=way.env(), cwd=cwd, timeout=1200).stderr
        found = IREFS.search(out)
        if not found:
            raise Failure(f"callgrind printed no instruction count for {argv[0]}")
        counts[way.name] = int(found.group(1))
    return instruction_ratios(counts)


def instruction_ratios(counts: dict[str, int]) -> dict:
    """COUNTS (way -> instructions, the first way the base) with each way's ratio."""
    base = next(iter(counts.values()))
    return {"counts": counts, "ratio": {name: n / base for name, n in counts.items()}}


def spread(values: list[float], unit: str = "s") -> dict:
    return {f"median_{unit}": statistics.median(values), f"min_{unit}": min(values),
            f"max_{unit}": max(values), "runs": len(values), f"all_{unit}": values}


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


# -- the load test -------------------------------------------------------------

@dataclass
class LoadRun:
    """A load program, the fix applied and reverted CYCLES times under it."""

    cycles: int
    apply_s: list[float] = field(default_factory=list)
    revert_s: list[float] = field(default_factory=list)
    stopped_ms: list[float] = field(default_factory=list)
    status: str = ""
    trigger_failures: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)

    def report(self) -> dict:
        return {"cycles": self.cycles, "trigger_calls": len(self.apply_s) + len(self.revert_s),
                "trigger_failures": self.trigger_failures,
                "apply": spread(self.apply_s) if self.apply_s else None,
                "revert": spread(self.revert_s) if self.revert_s else None,
                # a revert writes no code and stops no thread
                "apply_threads_stopped_ms":
                    spread(self.stopped_ms, "ms") if self.stopped_ms else None,
                "status_after_first_apply": self.status,
                "program": self.stats}


STOPPED = re.compile(rb"application threads stopped: \d+, for ([\d.]+) ms")


def _reader(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def _next_line(lines: queue.Queue, timeout: float) -> str:
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        raise Failure(f"load program printed nothing for {timeout:.0f} s") from None
    if line is None:
        raise Failure("load program ended early")
    return line


def run_under_load(argv: list[str | Path], way: Way, patch: Path, cycles: int,
                   cwd: Path | None = None) -> LoadRun:
    """Start the load program (it prints `ready` once every thread runs and
    one JSON line of counters when its stdin closes), apply and revert PATCH
    CYCLES times with ulp-trigger, then collect the counters."""
    run = LoadRun(cycles)
    env = dict(os.environ) | way.env()
    proc = subprocess.Popen([str(a) for a in argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env, cwd=cwd)
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
    try:
        if _next_line(lines, 120) != "ready":
            raise Failure("load program did not say ready")
        for _ in range(cycles):
            for revert, times in ((False, run.apply_s), (True, run.revert_s)):
                argv_t = [BIN / "ulp-trigger", "--verbose", *(["--revert"] if revert else []),
                          proc.pid, patch]
                start = time.perf_counter()
                result = sh(argv_t, check=False, timeout=120)
                times.append(time.perf_counter() - start)
                stopped = STOPPED.search(result.stdout)
                if stopped:
                    run.stopped_ms.append(float(stopped.group(1)))
                if not run.status and result.returncode == 0:
                    run.status = sh([BIN / "ulp", "status", proc.pid]).stdout.decode()
                if result.returncode != 0:
                    run.trigger_failures.append(
                        f"{'revert' if revert else 'apply'} exited {result.returncode}: "
                        + result.stderr.decode(errors="replace").strip())
        proc.stdin.close()
        run.stats = json.loads(_next_line(lines, 120))
        proc.wait(timeout=60)
        run.stats["exit_status"] = proc.returncode
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    return run


def check_load(run: LoadRun, what: str) -> None:
    s = run.stats
    problems = []
    if run.trigger_failures:
        problems.append(f"{len(run.trigger_failures)} trigger calls failed: "
                        f"{run.trigger_failures[:3]}")
    if s.get("failures") or s.get("wrong") or s.get("exit_status"):
        problems.append(f"failed or wrong operations: {s}")
    # The probe runs thousands of times during one trigger call: it sees
    # (nearly) every apply and every revert.
    if not (s.get("old") and s.get("new") and s.get("switches", 0) >= run.cycles):
        problems.append(f"no evidence that both versions ran: {s}")
    if problems:
        raise Failure(f"{what} under load: " + "; ".join(problems))


# -- results: what make bench reads (bench/report.py realworld_rows) -------

def record_load(result: dict, name: str, argv: list[str | Path], way: Way, patch: Path,
                cycles: int, cwd: Path | None = None) -> LoadRun:
    """Apply and revert PATCH CYCLES times under the load program ARGV run
    WAY's way, check everything, and record it in RESULT["under_load"]."""
    load = run_under_load(argv, way, patch, cycles, cwd)
    check_load(load, name)
    result["under_load"] = load.report()
    log(f"{name}: {cycles} apply/revert cycles under load: {load.stats}")
    return load


def record_workload(result: dict, name: str, command: str, timing: dict) -> None:
    """TIMING (interleaved_ratio, maybe with instructions) of the library's
    workload COMMAND into RESULT["workload"]."""
    result["workload"] = {"command": command, **timing}
    log(f"{name}: workload ratio {timing['ratio_median']:.3f} ({command})")


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
