"""ulp-trigger: apply or revert a packed patch in a running process."""

from __future__ import annotations

import argparse
import time

from ulp.errors import ExitCode, UlpError, one_line, run_cli
from ulp.metadata import read_patch
from ulp.process import DYING_GRACE, Process
from ulp.trigger import codewrite, transition
from ulp.trigger.tracee import block_sigchld, release_orphans

DESCRIPTION = """\
Apply PATCH (a file written by ulp-packer) to the running process PID, or
revert it with --revert.  A reverse patch file (NAME.rev.ulp) reverts without
--revert.  The process must run with the ulp runtime preloaded
(LD_PRELOAD=libulp.so) and have the patch's target library loaded.

Threads switch to the new code one by one, each at its next call into the
library from outside it.  Applying an applied patch changes nothing and exits
with code 12; every other refusal leaves the process as it was.
"""

EPILOG = """\
exit codes: 0 done, 3 file missing, 4 malformed patch file, 6 no such process,
7 permission denied, 8 no ulp runtime in the process, 9 target library not
loaded, 10 wrong target library, 11 patch object missing/changed/incomplete,
12 already applied, 13 not applied, 14 dependency, 15 busy or timed out
(retryable), 16 the process exited, 17 a file another user could change.
See docs/exit-codes.md.
"""


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ulp-trigger", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pid", type=int, metavar="PID", help="the process to patch")
    parser.add_argument("patch", metavar="PATCH", help="patch file written by ulp-packer")
    parser.add_argument("--revert", action="store_true", help="revert PATCH instead")
    parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                        help="bound for every wait on the process (default: 10)")
    parser.add_argument("--retries", type=int, default=0, metavar="N",
                        help="retry N times when the process is busy (exit code 15)")
    parser.add_argument("--verbose", action="store_true",
                        help="also print how long the application threads were stopped")
    args = parser.parse_args(argv)
    if args.timeout <= 0 or args.retries < 0:
        parser.error("--timeout must be positive and --retries not negative")
    return args


def run(argv: list[str] | None) -> int:
    args = parse_arguments(argv)
    metadata = read_patch(args.patch, trusted=True)
    reverting = args.revert or metadata.reverse
    block_sigchld()
    release_orphans()
    for attempt in range(args.retries + 1):
        try:
            attempt_once(args, metadata, reverting)
            return ExitCode.OK
        except UlpError as error:
            if error.exit_code != ExitCode.RETRY or attempt == args.retries:
                raise
            time.sleep(0.1)
    return ExitCode.FAILURE


def attempt_once(args: argparse.Namespace, metadata, reverting: bool) -> None:
    process = Process(args.pid)
    try:
        if reverting:
            transition.revert(process, metadata, args.timeout)
            print(f"reverted patch {metadata.patch_id_hex}{_label(metadata)} in process "
                  f"{args.pid}")
        else:
            transition.apply(process, metadata, args.timeout, args.patch)
            names = ", ".join(metadata.replaced_names)
            print(f"applied patch {metadata.patch_id_hex}{_label(metadata)} to process "
                  f"{args.pid}: {one_line(names)}")
            pause = codewrite.last_pause()
            if args.verbose and pause is not None:
                print(f"application threads stopped: {pause.threads}, "
                      f"for {pause.seconds * 1000:.3f} ms")
    except UlpError as error:
        raise _explained(error, process) from None
    except OSError as error:
        # /proc or ptrace failing in a way not foreseen: still one line
        raise _explained(UlpError(f"process {args.pid}: {error}", ExitCode.FAILURE),
                         process) from None
    finally:
        process.close()


def _label(metadata) -> str:
    """`` (label)`` for a patch with labels (a CVE id...), else nothing."""
    return f" ({one_line(metadata.label)})" if metadata.label else ""


#: errors a process that is being killed can cause on its way out
DEATH_SYMPTOMS = {ExitCode.FAILURE, ExitCode.PERMISSION, ExitCode.NO_RUNTIME,
                  ExitCode.LIBRARY_NOT_LOADED, ExitCode.TARGET_MISMATCH, ExitCode.RETRY}


def _explained(error: UlpError, process: Process) -> UlpError:
    """Whatever went wrong, a process that died or called execve meanwhile is
    the reason to report: the process the trigger knew is gone."""
    if error.exit_code == ExitCode.NO_PROCESS:
        return error
    if process.image_changed():
        return process.gone()
    grace = DYING_GRACE if error.exit_code in DEATH_SYMPTOMS else 0.0
    return process.gone() if process.exits_within(grace) else error


def main(argv: list[str] | None = None) -> int:
    return run_cli("ulp-trigger", run, argv)
