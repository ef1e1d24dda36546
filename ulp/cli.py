"""ulp: the operator's command.

  ulp flags        the compiler flags a live-patchable library needs
  ulp status PID   the patches applied in a process (asks its agent)
  ulp patches      what every process with the runtime runs, per thread,
                   read without stopping it (trigger/snapshot.py)
"""

from __future__ import annotations

import argparse
import json

from ulp.console import ArgumentParser, Console, add_output_options, run_command, seconds
from ulp.layout import PATCHABLE_FLAG


def cmd_flags(args: argparse.Namespace) -> int:
    print(PATCHABLE_FLAG)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from ulp.agent_abi import Op, Request
    from ulp.process import Process
    from ulp.trigger.agent import Agent
    from ulp.trigger.tracee import block_sigchld

    block_sigchld()
    process = Process(args.pid)
    agent = Agent(process, args.timeout)
    agent.attach()
    try:
        _, message = agent.call(Request(Op.STATUS))
    finally:
        agent.release()
        process.close()
    applied = message.split()
    if args.json:
        print(json.dumps({"pid": args.pid, "applied": applied}, indent=2))
        return 0
    console = Console("ulp", quiet=args.quiet, verbose=args.verbose)
    console.say(f"process {args.pid}: {len(applied)} patch(es) applied")
    for patch_id in applied:
        console.say(f"  {patch_id}")
    return 0


def cmd_patches(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from ulp.errors import ExitCode, UlpError
    from ulp.trigger import select, snapshot

    pids = [int(value) for value in args.process if value.isdigit()]
    names = [value for value in args.process if not value.isdigit()]
    if names:
        pids += select.matching(select.all_pids(), names)
    if not args.process:
        pids = [pid for pid in select.all_pids() if select.runs_runtime(pid)]
    console = Console("ulp", quiet=args.quiet or args.json, verbose=args.verbose)
    views, worst = [], ExitCode.OK
    for pid in sorted(set(pids)):
        try:
            views.append(snapshot.read_process(pid))
        except UlpError as error:
            worst = max(worst, error.exit_code) if args.process else worst
            if args.process:
                console.problem(str(error))
    if args.json:
        print(json.dumps([asdict(view) for view in views], indent=2))
    for view in views:
        _show_process(console, view)
    if args.process and not views and worst == ExitCode.OK:
        raise UlpError(f"no process is named {' or '.join(names)}", ExitCode.NO_PROCESS)
    return worst


def _show_process(console: Console, view) -> None:
    console.say(f"process {view.pid} ({view.name}): global universe {view.global_universe}")
    for library in view.libraries:
        changes = "; ".join(
            f"{function.name} " + ", ".join(
                f"applied at {applied}" + (f", reverted at {reverted}" if reverted else "")
                for applied, reverted in function.versions)
            for function in library.functions) or "not patched"
        console.say(f"  {library.path}: {changes}")
    for thread in view.threads:
        if thread.error:
            console.say(f"  thread {thread.tid} ({thread.name}): {thread.error}")
            continue
        records = ", ".join(
            f"{record.library.rsplit('/', 1)[-1]} universe {record.universe}"
            + (console.style(" inside, may run old code", "note") if record.old_code
               else " inside" if record.inside else "")
            for record in thread.records) or "no library entered"
        console.say(f"  thread {thread.tid} ({thread.name}): {records}", styled=True)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="ulp", description="User-space live patching.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    flags = commands.add_parser("flags", help="print the compiler flags of a live-patchable build")
    flags.set_defaults(run=cmd_flags)
    status = commands.add_parser("status", help="list the patches applied in process PID")
    status.add_argument("pid", type=int, metavar="PID")
    status.add_argument("--timeout", type=seconds, default=10.0, metavar="SECONDS",
                        help="bound for every wait on the process (default: 10)")
    add_output_options(status, json=True)
    status.set_defaults(run=cmd_status)
    patches = commands.add_parser(
        "patches", help="what every process with the ulp runtime runs, per thread, read "
                        "through /proc/PID/mem without stopping it")
    patches.add_argument("-p", "--process", action="append", default=[], metavar="PID|NAME",
                         help="only this process, or the processes with this name (shell "
                              "wildcards); may be repeated")
    add_output_options(patches, json=True)
    patches.set_defaults(run=cmd_patches)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command("ulp", lambda a: (args := build_parser().parse_args(a)).run(args), argv)
