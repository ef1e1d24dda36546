"""Manual pages and bash completion are generated from the parsers (ulp/manpages.py):
every option a command has is documented and completed, and nothing else is."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from support import ROOT
from ulp import manpages

OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def documented_options(page: str) -> set[str]:
    """The options of a page's option items (.TP then .B line)."""
    items = re.findall(r"^\.TP\n\.B (.*)$", page, flags=re.M)
    return {option for item in items for option in OPTION.findall(item.replace("\\-", "-"))}


def every_option(parser) -> set[str]:
    found = set(manpages.options(parser))
    for sub in manpages.all_subcommands(parser).values():
        found |= set(manpages.options(sub))
    return found


def test_every_option_is_documented_and_nothing_else(tmp_path: Path) -> None:
    written = manpages.write_all(tmp_path)
    assert {path.name for path in written} >= {"ulp.1", "ulp-trigger.1", "ulp-packer.1",
                                              "ulp-prepare.1"}
    for name, parser in manpages.parsers().items():
        page = (tmp_path / "man1" / f"{name}.1").read_text()
        assert page.startswith(f'.TH "{name.upper()}" 1')
        assert documented_options(page) == every_option(parser), name
        for command in manpages.all_subcommands(parser):
            assert f".SS {command}\n" in page


def test_bash_completes_options_and_subcommands(tmp_path: Path) -> None:
    manpages.write_all(tmp_path)

    def complete(command: str, *words: str) -> list[str]:
        script = tmp_path / "bash-completion" / command
        line = " ".join((command, *words))
        shell = (f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words)}; "
                 f"_{command.replace('-', '_')}; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
        done = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout.split()

    assert "--revert-all" in complete("ulp-trigger", "--rev")
    assert set(complete("ulp", "pa")) == {"patches"}
    assert "--process" in complete("ulp", "patches", "--pro")
    assert complete("ulp-prepare", "--cfl") == ["--cflags"]
    assert set(complete("ulp", "var", "")) >= {"get", "set"}
    assert complete("ulp", "var", "set", "--ty") == ["--type"]
    assert "--json" in complete("ulp", "patches", "-p", "123", "--js")


def test_the_shipped_pages_are_the_generated_ones(tmp_path: Path) -> None:
    """man/ is what `pip install .` installs: it must be what the parsers give
    now (after changing a command's options, run `make man`)."""
    written = manpages.write_all(tmp_path)
    shipped = ROOT / "man"
    assert sorted(path.relative_to(shipped).as_posix() for path in shipped.rglob("*")
                  if path.is_file()) == sorted(
        path.relative_to(tmp_path).as_posix() for path in written)
    for path in written:
        assert (shipped / path.relative_to(tmp_path)).read_text() == path.read_text(), \
            f"man/{path.relative_to(tmp_path)} is stale: run make man"
