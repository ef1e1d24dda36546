"""What the documents tell users to run stays true (issue 10 point 6 for
docs/realworld.md's how-to; the same check for every other document): each
ulp command and option shown exists in the commands' parsers (ulp/manpages.py),
whole command lines parse, the build flags are what `ulp flags` prints, and
the how-to's SQLite build and fix description are what realworld/ runs."""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path

import doccommands
import pytest

from support import ROOT, tool
from ulp.packer.desc import parse_description

sys.path.insert(0, str(ROOT / "realworld"))

import rwlib  # noqa: E402
import sqlite_suite  # noqa: E402

REALWORLD_DOC = ROOT / "docs" / "realworld.md"
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
#: inline code that names something else than a command: the runtime's
#: agent thread, and the domain strings of the patch file's hashes
NOT_COMMANDS = {("runtime-abi.md", ("ulp-agent",)), ("patch-format.md", ("ulp", "patch"))}


def realworld_sections() -> dict[str, str]:
    return doccommands.sections(REALWORLD_DOC.read_text())


def ulp_flags() -> list[str]:
    done = tool("ulp", "flags")
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_the_realworld_how_to_shows_every_step_as_a_command() -> None:
    """The commands the how-to shows: prepare, then pack, apply, check, revert."""
    shown = [shown.words for shown in doccommands.shown_commands(REALWORLD_DOC)
             if shown.complete]
    assert ("ulp", "flags") in shown
    ship = doccommands.section_commands(REALWORLD_DOC, "How to: ship a fix for it")
    assert [words[:2] for words in ship] == [
        ["ulp-packer", "sqlite_fix.desc"], ["ulp-trigger", "PID"], ["ulp", "status"],
        ["ulp-trigger", "--revert"]]
    assert any(words[0] == "ulp-prepare" and "-o" in words for words in shown)


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_every_command_and_option_a_document_shows_exists(doc: Path) -> None:
    """Every `ulp`/`ulp-*` command, subcommand and option in a shell block or
    inline code of the document is one the parsers have; whole command
    lines of shell blocks parse."""
    problems = [problem for shown in doccommands.shown_commands(doc)
                if (doc.name, shown.words[:1]) not in NOT_COMMANDS
                and (doc.name, shown.words[:2]) not in NOT_COMMANDS
                and (problem := doccommands.problem(shown))]
    assert not problems, "\n".join(problems)


def test_the_checker_finds_commands_that_do_not_exist(tmp_path: Path) -> None:
    """A document with a misspelt option, an unknown subcommand, an unknown
    command, and a command line missing its argument: each is reported."""
    doc = tmp_path / "bad.md"
    doc.write_text("Run `ulp-trigger --revrt` or `ulp statuss`.\n\n"
                   "   ```sh\n   ulp-prepare lib.so \\\n     --output-dir x  # a comment\n"
                   "   CFLAGS=\"-O2 $(ulp-flags)\" make\n   ulp status\n   ```\n")
    problems = [doccommands.problem(shown) for shown in doccommands.shown_commands(doc)]
    assert len(problems) == 5 and all(problems), problems
    for expected in ("ulp-prepare has no option --output-dir", "no command ulp-flags",
                     "ulp status: the following arguments are required: PID",
                     "ulp-trigger has no option --revrt", "ulp has no subcommand statuss"):
        assert sum(expected in problem for problem in problems) == 1, (expected, problems)


def test_realworld_args_of_the_doc_exist() -> None:
    """`make realworld REALWORLD_ARGS="..."` as the doc shows it parses with
    realworld/run.py's parser."""
    spec = importlib.util.spec_from_file_location("realworld_run", ROOT / "realworld" / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    shown = [match for line in doccommands.shell_lines(REALWORLD_DOC.read_text())
             for match in re.findall(r"REALWORLD_ARGS=(\"[^\"]*\"|\S+)", line)]
    assert shown
    for value in shown:
        args = run.build_parser().parse_args(shlex.split(shlex.split(value)[0]))
        assert args.only or args.cycles or args.rounds is not None


def test_the_flags_the_how_to_builds_with_are_what_ulp_flags_prints() -> None:
    """Every build line (CFLAGS=...) of docs/realworld.md adds $(ulp flags);
    a flag the doc spells out for patchable entries is one `ulp flags`
    prints; `ulp-prepare --cflags` prints the same; and make realworld
    builds with exactly that command's output (rwlib.ulp_flags)."""
    flags = ulp_flags()
    assert any(flag.startswith("-fpatchable-function-entry=") for flag in flags), flags
    prepare = tool("ulp-prepare", "--cflags")
    assert prepare.returncode == 0 and prepare.stdout.split() == flags
    assert rwlib.ulp_flags() == flags
    text = REALWORLD_DOC.read_text()
    builds = [line for line in doccommands.shell_lines(text) if line.startswith("CFLAGS=")]
    assert builds and all("$(ulp flags)" in line for line in builds), builds
    spelled = set(re.findall(r"-fpatchable-function-entry=\S+?(?=[`\s)]|$)", text))
    assert spelled <= set(flags), spelled


def test_the_sqlite_build_of_the_how_to_is_what_make_realworld_runs() -> None:
    """The how-to says realworld/sqlite_suite.py does exactly what it shows:
    the same source package and version, the same flags and configure
    options (those the doc spells out), the same library file."""
    section = realworld_sections()["How to: make a distribution's library live-patchable"]
    lines = doccommands.shell_lines(section)
    assert f"apt-get source {sqlite_suite.PACKAGE}={sqlite_suite.VERSION}" in lines
    cflags = next(line for line in lines if line.startswith("CFLAGS="))
    literal = [word for word in re.sub(r"\$\([^)]*\)", "", cflags).split("=", 1)[1]
               .strip('"').split() if word.startswith("-")]
    assert literal and set(literal) <= set(sqlite_suite.DEBIAN_DEFS), literal
    configure = next(line for line in lines if line.startswith("./configure"))
    options = [word for word in configure.split() if word.startswith("--")]
    assert options and set(options) <= set(sqlite_suite.CONFIGURE), options
    prepare = next(words for line in lines for words in doccommands.commands_in(line)
                   if words[0] == "ulp-prepare")
    assert Path(prepare[1]).name == Path(prepare[3]).name == sqlite_suite.REAL


def test_the_fix_description_of_the_how_to_is_the_suites_and_parses() -> None:
    """The patch description the how-to shows is the one sqlite_suite writes
    (comments aside), and the packer's parser accepts it."""
    section = realworld_sections()["How to: ship a fix for it"]
    block = next(body for language, body in doccommands.FENCE.findall(section)
                 if not language)
    shown = [line.strip() for line in block.splitlines() if line.strip()]
    target = Path(shown[1].removeprefix("@"))
    written = [line for line in sqlite_suite.fix_description(shown[0], target).splitlines()
               if line and not line.startswith("#")]
    assert shown == written
    desc = parse_description("\n".join(shown) + "\n", "realworld.md")
    assert [label.split()[0] for label in desc.labels] == ["CVE-2025-6965"]
    assert [(pair.old, pair.new) for pair in desc.pairs] == [
        ("analyzeAggregate", "analyzeAggregate_fixed")]
