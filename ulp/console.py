"""What every ulp command shares on the command line and the terminal.

- ``ArgumentParser``: a usage error is one line, ``prog: message (see
  --help)``, exit 2, like every other error (argparse prints the usage and
  the error on two or more lines); ``--version`` on every command.
- ``seconds``: a ``--timeout`` value; nan, inf, 0 and negative are refused
  (``nan`` compared false with every deadline and waited forever).
- ``Console``: where lines go and how: colour only on a terminal and never
  when NO_COLOR is set (https://no-color.org), ``--quiet`` and ``--verbose``,
  a progress line that only a terminal sees.

Imports stay cheap (argparse, os, sys): ulp-trigger's whole run is timed in
milliseconds (docs/trigger.md, "Speed").
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from io import TextIOBase as TextIO

from ulp.errors import ExitCode, UlpError, one_line, run_cli

DISTRIBUTION = "ulp"


class UsageError(UlpError):
    exit_code = ExitCode.USAGE


def version() -> str:
    """The installed distribution's version (read only when asked for)."""
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


class _VersionAction(argparse.Action):
    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="print the version and exit"):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"{parser.prog} {version()}")
        parser.exit()


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors and ``--version``; subcommand
    parsers made from it are of the same kind."""

    def __init__(self, *args, add_version: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if add_version:
            self.add_argument("--version", action=_VersionAction)

    def error(self, message: str) -> None:
        raise UsageError(f"{message} (see {self.prog} --help)")


def seconds(text: str) -> float:
    """A positive, finite number of seconds (for ``type=``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive finite number of seconds, "
                                         f"not {text!r}")
    return value


def count(text: str) -> int:
    """A whole number >= 0 (for ``type=``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {text!r}")
    return value


def add_output_options(parser: argparse.ArgumentParser, json: bool = False) -> None:
    """--quiet and --verbose (and --json) as every command spells them."""
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-q", "--quiet", action="store_true",
                          help="print only errors (and the --json document)")
    loudness.add_argument("-v", "--verbose", action="store_true",
                          help="print more about what is done")
    if json:
        parser.add_argument("--json", action="store_true",
                            help="print one JSON document on stdout instead of text")


def colour_wanted(stream: TextIO) -> bool:
    """Colour only on a terminal, and never with NO_COLOR set to anything."""
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


PROGRESS_WIDTH = 60
_STYLES = {"good": "32", "note": "33", "bad": "31;1", "dim": "2"}


class Console:
    """Lines for a person: results on stdout, problems on stderr."""

    def __init__(self, prog: str, quiet: bool = False, verbose: bool = False,
                 out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.prog = prog
        self.quiet = quiet
        self.verbose = verbose
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.colour = colour_wanted(self.out)
        self.err_colour = colour_wanted(self.err)
        self._progress_shown = False

    def style(self, text: str, kind: str, stream: TextIO | None = None) -> str:
        coloured = self.err_colour if stream is self.err else self.colour
        return f"\x1b[{_STYLES[kind]}m{text}\x1b[0m" if coloured else text

    def say(self, text: str, kind: str | None = None, styled: bool = False) -> None:
        """A result line (not with --quiet); ``styled``: ``text`` holds this
        console's own styles, its other parts were passed through one_line."""
        if not self.quiet:
            self._clear_progress()
            line = text if styled else one_line(text)
            print(self.style(line, kind) if kind else line, file=self.out)

    def detail(self, text: str) -> None:
        """A line only --verbose prints."""
        if self.verbose:
            self.say(text)

    def problem(self, text: str) -> None:
        """``prog: text`` on stderr, one line, even with --quiet."""
        self._clear_progress()
        print(f"{self.prog}: {self.style(one_line(text), 'bad', self.err)}", file=self.err)

    @property
    def shows_progress(self) -> bool:
        return not self.quiet and self.err_colour_capable

    @property
    def err_colour_capable(self) -> bool:
        try:
            return self.err.isatty()
        except (AttributeError, ValueError):
            return False

    def progress(self, done: int, total: int, label: str = "") -> None:
        """A bar redrawn in place on stderr; only on a terminal."""
        if not self.shows_progress or total <= 0:
            return
        width = 30
        filled = width * done // total
        bar = "#" * filled + "-" * (width - filled)
        # drawn over with spaces, not erased with an escape sequence: no
        # escape sequence at all reaches the terminal with NO_COLOR
        line = f"[{bar}] {done}/{total} {label}"[:PROGRESS_WIDTH]
        self.err.write("\r" + line.ljust(PROGRESS_WIDTH))
        self.err.flush()
        self._progress_shown = True

    def _clear_progress(self) -> None:
        if self._progress_shown:
            self.err.write("\r" + " " * PROGRESS_WIDTH + "\r")
            self.err.flush()
            self._progress_shown = False


def run_command(prog: str, body, argv: list[str] | None = None) -> int:
    """``run_cli`` (one line per error), and quiet when the reader of stdout
    goes away (``ulp-trigger --json | head``): the work is done, only the
    rest of the text is lost."""
    try:
        return run_cli(prog, body, argv)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python flushes stdout again at exit
        os.close(devnull)
        return 141  # as a shell reports a command killed by SIGPIPE
