"""ulp-trigger: apply or revert packed patches in running processes.

main() first raises its own scheduling priority (ulp.trigger.priority): on
a machine whose cores the target's threads keep busy, every millisecond of
CPU at normal priority costs tens of milliseconds of wall time.

Everything an apply uses is imported here, not on first use: a program may
import this module, drop its privileges and then call main() (the tests run
the trigger as another user that way), and then the standard library may no
longer be readable.  What makes the import cheap is what is left out
(pyelftools, python-ptrace's binding, tempfile: docs/trigger.md, "Speed").
"""

from __future__ import annotations

import argparse
import locale  # noqa: F401  argparse needs these two on first use (gettext, the help width)
import os
import re
import shutil  # noqa: F401
from collections import Counter
from collections.abc import Callable

from ulp.console import ArgumentParser, Console, add_output_options, count, run_command, seconds
from ulp.errors import ExitCode, UlpError
from ulp.process import thread_group
from ulp.trigger import batch, patchset, select
from ulp.trigger.priority import scheduled_first
from ulp.trigger.tracee import block_sigchld, release_orphans

PROG = "ulp-trigger"

DESCRIPTION = """\
Apply PATCH (a file written by ulp-packer, or a directory of them) to running
processes, or revert it with --revert.  A reverse patch file (NAME.rev.ulp)
reverts without --revert.  A process must run with the ulp runtime preloaded
(LD_PRELOAD=libulp.so) and have the patch's target library loaded.

Which processes: the PIDs given before PATCH and the processes -p selects;
with neither, every process that runs the ulp runtime and the patch's target
library.  The last argument is always PATCH, every one before it a PID:
  ulp-trigger fix.ulp                 every process that has the target
  ulp-trigger 1234 fix.ulp            process 1234 only
  ulp-trigger 12 34 fix.ulp           processes 12 and 34
  ulp-trigger -p 'nginx*' fix.ulp     processes named nginx...
  ulp-trigger patches/                every patch of the directory, in
                                      dependency order, skipping applied ones
  ulp-trigger --revert-all libfoo.so  every applied patch of libfoo.so (a file
                                      name, wildcards allowed, or a path), in
                                      every process that has it, newest first
  ulp-trigger --revert-all libfoo.so 1234   the same in process 1234 only
Processes are handled in parallel (--jobs).  With more than one process, a
line per process, then a summary: applied, already applied, skipped and why,
failed and why.

Threads switch to the new code one by one, each at its next call into the
library from outside it.  Every refusal leaves the process as it was.
"""

EPILOG = """\
exit codes: 0 done, 2 usage, 3 file missing, 4 malformed patch file, 6 no such
process, 7 permission denied, 8 no ulp runtime in the process, 9 target
library not loaded, 10 wrong target library, 11 patch object
missing/changed/incomplete, 12 already applied, 13 not applied, 14
dependency, 15 busy or timed out (retryable), 16 the process exited, 17 a
file another user could change.  With several processes, the most severe
outcome's code (docs/exit-codes.md gives the order).  See docs/trigger.md.
"""



def default_jobs() -> int:
    """One worker process per CPU this process may run on, at least 2
    (ulp.trigger.workers).

    Each worker is a process of its own with SCHED_FIFO (priority.py); the
    CPUs are shared with the targets' agents, which do the loading.
    Measured on 2 cores, 2,001 idle processes: 2, 3 and 4 workers within the
    noise of each other (2.6-2.9 s an apply), 8 workers more CPU for no
    gain.  Worker threads before them: 1,001 processes took 7.5 s with 16
    threads, 3.1 s with 2, every hand-over of the interpreter lock a
    context switch.
    """
    return max(2, len(os.sched_getaffinity(0)))


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arguments", nargs="*", metavar="[PID ...] PATCH",
                        help="the processes (optional), then the patch file or directory "
                             "(no PATCH with --revert-all)")
    parser.add_argument("-p", "--process", action="append", default=[], metavar="PID|NAME",
                        help="also work on this process, or on the processes with this "
                             "name (shell wildcards: 'app*'); may be repeated")
    parser.add_argument("--revert", action="store_true", help="revert PATCH instead")
    parser.add_argument("--revert-all", metavar="LIB",
                        help="revert every applied patch of the library LIB (its file name, "
                             "shell wildcards allowed, or its path), newest first, in the "
                             "processes given, or in every process that has it")
    parser.add_argument("--timeout", type=seconds, default=10.0, metavar="SECONDS",
                        help="bound for every wait on a process (default: 10)")
    parser.add_argument("--retries", type=count, default=0, metavar="N",
                        help="retry N times when a process is busy (exit code 15)")
    parser.add_argument("--trust-stacks", action="store_true",
                        help="do not search the target's memory for calls waiting on stacks "
                             "the runtime was not told of (coroutines): for a program that "
                             "runs library code only on its threads' stacks, makecontext's "
                             "and noted ones, whose memory is too large to search")
    parser.add_argument("-j", "--jobs", type=count, default=None, metavar="N",
                        help="processes handled at once, each by a worker process of its own "
                             "(default: one per CPU this command may use, at least 2)")
    add_output_options(parser, json=True)
    return parser


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    if args.revert_all is not None:
        if args.revert:
            parser.error("--revert-all and --revert exclude each other")
        if not args.revert_all:
            parser.error("--revert-all needs a library")
        pids, args.patch = args.arguments, None
    elif not args.arguments:
        parser.error("the following arguments are required: PATCH")
    else:
        *pids, args.patch = args.arguments
    try:
        args.pids = [_pid(text) for text in pids]
    except ValueError as error:
        parser.error(str(error) if args.patch is not None
                     else str(error).replace("only PATCH may follow the PIDs",
                                             "--revert-all takes PIDs, no PATCH"))
    names = []
    for value in args.process:
        if value.isdigit():
            args.pids.append(_pid(value))
        elif value:
            names.append(value)
        else:
            parser.error("-p needs a PID or a process name")
    args.names = names
    if args.jobs is None:
        args.jobs = default_jobs()
    if args.jobs == 0:
        parser.error("--jobs must be at least 1")
    return args


def _pid(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise ValueError(f"not a process ID: {text!r} (only PATCH may follow the PIDs)")
    return int(text)


def run(argv: list[str] | None) -> int:
    args = parse_arguments(argv)
    if args.trust_stacks:
        from ulp.trigger import transition

        transition.trust_stacks = True
    if args.revert_all is not None:
        block_sigchld()
        release_orphans()
        from ulp.trigger import revertall

        console = Console(PROG, quiet=args.quiet or args.json, verbose=args.verbose)
        return _run_many(args, console, True, _revert_all_work(args, revertall))
    steps = patchset.load(args.patch, args.revert)
    block_sigchld()
    release_orphans()
    console = Console(PROG, quiet=args.quiet or args.json, verbose=args.verbose)
    single = len(args.pids) == 1 and not args.names and len(steps) == 1
    if single:
        return _run_single(args, steps, console)
    return _run_many(args, console, args.revert or steps[0].reverting, _apply_work(args, steps))


def _run_single(args: argparse.Namespace, steps: list[batch.Step], console: Console) -> int:
    """``ulp-trigger PID PATCH``: one line, the error as the exit code."""
    outcome = batch.run_one(args.pids[0], steps, args.timeout, args.retries)[0]
    if args.json:
        _print_json(args, [outcome])
    if outcome.code != ExitCode.OK:
        raise UlpError(outcome.message, outcome.code)
    console.say(outcome.message)
    if args.verbose and outcome.pause is not None:
        console.say(f"application threads stopped: {outcome.pause.threads}, "
                    f"for {outcome.pause.seconds * 1000:.3f} ms at most each "
                    f"({outcome.pause.span * 1000:.3f} ms from the first stop to the "
                    "last release)")
    return ExitCode.OK


def _named(args: argparse.Namespace) -> list[int] | None:
    """The processes given (PIDs, -p NAME), each once; None if none was."""
    pids = list(args.pids)
    if args.names:
        named = select.matching(select.all_pids(), args.names)
        if not named and not pids:
            raise UlpError(f"no process is named {' or '.join(args.names)}",
                           ExitCode.NO_PROCESS)
        pids += named
    if args.pids or args.names:
        return sorted({_process_of(pid) for pid in pids})
    return None


Work = tuple[list[int], Callable[[int], list[batch.Outcome]], UlpError | None]


def _apply_work(args: argparse.Namespace, steps: list[batch.Step]) -> Work:
    """The PIDs to look at, what to do with each (no outcome: not a
    candidate) and the error if none was one.  Without PIDs or names, every
    process of the machine is looked at, in the workers (ulp.trigger.select)."""
    def apply(pid: int, maps: dict | None = None) -> list[batch.Outcome]:
        return batch.run_one(pid, steps, args.timeout, args.retries, maps)

    named = _named(args)
    if named is not None:
        return named, apply, None
    # a process with only some libraries of a patch of several is a candidate:
    # its outcome says which one it lacks (the patch is refused there, whole)
    identities = {target.identity for step in steps for target in step.metadata.targets}

    def candidate(pid: int) -> list[batch.Outcome]:
        maps = select.read_maps(pid)
        return apply(pid, maps) if maps and select.runs_targets(maps, identities) else []

    libraries = ", ".join(sorted({target.path for step in steps
                                  for target in step.metadata.targets}))
    return select.all_pids(), candidate, UlpError(
        f"no process runs the ulp runtime with {libraries} loaded", ExitCode.LIBRARY_NOT_LOADED)


def _revert_all_work(args: argparse.Namespace, revertall) -> Work:
    def revert(pid: int) -> list[batch.Outcome]:
        return revertall.run_one(pid, args.revert_all, args.timeout, args.retries)

    named = _named(args)
    if named is not None:
        return named, revert, None

    def candidate(pid: int) -> list[batch.Outcome]:
        maps = select.read_maps(pid)
        return revert(pid) if maps and select.runs_library(maps, args.revert_all) else []

    return select.all_pids(), candidate, UlpError(
        f"no process runs the ulp runtime with a prepared {args.revert_all} loaded",
        ExitCode.LIBRARY_NOT_LOADED)


def _process_of(pid: int) -> int:
    """A thread's ID names its process: each process once, whatever ID named it."""
    try:
        return thread_group(pid)
    except UlpError:
        return pid  # gone or never there: its outcome says so


def _run_many(args: argparse.Namespace, console: Console, reverting: bool, work: Work) -> int:
    pids, handle, none_found = work

    def report(outcomes: list[batch.Outcome], done: int) -> None:
        for outcome in outcomes:
            if outcome.kind == "failed":
                console.problem(outcome.message)
            elif outcome.code == ExitCode.OK:
                console.say(outcome.message)
            else:
                console.detail(f"{outcome.kind}: {outcome.message}")
        console.progress(done, len(pids), "processes")

    outcomes = batch.run_all(pids, handle, args.jobs, report)
    console.progress(len(pids), len(pids))
    if not outcomes and none_found is not None:
        raise none_found
    if args.json:
        _print_json(args, outcomes)
    else:
        _print_summary(console, outcomes, len({outcome.pid for outcome in outcomes}),
                       reverting)
    return batch.worst(outcome.code for outcome in outcomes)


def _print_summary(console: Console, outcomes, processes: int, reverting: bool) -> None:
    kinds = Counter(outcome.kind for outcome in outcomes)
    done = "reverted" if reverting else "applied"
    nothing = "not applied" if reverting else "already applied"
    parts = [console.style(f"{kinds[done]} {done}", "good"), f"{kinds[nothing]} {nothing}",
             console.style(f"{kinds['skipped']} skipped", "note") if kinds["skipped"]
             else "0 skipped",
             console.style(f"{kinds['failed']} failed", "bad") if kinds["failed"] else "0 failed"]
    console.say(f"{processes} process(es): " + ", ".join(parts), styled=True)
    for kind in ("skipped", "failed"):
        reasons = Counter((outcome.code, _reason(outcome.message)) for outcome in outcomes
                          if outcome.kind == kind)
        for (code, reason), number in sorted(reasons.items(), key=lambda item: -item[1]):
            console.say(f"  {kind} (exit {int(code)}, {ExitCode(code).name}) x{number}: {reason}")


def _reason(message: str) -> str:
    """A message with its process named generically, so that equal reasons group."""
    return re.sub(r"\b(process|PID|thread) \d+", r"\1 N", message)


def _print_json(args: argparse.Namespace, outcomes) -> None:
    document = {
        "action": "revert-all" if args.revert_all else "revert" if args.revert else "apply",
        "patch": args.patch,
        "library": args.revert_all,
        "exit_code": int(batch.worst(outcome.code for outcome in outcomes)),
        "results": [{"pid": o.pid, "patch_id": o.patch, "outcome": o.kind,
                     "exit_code": int(o.code), "exit_name": o.code.name, "message": o.message,
                     "pause_ms": None if o.pause is None else round(o.pause.seconds * 1000, 3)}
                    for o in outcomes],
    }
    import json  # only for --json: every import costs (docs/trigger.md, "Speed")

    print(json.dumps(document, indent=2))


def main(argv: list[str] | None = None) -> int:
    with scheduled_first():  # and every worker thread started meanwhile (priority.py)
        return run_command(PROG, run, argv)
