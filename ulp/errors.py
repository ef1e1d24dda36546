"""Errors shared by every ulp command, each with its own exit code.

A command catches ``UlpError`` at the top, prints ``<prog>: <message>`` on one
line and exits with ``error.exit_code``.  docs/exit-codes.md lists them all.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1  # unexpected internal failure
    USAGE = 2  # bad command line (argparse uses 2 as well)
    FILE_MISSING = 3  # an input file does not exist or cannot be read
    BAD_INPUT = 4  # an input file is malformed: not ELF, truncated, corrupted
    NOT_PATCHABLE = 5  # a library lacks what live patching needs
    NO_PROCESS = 6  # no such process
    PERMISSION = 7  # ptrace or /proc access denied
    NO_RUNTIME = 8  # the process does not have libulp.so loaded
    LIBRARY_NOT_LOADED = 9  # the patch's target library is not in the process
    TARGET_MISMATCH = 10  # build-id, identity or layout does not match
    PATCH_OBJECT = 11  # patch .so missing, changed since packing, or lacks a symbol
    ALREADY_APPLIED = 12  # nothing to do: the patch is applied already
    NOT_APPLIED = 13  # revert of a patch that is not applied
    DEPENDENCY = 14  # a required patch is missing, or an applied one depends on it
    RETRY = 15  # busy or timed out; nothing changed, try again
    PROCESS_EXITED = 16  # the process went away while we worked on it
    UNSAFE_FILE = 17  # a file to load that another user could change (ulp-trigger)


class UlpError(Exception):
    """An error the user can act on; never a bug in ulp itself."""

    exit_code: ExitCode = ExitCode.FAILURE

    def __init__(self, message: str, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


def one_line(text: str) -> str:
    """``text`` with every unprintable character escaped (\\n, \\r, \\x1b...).

    Messages quote paths and names from files and processes, which may hold
    any character: an error stays one line, and no escape sequence reaches
    the terminal.
    """
    if text.isprintable():  # nearly always: one call, not one per character
        return text
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode()
                   for char in text)


def run_cli(prog: str, body, argv=None) -> int:
    """Run ``body(argv)``, turning a UlpError into one line on stderr."""
    import sys

    try:
        return int(body(argv) or 0)
    except UlpError as error:
        print(f"{prog}: {one_line(str(error))}", file=sys.stderr)
        return int(error.exit_code)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
