"""ulp: the operator's command.

  ulp flags        the compiler flags a live-patchable library needs
  ulp status PID   the patches applied in a process
"""

from __future__ import annotations

import argparse

from ulp.errors import one_line, run_cli
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
    # one line per patch: its id, then its labels if it has any
    applied = [line.split(" ", 1) for line in message.splitlines() if line.strip()]
    print(f"process {args.pid}: {len(applied)} patch(es) applied")
    for fields in applied:
        label = f"  {one_line(fields[1])}" if len(fields) > 1 else ""
        print(f"  {fields[0]}{label}")
    return 0


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ulp", description="User-space live patching.")
    commands = parser.add_subparsers(dest="command", required=True)
    flags = commands.add_parser("flags", help="print the compiler flags of a live-patchable build")
    flags.set_defaults(run=cmd_flags)
    status = commands.add_parser("status", help="list the patches applied in process PID")
    status.add_argument("pid", type=int, metavar="PID")
    status.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS")
    status.set_defaults(run=cmd_status)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_cli("ulp", lambda a: (args := parse_arguments(a)).run(args), argv)
