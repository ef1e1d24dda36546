"""ulp: the operator's command.

  ulp flags        the compiler flags a live-patchable library needs
  ulp status PID   the patches applied in a process (asks its agent)
  ulp patches      what every process with the runtime runs, per thread,
                   read without stopping it (trigger/snapshot.py)
  ulp dump PATCH   the fields of a patch file
  ulp check PID PATCH   whether PATCH could be applied to PID now, checked
                   without changing or stopping anything
  ulp livepatchable FILE   built with the padding? prepared? which functions?
  ulp messages PID the runtime's log of what happened in a process (loaded,
                   registered, staged, applied, reverted, refused and why),
                   read without stopping it (ulp/messages.py)
  ulp runtime-path the runtime of this installation: LD_PRELOAD=$(ulp runtime-path)
  ulp var get|set PID LIB:SYMBOL   a global variable of a running process,
                   read, or written with every thread stopped (ulp/variables.py)
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import UTC

from ulp.console import ArgumentParser, Console, add_output_options, run_command, seconds
from ulp.errors import one_line
from ulp.layout import PATCHABLE_FLAG


def cmd_flags(args: argparse.Namespace) -> int:
    print(PATCHABLE_FLAG)
    return 0


def cmd_runtime_path(args: argparse.Namespace) -> int:
    from ulp.runtime import runtime_path

    print(runtime_path())
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
    if args.json:
        print(json.dumps({"pid": args.pid, "applied": [
            {"id": fields[0], "label": fields[1] if len(fields) > 1 else ""}
            for fields in applied]}, indent=2))
        return 0
    console = Console("ulp", quiet=args.quiet, verbose=args.verbose)
    console.say(f"process {args.pid}: {len(applied)} patch(es) applied")
    for fields in applied:
        label = f"  {one_line(fields[1])}" if len(fields) > 1 else ""
        console.say(f"  {fields[0]}{label}")
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
        moving = " (in transition: threads still pending)" if library.in_transition else ""
        console.say(f"  {library.path}: {changes}{moving}")
    for patch in view.patches or []:
        label = f" {one_line(patch.label)}" if patch.label else ""
        where = f"part {patch.part + 1} of {patch.nparts}, " if patch.nparts > 1 else ""
        console.say(f"  patch {patch.patch_id}{label}: {where}"
                    f"{patch.library.rsplit('/', 1)[-1]}, applied at {patch.universe} "
                    f"({_when(patch.time_ns)}) from {one_line(patch.object_path)}")
    for universe, names in _joint_changes(view):
        console.say(f"  universe {universe}: {', '.join(names)} changed in one step "
                    "(a patch of several libraries)")
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


def _joint_changes(view) -> list[tuple[int, list[str]]]:
    """The universes in which versions of several libraries were applied or
    reverted: a patch of several libraries changes them in one step."""
    changed: dict[int, set[str]] = {}
    for library in view.libraries:
        for function in library.functions:
            for applied, reverted in function.versions:
                for universe in (applied, reverted):
                    if universe:
                        changed.setdefault(universe, set()).add(library.path.rsplit("/", 1)[-1])
    return [(universe, sorted(names)) for universe, names in sorted(changed.items())
            if len(names) > 1]


def cmd_messages(args: argparse.Namespace) -> int:
    from dataclasses import asdict
    from datetime import datetime

    from ulp.messages import read_log

    log = read_log(args.pid)
    if args.json:
        document = asdict(log)
        for message in document["messages"]:
            message["time"] = datetime.fromtimestamp(message["time_ns"] / 1e9, UTC
                                                     ).isoformat(timespec="microseconds")
        print(json.dumps(document, indent=2))
        return 0
    console = Console("ulp", quiet=args.quiet, verbose=args.verbose)
    if log.overwritten:
        console.say(f"({log.overwritten} older message(s) overwritten)", "dim")
    width = max((len(message.kind) for message in log.messages), default=0)
    for message in log.messages:
        when = datetime.fromtimestamp(message.time_ns / 1e9).strftime("%Y-%m-%d %H:%M:%S.%f")
        thread = f" [{message.tid}]" if args.verbose else ""
        kind = console.style(message.kind.ljust(width), _MESSAGE_STYLES.get(message.kind, "dim"))
        console.say(f"{when[:-3]}{thread} {kind} {one_line(message.text)}", styled=True)
    for count, what in ((log.dropped, "dropped by the runtime (their slot was busy)"),
                        (log.unreadable, "being written while read")):
        if count:
            console.say(f"({count} message(s) {what})", "dim")
    return 0


_MESSAGE_STYLES = {"applied": "good", "reverted": "good", "refused": "bad", "staged": "note"}


def patch_fields(metadata) -> dict:
    """A patch file's fields, for --json: the first target library's at the
    top, as for a patch of one, and every library's in ``targets``."""
    targets = [_target_fields(target) for target in metadata.targets]
    return {
        "patch_id": metadata.patch_id_hex, "reverse": metadata.reverse,
        **targets[0], "patch_object": metadata.patch_so_path,
        "patch_sha256": metadata.patch_so_sha256.hex(),
        "requires": [required.hex() for required in metadata.requires],
        "labels": list(metadata.labels), "targets": targets,
    }


def _target_fields(target) -> dict:
    return {
        "target": target.path, "target_identity": target.identity.hex(),
        "target_build_id": target.build_id.hex(), "layout_version": target.layout_version,
        "functions": [{"index": unit.index, "old": unit.old_name, "new": unit.new_name}
                      for unit in target.units]
        + [{"private": unit.entry_delta, "old": unit.old_name, "new": unit.new_name}
           for unit in target.private_units],
    }


def cmd_dump(args: argparse.Namespace) -> int:
    from ulp.packer.pack import dump_lines
    from ulp.patchfile import read_patch_file

    patch_file = read_patch_file(args.patch)
    if args.json:
        print(json.dumps(patch_fields(patch_file.metadata), indent=2))
        return 0
    console = Console("ulp", quiet=args.quiet, verbose=args.verbose)
    for line in dump_lines(patch_file):
        console.say(line)
    return 0


def _applied_now(process, mailbox: int, patch_id: bytes) -> list | None:
    """The entries of the runtime's applied table with ``patch_id`` (one
    per target library), None if the runtime keeps no table."""
    from ulp.agent_abi import MAILBOX_HEADER_SIZE, MailboxHeader
    from ulp.trigger.snapshot import applied_patches

    table = MailboxHeader.unpack(process.read(mailbox, MAILBOX_HEADER_SIZE)).applied_table
    if not table:
        return None
    return [entry for entry in applied_patches(process, table) if entry.patch_id == patch_id]


def _when(time_ns: int) -> str:
    """A CLOCK_REALTIME time in nanoseconds, as the local time to the second."""
    from datetime import datetime

    return datetime.fromtimestamp(time_ns / 1e9).strftime("%Y-%m-%d %H:%M:%S")


def cmd_check(args: argparse.Namespace) -> int:
    """The checks an apply makes before it changes anything, and nothing else."""
    from ulp.errors import UlpError
    from ulp.patchfile import read_patch_file
    from ulp.process import Process
    from ulp.trigger import transition
    from ulp.trigger.agent import find_mailbox
    from ulp.trigger.codewrite import check_code

    patch_file = read_patch_file(args.patch, trusted=True)
    metadata = patch_file.metadata
    process = Process(args.pid)
    checks: list[tuple[str, str]] = []
    parts = metadata.parts()
    try:
        targets = transition.find_targets(process, metadata, args.patch)
        for part, target in zip(parts, targets, strict=True):
            where = f"target {part.target_path}" if len(parts) > 1 else "target"
            checks.append((where, f"loaded at {target.base:#x}, identity and build-id match"))
        checks.append(("patch object", f"carried in {args.patch}, SHA-256 matches"
                       if patch_file.patch_object else "none: a reverse patch"))
        units = sum(len(part.units) for part in parts)
        todo = check_code(process, [write for part, target in zip(parts, targets, strict=True)
                                    for write in transition.entry_detours(target, part)])
        checks.append(("entries", f"{units - len(todo)} of {units} already jump to the "
                                  "tracker"))
        applied = _applied_now(process, find_mailbox(process), metadata.patch_id)
        checks.append(("runtime", "loaded"))
        if applied is None:
            verdict = "can be applied (unless it is applied already: ulp status)"
        elif applied:
            verdict = (f"is applied (universe {applied[0].universe}, "
                       f"{_when(applied[0].time_ns)})")
        else:
            verdict = "is not applied, and can be"
        code = 0
    except UlpError as error:
        verdict, code = f"cannot be applied: {error}", int(error.exit_code)
    finally:
        process.close()
    if args.json:
        print(json.dumps({"pid": args.pid, "patch": patch_fields(metadata),
                          "checks": dict(checks), "exit_code": code, "verdict": verdict},
                         indent=2))
    else:
        console = Console("ulp", quiet=args.quiet, verbose=args.verbose)
        for name, result in checks:
            console.detail(f"{name}: {result}")
        console.say(f"patch {metadata.patch_id_hex} {verdict}",
                    "good" if code == 0 else "bad")
    return code


def cmd_livepatchable(args: argparse.Namespace) -> int:
    """Prepared (its functions), or built for it (which functions have the
    padding), or not: the checks ulp-prepare makes (toolchain/analysis.py)."""
    from ulp.elfinfo import open_elf, require_x86_64_shared_object
    from ulp.errors import ExitCode, UlpError
    from ulp.layout import PATCHABLE_FLAG
    from ulp.prepared import PreparedLibrary
    from ulp.toolchain import analysis
    from ulp.toolchain.elfread import LoadedBytes

    path = args.file
    refused: dict[str, str] = {}
    with open_elf(path) as elf:
        require_x86_64_shared_object(elf, path)
        if analysis.prepared_descriptor(elf, path) is not None:
            state = "prepared"
            ready = [function.name for function in PreparedLibrary.open(path).functions]
        else:
            try:
                entries = analysis.patchable_entries(elf, path)
            except UlpError:
                entries = set()
            ready = []
            loaded = LoadedBytes(elf)
            for entry, names in analysis.exported_functions(elf).items():
                try:
                    analysis.check_function(loaded, path, entry, names, entries)
                    ready.append(names[0])
                except UlpError as error:
                    refused[names[0]] = str(error).removeprefix(f"{path}: ")
            state = "patchable" if ready and not refused else \
                "partly patchable" if ready else "not patchable"
    code = ExitCode.OK if state in ("prepared", "patchable") else ExitCode.NOT_PATCHABLE
    if args.json:
        print(json.dumps({"file": path, "state": state, "functions": ready,
                          "refused": refused}, indent=2))
        return code
    console = Console("ulp", quiet=args.quiet, verbose=args.verbose)
    advice = {"prepared": "", "patchable": ": run ulp-prepare on it",
              "partly patchable": f": rebuild it with {PATCHABLE_FLAG}",
              "not patchable": f": build it with {PATCHABLE_FLAG}"}[state]
    console.say(f"{path}: {state} ({len(ready)} function(s) ready, {len(refused)} not)"
                f"{advice}")
    for name in ready:
        console.detail(f"  {name}")
    for name, why in refused.items():
        console.detail(f"  {name}: {why}")
    return code


def cmd_var(args: argparse.Namespace) -> int:
    """Read (get) or write (set) a global variable of a running process."""
    from ulp import variables
    from ulp.process import Process

    process = Process(args.pid)
    try:
        variable = variables.find_variable(process, args.variable)
        kind = variables.value_type(variable, args.type)
        value = variables.read_value(process, variable, kind)
        document = {"pid": process.pid, "variable": args.variable,
                    "object": variable.object_path,
                    "address": variable.address, "size": variable.size, "type": kind,
                    "value": value}
        if args.action == "set":
            data = variables.encode_value(variable, kind, args.value)
            variables.write_value(process, variable, data, args.timeout)
            document["previous"], document["value"] = value, variables.read_value(
                process, variable, kind)
    finally:
        process.close()
    if args.json:
        print(json.dumps(document, indent=2, default=str))
        return 0
    console = Console("ulp", quiet=args.quiet, verbose=args.verbose)
    def shown(value) -> str:  # a string quoted, its control characters escaped
        return f"'{one_line(value)}'" if kind == "str" else one_line(str(value))

    if args.action == "get":
        print(f"{args.variable} = {shown(value)}")
    else:
        console.say(f"{args.variable} = {shown(document['value'])} (was {shown(value)})")
    console.detail(f"{kind}, {variable.size} bytes at {variable.address:#x} in "
                   f"{one_line(variable.object_path)}")
    return 0


def _var_parsers(commands) -> None:
    from ulp.variables import TYPES

    var = commands.add_parser("var", help="read or write a global variable of a running "
                              "process (a prepared library's or the program's), no patch "
                              "needed")
    actions = var.add_subparsers(dest="action", required=True, metavar="ACTION")
    where = "LIB:SYMBOL: LIB a loaded object's path or file name, empty for the program"
    get = _subcommand(actions, "get", cmd_var, "print the value of a variable (read without "
                      "stopping the process)", "PID", "VARIABLE")
    get.add_argument("--type", choices=TYPES, help="how to read it (default: an integer of "
                     "the variable's size, or its bytes in hex)")
    put = _subcommand(actions, "set", cmd_var, "write a value into a variable, with every "
                      "thread of the process stopped", "PID", "VARIABLE", "VALUE")
    put.add_argument("--type", choices=TYPES, required=True,
                     help="the value's type; a number type must have the variable's size, "
                          "str writes into a char array with its NUL")
    put.add_argument("--timeout", type=seconds, default=10.0, metavar="SECONDS",
                     help="bound for stopping the threads (default: 10)")
    for parser in (get, put):
        parser.description = f"VARIABLE is {where}."
    # VALUE may be -1e300, -inf or -0x10: numbers, not options (argparse
    # takes only -5 and -1.5 for numbers; -- before VALUE works too)
    if hasattr(put, "_negative_number_matcher"):
        put._negative_number_matcher = re.compile(
            r"^-(\d+\.?\d*([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?|inf(inity)?|nan|0[xXoObB][0-9a-fA-F_]+)$",
            re.IGNORECASE)


def _subcommand(commands, name: str, run, help: str, *positionals: str) -> ArgumentParser:
    """A subcommand reporting state: its positionals (PID is a number), then
    --quiet, --verbose and --json."""
    parser = commands.add_parser(name, help=help)
    for metavar in positionals:
        parser.add_argument(metavar.lower(), type=int if metavar == "PID" else str,
                            metavar=metavar)
    add_output_options(parser, json=True)
    parser.set_defaults(run=run)
    return parser


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="ulp", description="User-space live patching.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    flags = commands.add_parser("flags", help="print the compiler flags of a live-patchable build")
    flags.set_defaults(run=cmd_flags)
    runtime = commands.add_parser("runtime-path", help="print the path of this installation's "
                                  "runtime, for LD_PRELOAD=$(ulp runtime-path)")
    runtime.set_defaults(run=cmd_runtime_path)
    status = _subcommand(commands, "status", cmd_status,
                         "list the patches applied in process PID (asks its agent)", "PID")
    status.add_argument("--timeout", type=seconds, default=10.0, metavar="SECONDS",
                        help="bound for every wait on the process (default: 10)")
    patches = _subcommand(commands, "patches", cmd_patches,
                          "what every process with the ulp runtime runs, per thread, read "
                          "through /proc/PID/mem without stopping it")
    patches.add_argument("-p", "--process", action="append", default=[], metavar="PID|NAME",
                         help="only this process, or the processes with this name (shell "
                              "wildcards); may be repeated")
    _subcommand(commands, "dump", cmd_dump, "print the fields of a patch file", "PATCH")
    _subcommand(commands, "check", cmd_check,
                "tell whether PATCH could be applied to process PID now, without changing or "
                "stopping anything (exit code: the apply's)", "PID", "PATCH")
    _subcommand(commands, "messages", cmd_messages,
                "print the runtime's log of process PID: loaded, libraries registered, "
                "patches staged, applied, reverted or refused and why; read through "
                "/proc/PID/mem without stopping it", "PID")
    _var_parsers(commands)
    _subcommand(commands, "livepatchable", cmd_livepatchable,
                "tell whether a shared object is prepared, or built for live patching, and "
                "which of its functions are ready", "FILE")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command("ulp", lambda a: (args := build_parser().parse_args(a)).run(args), argv)
