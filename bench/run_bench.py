"""make bench: what ulp costs, every figure of issue 8 with its targets.

Instructions per call are the primary figure (callgrind; for patched
processes, which valgrind cannot host, the single-stepping counter
stepcount.c), each the difference of two run lengths; times are the
secondary figure, variants interleaved round after round in each process
and processes interleaved.  Writes build/bench/results.json, report.md and
calls.png.  docs/benchmarks.md describes the method.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # support: compiling and driving processes
sys.path.insert(0, str(ROOT / "realworld"))  # rwlib: where make realworld writes its results

import calls  # noqa: E402
import pauses  # noqa: E402
import prepare_cost  # noqa: E402
import report  # noqa: E402
import rwlib  # noqa: E402

OUT = ROOT / "build" / "bench"
PROCESSES = 3  # per process kind, interleaved
ROUNDS = 20  # per process, variants interleaved within each
APPLIES = {8: 7, 256: 7}
PREPARE_FUNCTIONS = 5000


def commit() -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                          capture_output=True, text=True, timeout=30)
    return done.stdout.strip() or "unknown"


def counter_check(counts: dict, steps: dict) -> dict:
    """The single-stepping counter against callgrind on the same code."""
    pairs = {variant: (steps["loaded"][variant]["loop"], counts["loaded"][variant]["loop"])
             for variant in ("nat", "prep")}
    worst = max(abs(a - b) for a, b in pairs.values())
    text = ", ".join(f"{variant} loop {a:.2f} stepped vs {b:.2f} callgrind"
                     for variant, (a, b) in pairs.items())
    return {"pairs": pairs, "worst_difference": worst,
            "text": f"{text} (runtime loaded; they differ by at most {worst:.2f})"}


def stage(name: str, started: float) -> None:
    print(f"  {name} ({time.monotonic() - started:.0f} s)", flush=True)


def measure_all() -> tuple[list[report.Row], dict]:
    started = time.monotonic()
    work = OUT / "work"
    calls.build(work)
    pauses.build(work)
    stage("built", started)
    counts = calls.callgrind_counts(work)
    stage("callgrind counts", started)
    steps = {kind: calls.step_counts(work, kind) for kind in ("loaded", "patched")}
    stage("single-stepped counts", started)
    times = calls.interleaved_times(work, PROCESSES, ROUNDS)
    stage("interleaved times", started)
    rows = report.call_rows(counts, steps, times)
    rows += [report.pause_row(threads, pauses.apply_pauses(work, threads, applies))
             for threads, applies in APPLIES.items()]
    stage("apply pauses", started)
    cost = prepare_cost.measure(PREPARE_FUNCTIONS, work / "prepare")
    rows.append(report.prepare_row(PREPARE_FUNCTIONS, cost))
    stage("ulp-prepare cost", started)
    rows += realworld_rows()
    raw = {"instructions_callgrind": counts, "instructions_stepped": steps,
           "times": {kind: [dict(zip(("process", "round", "variant", "figure", "ns"), sample,
                                     strict=True)) for sample in samples]
                     for kind, samples in times.items()},
           "counter_check": counter_check(counts, steps),
           "same_loops": calls.same_loops(work),
           "seconds": time.monotonic() - started}
    return rows, raw


def realworld_rows() -> list[report.Row]:
    """The rows of make realworld's results, as it writes them (rwlib)."""
    return [report.speedtest_row(rwlib.SPEEDTEST),
            *report.realworld_rows(rwlib.RESULTS, rwlib.LIBRARIES)]


def print_rows(rows: list[report.Row]) -> None:
    """Each row with its verdict, then a line naming what was not measured."""
    width = max(len(row.key) for row in rows)
    for row in rows:
        print(f"  {row.key:<{width}}  {row.measured}\n  {'':<{width}}  target {row.target}: "
              f"{row.verdict}")
    note = report.not_measured(rows)
    if note:
        print(f"make bench: {note}", flush=True)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"commit": commit(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cores": os.cpu_count(), "processes": PROCESSES, "rounds": ROUNDS,
            "load_average": {"start": os.getloadavg()}}
    print(f"make bench: load average {meta['load_average']['start'][0]:.2f} "
          f"({meta['cores']} cores)", flush=True)
    try:
        rows, raw = measure_all()
    except (RuntimeError, AssertionError, OSError, subprocess.SubprocessError) as error:
        print(f"run_bench: {str(error).splitlines()[0] if str(error) else error!r}",
              file=sys.stderr)
        return 1
    meta["load_average"]["end"] = os.getloadavg()
    meta["counter_check"] = raw["counter_check"]["text"]
    same = raw["same_loops"]
    meta["same_loops"] = ("every variant's loops execute the same instructions" if all(
        same.values()) else "LOOPS DIFFER between variants: " + ", ".join(
        figure for figure, alike in same.items() if not alike))
    (OUT / "results.json").write_text(json.dumps(
        {"meta": meta, "rows": [row.as_json() for row in rows], "raw": raw}, indent=1) + "\n")
    (OUT / "report.md").write_text(report.markdown(rows, meta))
    report.plot(rows, OUT / "calls.png")
    print_rows(rows)
    print(f"load average {' '.join(f'{x:.2f}' for x in meta['load_average']['end'])} at the "
          f"end; {OUT / 'report.md'}, results.json, calls.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
