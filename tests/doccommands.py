"""The ulp commands a document shows, and whether the parsers accept them
(tests/test_docs.py, tests/test_realworld.py).

A command is `ulp` or `ulp-NAME` as a word of a shell block (```sh) or of
inline code, up to the end of its line, a pipe, `;`, `&&` or the `)` that
closes a `$(...)`.  In a shell block it is a whole command line: the parser
must accept it (placeholders such as PID given a value).  In inline code it
may be a fragment (`ulp-trigger --revert`): its subcommand and options must
exist.
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from ulp import manpages
from ulp.console import UsageError

FENCE = re.compile(r"^[ \t]*```(\w*)\n(.*?)^[ \t]*```", re.M | re.S)
INLINE = re.compile(r"`([^`\n]+)`")
COMMAND = re.compile(r"(?<![\w/.:=\"'-])(ulp(?:-[a-z]+)?)(?=[\s)|;\"']|$)")
END = re.compile(r"\)|\||;|&&")
SHELLS = {"sh", "bash", "shell", "console"}
#: what a placeholder of the docs stands for when a command line is parsed
PLACEHOLDERS = {"PID": "1234"}


@dataclass(frozen=True)
class Shown:
    words: tuple[str, ...]
    complete: bool  # a whole command line (shell block), not an inline fragment
    where: str

    def __str__(self) -> str:
        return f"{self.where}: {shlex.join(self.words)}"


def sections(text: str) -> dict[str, str]:
    """The text under each `## ` heading, by heading."""
    parts = re.split(r"^## (.*)$", text, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def shell_lines(text: str) -> list[str]:
    """The lines of the shell blocks, continuation lines joined, comments dropped."""
    lines = []
    for language, body in FENCE.findall(text):
        if language not in SHELLS:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            if line:
                lines.append(line)
    return lines


def commands_in(line: str) -> list[list[str]]:
    found = []
    for match in COMMAND.finditer(line):
        rest = line[match.start():]
        end = END.search(rest)
        text = rest[:end.start()] if end else rest
        try:
            found.append(shlex.split(text))
        except ValueError:  # not shell syntax (a quote or backslash of prose)
            found.append(text.split())
    return found


def section_commands(path: Path, heading: str) -> list[list[str]]:
    """The command lines of the shell blocks under HEADING, in order."""
    return [words for line in shell_lines(sections(path.read_text())[heading])
            for words in commands_in(line)]


def shown_commands(path: Path) -> list[Shown]:
    text = path.read_text()
    shown = [Shown(tuple(words), True, f"{path.name}, shell block")
             for line in shell_lines(text) for words in commands_in(line)]
    prose = FENCE.sub("", text)
    shown += [Shown(tuple(words), False, f"{path.name}, inline code")
              for span in INLINE.findall(prose) for words in commands_in(span)]
    return shown


def problem(shown: Shown) -> str | None:
    """Why the parsers do not accept what the document shows, or None."""
    parsers = manpages.parsers()
    name, *args = shown.words
    parser = parsers.get(name)
    if parser is None:
        return f"{shown}: no command {name} (commands: {', '.join(sorted(parsers))})"
    words = [word for word in args if not word.startswith("-")]
    sub = manpages.all_subcommands(parser)
    chosen = []  # the subcommand, and its own (ulp var get)
    if sub and words:
        if words[0] not in sub:
            return f"{shown}: {name} has no subcommand {words[0]}"
        chosen = [sub[key] for key in (words[0], " ".join(words[:2])) if key in sub]
    known = set(manpages.options(parser)).union(*map(manpages.options, chosen))
    for word in args[:args.index("--")] if "--" in args else args:  # then positionals only
        option = word.split("=", 1)[0]
        if option.startswith("-") and option != "-" and option not in known:
            return f"{shown}: {name} has no option {option}"
    if shown.complete:
        return _parse_error(parser, [PLACEHOLDERS.get(word, word) for word in args], shown)
    return None


def _parse_error(parser: argparse.ArgumentParser, args: list[str], shown: Shown) -> str | None:
    try:
        parser.parse_args(args)
    except UsageError as error:
        return f"{shown}: {error}"
    except SystemExit as leaving:  # --help or --version: fine
        return None if leaving.code in (0, None) else f"{shown}: exit {leaving.code}"
    return None
