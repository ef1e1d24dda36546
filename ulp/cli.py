"""ulp: the operator's command.

  ulp flags        the compiler flags a live-patchable library needs
  ulp status PID   the patches applied in a process
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
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command("ulp", lambda a: (args := build_parser().parse_args(a)).run(args), argv)
