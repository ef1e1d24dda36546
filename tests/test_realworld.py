"""make test's slice of `make realworld` (issue 10), and the contract between
its results and `make bench`'s report.

The slice runs realworld/rwlib.py, the code that makes zlib and SQLite
live-patchable, on a small library built here (tests/c/rw_lib.c) instead of
a Debian source package: built with `ulp flags`, ulp-prepare'd, gdb's line
table compared, the right copy loaded each of the three ways, a fix packed
and applied and reverted under a multi-threaded load program (on
realworld/load_common.h) with every result checked, the workload timed, the
results written as make realworld writes them.  bench/report.py must turn
those results into its realworld rows, and say "not measured" for a library
whose results are missing, incomplete or misnamed.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import doccommands
import pytest

from support import C_DIR, ROOT, LiveProcess, tool

sys.path.insert(0, str(ROOT / "realworld"))
sys.path.insert(0, str(ROOT / "bench"))

import report  # noqa: E402
import rwlib  # noqa: E402
import sqlite_suite  # noqa: E402

SONAME, REAL = "librw.so.1", "librw.so.1.0"
CYCLES = 3  # apply/revert cycles under load (make realworld: 100)
ROUNDS = 2  # interleaved timing rounds (make realworld: 7)


@pytest.fixture(scope="module")
def slice_run(build_dir: Path) -> dict:
    """Every step of a realworld library's run, on rw_lib.c; returns
    {"results": path of results.json, "work": directory, "result": the record}."""
    work = build_dir / "realworld"
    (work / "build").mkdir(parents=True)
    library = work / "build" / REAL
    rwlib.sh(["gcc", "-O2", "-g", "-fPIC", "-shared", f"-Wl,-soname,{SONAME}", "-Wall",
              "-Werror", *rwlib.ulp_flags(), "-o", library, C_DIR / "rw_lib.c"])
    plain, prepared = rwlib.install(library, work, SONAME)
    result: dict = {"package": "tests/c/rw_lib.c"}
    result["gdb_info_line"] = rwlib.check_gdb_lines(plain / SONAME, prepared / SONAME,
                                                    ["rw_checksum", "rw_accepts", "mix"])
    ways = rwlib.three_ways(plain, prepared)
    program = rwlib.load_program(C_DIR / "rw_load.c", work / "rw_load", C_DIR, plain, SONAME)
    for way in ways:
        rwlib.check_loaded(way, program, SONAME)
        rwlib.sh([program, "--work", "1000"], env=way.env())
    fix = work / "rw_fix.so"
    rwlib.sh(["gcc", "-O2", "-fPIC", "-shared", "-Wall", "-Werror", "-o", fix,
              C_DIR / "rw_fix.c", "-L", prepared, "-l:" + SONAME])
    desc = work / "rw_fix.desc"
    desc.write_text(f"{fix.name}\n@{prepared / SONAME}\n"
                    "!rw-1 rw_accepts() accepts a length equal to the limit\n"
                    "rw_accepts:rw_accepts_fixed\n")
    patch = rwlib.pack(desc)
    rwlib.record_load(result, "rw", [program, 4], ways[2], patch, CYCLES)
    timing = rwlib.interleaved_ratio([program, "--work", "20000"], ways[0], ways[2], ROUNDS)
    rwlib.record_workload(result, "rw", "rw_load --work 20000", timing)
    results = work / "results.json"
    rwlib.write_json(results, {"rw": result})
    return {"results": results, "work": work, "result": result, "patch": patch,
            "program": program, "way": ways[2]}


def test_slice_of_make_realworld_passes_every_check(slice_run: dict) -> None:
    """The run raised no rwlib.Failure; what it recorded shows each point:
    identical line tables, every trigger call exit 0, no failed or wrong
    operation, both versions seen by the probe at every switch."""
    result = slice_run["result"]
    assert result["gdb_info_line"] == {"functions": 3, "identical": True}
    load = result["under_load"]
    assert load["trigger_calls"] == 2 * CYCLES and load["trigger_failures"] == []
    stats = load["program"]
    assert stats["threads"] == 4 and stats["exit_status"] == 0
    assert stats["failures"] == 0 and stats["wrong"] == 0 and stats["ops"] > 0
    assert stats["old"] > 0 and stats["new"] > 0 and stats["switches"] >= CYCLES
    assert "rw-1" in load["status_after_first_apply"]
    assert result["workload"]["runs"] == ROUNDS


def test_bench_reports_what_make_realworld_wrote(slice_run: dict) -> None:
    """Point 5 of issue 10: results.json as rwlib writes it becomes a row with
    the workload ratio and the trigger's apply and revert times."""
    result = json.loads(slice_run["results"].read_text())["rw"]
    rows = report.realworld_rows(slice_run["results"], ("rw",))
    assert [row.key for row in rows] == ["realworld-rw"]
    row = rows[0]
    assert row.verdict == "reported (no target)" and report.not_measured(rows) is None
    work, load = result["workload"], result["under_load"]
    assert row.measured.startswith(f"rw_load --work 20000: {work['ratio_median']:.3f}x "
                                   f"[{work['min']:.3f}..{work['max']:.3f}]")
    assert f"apply {load['apply']['median_s'] * 1000:.0f} ms" in row.measured
    assert f"revert {load['revert']['median_s'] * 1000:.0f} ms" in row.measured
    assert f"medians of {CYCLES} and {CYCLES}" in row.measured


def dropped(result: dict, *path: str) -> dict:
    changed = copy.deepcopy(result)
    parent = changed
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    return changed


def renamed(result: dict, *path: str) -> dict:
    changed = copy.deepcopy(result)
    parent = changed
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1] + "_renamed"] = parent.pop(path[-1])
    return changed


@pytest.mark.parametrize("change", [
    ("dropped", "workload"), ("dropped", "under_load"), ("renamed", "workload", "ratio_median"),
    ("renamed", "workload", "command"), ("renamed", "under_load", "apply", "median_s"),
    ("renamed", "under_load", "revert"), ("dropped", "under_load", "apply", "runs")])
def test_bench_says_not_measured_for_incomplete_results(slice_run: dict, tmp_path: Path,
                                                        change: tuple[str, ...]) -> None:
    """A figure dropped or misnamed in a library's results gives a row
    "not measured" that names the library, never a silent gap."""
    result = json.loads(slice_run["results"].read_text())["rw"]
    edit = {"dropped": dropped, "renamed": renamed}[change[0]]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"rw": edit(result, *change[1:])}))
    rows = report.realworld_rows(path, ("rw",))
    assert [(row.key, row.verdict) for row in rows] == [("realworld-rw", "not measured")]
    assert "incomplete results for rw" in rows[0].measured
    assert "realworld-rw" in report.not_measured(rows)


def test_bench_says_not_measured_for_a_library_without_results(slice_run: dict,
                                                               tmp_path: Path) -> None:
    """Results of another library only (make realworld --only, or a library
    renamed): every expected library still has its row, "not measured"."""
    result = json.loads(slice_run["results"].read_text())["rw"]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"zlib": result}))
    rows = report.realworld_rows(path, rwlib.LIBRARIES)
    verdicts = {row.key: row.verdict for row in rows}
    assert verdicts == {"realworld-zlib": "reported (no target)",
                        "realworld-sqlite": "not measured"}
    assert "no results for sqlite" in rows[1].measured


def test_make_bench_says_clearly_when_realworld_results_are_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """No build/realworld at all: make bench lists every realworld row as not
    measured, and says in one line (also in report.md) to run make realworld."""
    import run_bench

    monkeypatch.setattr(rwlib, "RESULTS", tmp_path / "results.json")
    monkeypatch.setattr(rwlib, "SPEEDTEST", tmp_path / "speedtest1.json")
    rows = run_bench.realworld_rows()
    assert {row.key: row.verdict for row in rows} == {
        "speedtest1": "not measured", "realworld-zlib": "not measured",
        "realworld-sqlite": "not measured"}
    run_bench.print_rows(rows)
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith("make bench: NOT MEASURED: speedtest1, realworld-zlib, "
                           "realworld-sqlite") and "run make realworld" in last, last
    meta = {"commit": "x", "date": "d", "load_average": {"start": (0, 0, 0), "end": (0, 0, 0)},
            "cores": 2, "rounds": 1, "processes": 1, "counter_check": "c", "same_loops": "s"}
    assert report.not_measured(rows) in report.markdown(rows, meta)


def test_bench_reads_the_speedtest_summary_sqlite_suite_writes(slice_run: dict,
                                                               tmp_path: Path) -> None:
    """speedtest1.json as sqlite_suite writes it (from a workload record of
    rwlib, with instruction ratios as rwlib computes them) gives the
    speedtest1 row its ratio and instruction ratios."""
    workload = dict(slice_run["result"]["workload"])
    workload["instructions"] = rwlib.instruction_ratios(
        {"unprepared": 1000, "prepared": 990, "prepared+runtime": 1010})
    path = tmp_path / "speedtest1.json"
    rwlib.write_json(path, sqlite_suite.speedtest_summary(workload))
    row = report.speedtest_row(path)
    assert row.verdict != "not measured", row.measured
    assert row.measured.startswith(f"{workload['ratio_median']:.3f}x")
    assert "instructions prepared 0.990x, prepared+runtime 1.010x, unprepared 1.000x" \
        in row.measured


def test_the_slice_ships_its_fix_with_the_commands_of_the_how_to(slice_run: dict) -> None:
    """docs/realworld.md's last steps, as the doc shows them (ulp-trigger PID
    PATCH, ulp status PID, ulp-trigger --revert PID PATCH), on the slice's
    load program: each exits 0, and status names the fix by its label."""
    commands = doccommands.section_commands(ROOT / "docs" / "realworld.md",
                                            "How to: ship a fix for it")
    assert [words[0] for words in commands] == ["ulp-packer", "ulp-trigger", "ulp",
                                                "ulp-trigger"]
    patch = slice_run["patch"]
    way = slice_run["way"]
    with LiveProcess([slice_run["program"], "4"], env=way.env(), preload_runtime=True) as app:
        assert app.next_line() == "ready"
        for words in commands[1:]:
            argv = [str(patch) if word.endswith(".ulp") else str(app.pid) if word == "PID"
                    else word for word in words]
            done = tool(argv[0], *argv[1:])
            assert done.returncode == 0, (argv, done.stderr)
            if argv[:2] == ["ulp", "status"]:
                assert "rw-1" in done.stdout, done.stdout
        app.proc.stdin.close()
        stats = json.loads(app.next_line())
        assert app.proc.wait(timeout=30) == 0, stats
    assert stats["failures"] == stats["wrong"] == 0 and stats["old"] and stats["new"], stats
