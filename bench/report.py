"""The rows of `make bench`: each figure with every target of its row and a
verdict that checks all of them; results.json, report.md and one plot."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

#: the nested-entry budget: the consistency model defines callbacks and
#: signal handlers that enter a library with a live activation as nested
NESTED_BUDGET = 10


@dataclass
class Check:
    what: str
    value: float | None
    limit: float
    unit: str

    @property
    def ok(self) -> bool | None:
        return None if self.value is None else self.value <= self.limit


@dataclass
class Row:
    key: str
    figure: str
    measured: str
    checks: list[Check]
    details: dict = field(default_factory=dict)
    missing: bool = False  # its input is missing or incomplete (a row without checks)

    @property
    def target(self) -> str:
        return ", ".join(f"{check.what} <= {check.limit:g}{check.unit}"
                         for check in self.checks) or "none"

    @property
    def verdict(self) -> str:
        if self.missing or any(check.ok is None for check in self.checks):
            return "not measured"
        if not self.checks:
            return "reported (no target)"
        missed = [check.what for check in self.checks if not check.ok]
        return "meets" if not missed else "MISSES " + ", ".join(missed)

    def as_json(self) -> dict:
        return {"key": self.key, "figure": self.figure, "measured": self.measured,
                "target": self.target, "verdict": self.verdict,
                "checks": [dict(asdict(check), ok=check.ok) for check in self.checks],
                "details": self.details}


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def show(stats: dict[str, float], fmt: str = "{:.2f}", unit: str = "") -> str:
    return (f"{fmt.format(stats['median'])}{unit} "
            f"[{fmt.format(stats['min'])}..{fmt.format(stats['max'])}]")


def paired(samples: list, variant: str, baseline: str, figure: str) -> dict[str, dict]:
    """Per round of every process: VARIANT against BASELINE measured back to
    back; the ratio and the difference (ns), with median and spread."""
    by_round: dict[tuple, dict[str, float]] = defaultdict(dict)
    for process, round_, name, fig, ns in samples:
        if fig == figure:
            by_round[(process, round_)][name] = ns
    pairs = [(ns[variant], ns[baseline]) for ns in by_round.values()
             if variant in ns and baseline in ns]
    return {"ratio": spread([a / b for a, b in pairs]),
            "delta_ns": spread([a - b for a, b in pairs]),
            variant: spread([a for a, _ in pairs]), baseline: spread([b for _, b in pairs])}


def call_row(key: str, label: str, counts: dict, samples: list, variant: str, baseline: str,
             figure: str, budget: float, ratio_limit: float | None = None) -> Row:
    """VARIANT against BASELINE on FIGURE: extra instructions per call (COUNTS:
    variant -> figure -> count) within BUDGET, and the time ratio within
    RATIO_LIMIT where the row has one."""
    ours, theirs = counts[variant][figure], counts[baseline][figure]
    time = paired(samples, variant, baseline, figure)
    checks = [Check("instructions", ours - theirs, budget, "")]
    if ratio_limit is not None:
        checks.append(Check("time ratio", time["ratio"]["median"], ratio_limit, "x"))
    return Row(key, label,
               f"{ours - theirs:+.2f} instructions ({ours:.2f} vs {theirs:.2f}); time "
               f"{show(time['delta_ns'], '{:+.2f}', ' ns')}, {show(time['ratio'], unit='x')}",
               checks, {"instructions": {variant: ours, baseline: theirs}, "time": time})


def call_rows(counts: dict, steps: dict, times: dict) -> list[Row]:
    rows = [call_row("absent", "prepared, runtime absent, vs a library built without the flag",
                     counts["absent"], times["absent"], "prep", "nat", "loop", 2, 1.10)]
    for figure, label, budget in (
            ("loop", "runtime loaded, no patch, loop calling from one frame", 10),
            ("depth", "runtime loaded, external entries from varying stack depths", 14),
            ("nested", "runtime loaded, nested entry (the library calls its own export "
                       "through its PLT)", 10),
            ("callback", "runtime loaded, callback (the library calls the application, "
                         "which calls the library)", NESTED_BUDGET),
            ("signal", "runtime loaded, signal-handler entry (handler calls the library "
                       "while it is active)", NESTED_BUDGET)):
        rows.append(call_row(figure, label, counts["loaded"], times["loaded"], "prep", "nat",
                             figure, budget))
    patched = steps["patched"]
    rows.append(call_row("patched", "patched call vs calling the replacement directly",
                         patched, times["patched"], "prep", "direct", "loop", 8, 1.3))
    fib_instr = patched["prep"]["fib"] / patched["nat"]["fib"]
    time = paired(times["patched"], "prep", "nat", "fib")
    rows.append(Row(
        "fib", "recursive fib(32), every call patched, vs native built without the flag",
        f"time {show(time['ratio'], unit='x')} ({time['prep']['median'] / 1e6:.1f} vs "
        f"{time['nat']['median'] / 1e6:.1f} ms); instructions {fib_instr:.2f}x "
        f"({patched['prep']['fib']:.1f} vs {patched['nat']['fib']:.1f} per call)",
        [Check("time ratio", time["ratio"]["median"], 1.3, "x")],
        {"instructions_per_call": {v: patched[v]["fib"] for v in ("prep", "nat")},
         "instruction_ratio": fib_instr, "time": time}))
    return rows


def prepare_row(nfuncs: int, cost: dict) -> Row:
    return Row("prepare", f"ulp-prepare, {nfuncs:,} exported functions",
               f"{cost['cpu_s']:.2f} s CPU, {cost['peak_rss_mb']:.0f} MB peak RSS",
               [Check("CPU", cost["cpu_s"], 2, " s"), Check("peak RSS", cost["peak_rss_mb"],
                                                             300, " MB")], cost)


def pause_row(threads: int, applies: list[dict[str, float]]) -> Row:
    pause = spread([apply["pause_ms"] for apply in applies])
    command = spread([apply["command_ms"] for apply in applies])
    return Row(f"pause{threads}", f"ulp-trigger apply, {threads} application threads held "
               "stopped (median of applies)",
               f"{show(pause, '{:.1f}', ' ms')}; whole command {show(command, '{:.0f}', ' ms')}",
               [Check("pause", pause["median"], 5, " ms")],
               {"pause_ms": pause, "command_ms": command, "applies": applies})


def speedtest_row(path: Path) -> Row:
    """build/realworld/speedtest1.json as make realworld writes it:
    ratio_median, min, max, runs, ratio ("variant / base"), instructions."""
    label = "SQLite speedtest1, prepared with the runtime vs unprepared (make realworld)"
    if not path.exists():
        return Row("speedtest1", label, "not measured: run make realworld",
                   [Check("time ratio", None, 1.02, "x")])
    data = json.loads(path.read_text())
    ratio = data.get("ratio_median")
    if not isinstance(ratio, int | float):
        return Row("speedtest1", label, f"no ratio_median in {path}",
                   [Check("time ratio", None, 1.02, "x")], data)
    measured = f"{ratio:.3f}x"
    if isinstance(data.get("min"), int | float) and isinstance(data.get("max"), int | float):
        measured += f" [{data['min']:.3f}..{data['max']:.3f}]"
    measured += f" over {data.get('runs', '?')} runs ({data.get('ratio', 'ratio')}"
    counted = data.get("instructions", {}).get("ratio") if isinstance(
        data.get("instructions"), dict) else None
    if isinstance(counted, dict):
        measured += "; instructions " + ", ".join(
            f"{name} {value:.3f}x" for name, value in counted.items()
            if isinstance(value, int | float))
    return Row("speedtest1", label, measured + f"; from {path.name})",
               [Check("time ratio", float(ratio), 1.02, "x")], data)


def realworld_rows(path: Path, libraries: tuple[str, ...]) -> list[Row]:
    """A row for each of LIBRARIES and any other library in PATH (results.json
    of make realworld, written by realworld/rwlib.py record_load and
    record_workload): its own workload with the runtime vs unprepared, and
    the trigger's wall time per apply and revert under load (issue 10 asks
    for them here; no target).  A library without complete results gets a
    row that says so: never silently left out."""
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        results = {}
    except (OSError, ValueError) as error:
        results = {name: f"unreadable {path}: {error}" for name in libraries}
    if not isinstance(results, dict):
        results = {name: f"not a JSON object: {path}" for name in libraries}
    rows = []
    for name in (*libraries, *(name for name in results if name not in libraries)):
        figure = f"{name}: its workload and the trigger (make realworld)"
        result = results.get(name)
        if result is None:
            rows.append(Row(f"realworld-{name}", figure, f"not measured: no results for {name} "
                            f"in {path}: run make realworld", [], missing=True))
            continue
        try:
            measured = _realworld_measured(result)
        except (KeyError, TypeError, ValueError) as error:
            rows.append(Row(f"realworld-{name}", figure, f"not measured: incomplete results "
                            f"for {name} in {path} ({type(error).__name__}: {error}): run "
                            "make realworld", [], result if isinstance(result, dict) else {},
                            missing=True))
            continue
        rows.append(Row(f"realworld-{name}", figure, measured, [], result))
    return rows


def _realworld_measured(result: dict) -> str:
    work, load = result["workload"], result["under_load"]
    apply, revert = load["apply"], load["revert"]
    return (f"{work['command']}: {work['ratio_median']:.3f}x "
            f"[{work['min']:.3f}..{work['max']:.3f}] with the runtime vs unprepared; "
            f"trigger apply {apply['median_s'] * 1000:.0f} ms, revert "
            f"{revert['median_s'] * 1000:.0f} ms (medians of {apply['runs']} and "
            f"{revert['runs']}, under load)")


def not_measured(rows: list[Row]) -> str | None:
    """One line naming the rows without a measurement, or None."""
    missing = [row.key for row in rows if row.verdict == "not measured"]
    if not missing:
        return None
    return (f"NOT MEASURED: {', '.join(missing)}; the realworld rows need make realworld's "
            "results (build/realworld, docs/realworld.md): run make realworld, then make bench")


def markdown(rows: list[Row], meta: dict) -> str:
    lines = ["# make bench", "",
             f"Commit {meta['commit']}, {meta['date']}; load average (1, 5, 15 min) "
             f"{', '.join(f'{x:.2f}' for x in meta['load_average']['start'])} at the start, "
             f"{', '.join(f'{x:.2f}' for x in meta['load_average']['end'])} at the end "
             f"({meta['cores']} cores).", "",
             "Instructions per call are the primary figure (callgrind, or the single-stepping "
             "counter where the process is patched), the difference of two run lengths. "
             "Times are medians [min..max] over "
             f"{meta['rounds']} interleaved rounds in each of {meta['processes']} processes per "
             "configuration, each round pairing the variant with its baseline; time "
             "verdicts use the median. docs/benchmarks.md explains the method.", "",
             "| figure | measured | target | verdict |", "| --- | --- | --- | --- |"]
    for row in rows:
        lines.append(f"| {row.figure} | {row.measured} | {row.target} | {row.verdict} |")
    note = not_measured(rows)
    if note:
        lines += ["", f"**{note}**"]
    lines += ["", f"Counter check: {meta['counter_check']}.", "",
              f"Same loop: {meta['same_loops']} (drv_* of driver.c, compared with capstone; "
              "call targets aside).", "", "![call figures](calls.png)", ""]
    return "\n".join(lines)


def plot(rows: list[Row], out: Path) -> None:
    """Instructions per call over the baseline, and time ratios, against targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    calls = [(row, check) for row in rows for check in row.checks
             if check.what == "instructions" and check.value is not None]
    ratios = [(row, check) for row in rows for check in row.checks
              if check.what == "time ratio" and check.value is not None]
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5), width_ratios=(3, 2))
    _bars(left, calls, 0.0, "extra instructions per call (symlog)")
    left.set_xscale("symlog", linthresh=10)
    _bars(right, ratios, 1.0, "time ratio (median, whiskers min..max, log)")
    right.set_xscale("log")
    spreads = [row.details.get("time", {}).get("ratio") for row, _ in ratios]
    values = [check.value for _, check in ratios]
    right.errorbar(values, range(len(ratios)), fmt="none", ecolor="grey", capsize=3,
                   xerr=[[v - (s or {}).get("min", v) for v, s in zip(values, spreads,
                                                                       strict=True)],
                         [(s or {}).get("max", v) - v for v, s in zip(values, spreads,
                                                                      strict=True)]])
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)


def _bars(axis, items: list[tuple[Row, Check]], base: float, title: str) -> None:
    """One bar per check from BASE to its value (green within the target,
    red over it), the target as a black tick, the value written beside."""
    positions = list(range(len(items)))
    values = [check.value for _, check in items]
    axis.barh(positions, [value - base for value in values], left=base, alpha=0.8,
              color=["tab:green" if check.ok else "tab:red" for _, check in items],
              label="measured")
    axis.scatter([check.limit for _, check in items], positions, marker="|", s=400,
                 color="black", zorder=3, label="target")
    for position, value in zip(positions, values, strict=True):
        axis.annotate(f"{value:.3g}", (value, position), xytext=(4, 4),
                      textcoords="offset points", fontsize=8)
    axis.set_yticks(positions, [row.key for row, _ in items])
    axis.invert_yaxis()
    axis.set_title(title)
    axis.legend(loc="lower right")
