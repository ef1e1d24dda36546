"""`make realworld`: ulp on zlib and SQLite as Debian ships them.

For each library: build it from the Debian source package with its usual
flags plus `ulp flags`, prepare it, check gdb's line table, run its own tests
unprepared, prepared and prepared with the runtime (identical results), apply
and revert a fix for a real past bug 100 times under a multi-threaded load,
and time its workload.  Results: build/realworld/results.json and
build/realworld/speedtest1.json.  docs/realworld.md explains each step.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

import rwlib

SUITES = {name: importlib.import_module(f"{name}_suite") for name in rwlib.LIBRARIES}


def build_parser() -> argparse.ArgumentParser:
    """REALWORLD_ARGS of `make realworld`."""
    parser = argparse.ArgumentParser(prog="realworld", description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(SUITES), action="append",
                        help="run only this library (repeatable)")
    parser.add_argument("--cycles", type=int, default=100, help="apply/revert cycles under load")
    parser.add_argument("--rounds", type=int, default=7,
                        help="interleaved timing rounds (0: no timing)")
    parser.add_argument("--threads", type=int, default=4, help="load threads (at least 4)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads < 4:
        parser.error("--threads must be at least 4")
    results_path = rwlib.RESULTS
    results: dict = {}
    if results_path.exists() and args.only:
        import json
        results = json.loads(results_path.read_text())
    try:
        for name in args.only or list(SUITES):
            start = time.monotonic()
            results[name] = SUITES[name].run(args.cycles, args.rounds, args.threads)
            results[name]["suite_seconds"] = round(time.monotonic() - start, 1)
            rwlib.write_json(results_path, results)
    except rwlib.Failure as error:
        print(f"realworld: {error}", file=sys.stderr)
        return 1
    rwlib.log(f"all checks passed; results in {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
