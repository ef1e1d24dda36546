"""The patch description file (.desc) that ulp-packer reads.

docs/patch-description.md describes the syntax.  A description may name
several target libraries (ulp's extension of libpulp's format): each
``@TARGET`` line starts a section, and the ``OLD:NEW`` and reference lines
after it belong to that library.  Every syntax error names the
file and the line: ``patch.desc:4: expected old:new``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace

from ulp.errors import ExitCode, UlpError
from ulp.files import open_input
from ulp.metadata import MAX_TARGETS

#: a symbol name: C identifiers, plus the '.' and '$' that some compilers use
SYMBOL = re.compile(r"[A-Za-z_.$][A-Za-z0-9_.$]*")
#: a demangled C++ name: printable, and with something no symbol has
CXX_NAME = re.compile(r"[A-Za-z_.$~(][^\x00-\x1f\x7f]*")
CXX_ONLY = ":()<>~ ,*&[]"
REQUIRES = re.compile(r"requires:\s+(?P<path>\S.*)")
#: a libpulp data reference: #SYMBOL:VARIABLE, #%SYMBOL:VARIABLE for thread-local data;
#: recognised by '#' then '%' or a symbol character, and a ':' before any white space
REFERENCE = re.compile(r"#%?[A-Za-z_.$][^\s:]*:.*")
MAX_DESC_SIZE = 1024 * 1024


@dataclass(frozen=True)
class Pair:
    """One ``old:new`` line."""

    old: str
    new: str
    line: int


@dataclass(frozen=True)
class Requirement:
    """One ``requires:`` line."""

    path: str  # resolved against the description's directory
    line: int


@dataclass(frozen=True)
class ReferenceLine:
    """One ``#symbol:variable`` (``#%symbol:variable`` for thread-local) line."""

    target: str  # a variable (or function) of the target
    variable: str  # the patch .so's variable the runtime fills
    tls: bool
    line: int


@dataclass(frozen=True)
class Section:
    """One ``@TARGET`` line and the lines that belong to it."""

    target: str  # resolved against the description's directory
    target_line: int
    pairs: tuple[Pair, ...]
    references: tuple[ReferenceLine, ...] = ()


@dataclass(frozen=True)
class Description:
    """A description; its first target in ``target``, ``pairs`` and
    ``references``, the others (ulp's extension) in ``more_sections``."""

    path: str  # the description file, as the user named it
    patch_so: str  # resolved against the description's directory
    patch_so_line: int
    target: str  # resolved against the description's directory
    target_line: int
    pairs: tuple[Pair, ...]
    requires: tuple[Requirement, ...]
    references: tuple[ReferenceLine, ...] = ()
    labels: tuple[str, ...] = ()
    more_sections: tuple[Section, ...] = ()

    def where(self, line: int) -> str:
        """``file:line`` for error messages."""
        return f"{self.path}:{line}"

    def parts(self) -> tuple[Description, ...]:
        """One description per target library, in order, each as if it
        named only that one (what the packer checks a library against)."""
        first = Section(self.target, self.target_line, self.pairs, self.references)
        return tuple(replace(self, target=section.target, target_line=section.target_line,
                             pairs=section.pairs, references=section.references,
                             more_sections=())
                     for section in (first, *self.more_sections))


def split_pair(text: str) -> tuple[str, str] | None:
    """``OLD:NEW`` split at its one lone colon (C++ names hold ``::``), or None."""
    lone = [position for position, char in enumerate(text)
            if char == ":" and text[position - 1:position] != ":"
            and text[position + 1:position + 2] != ":"]
    if len(lone) != 1:
        return None
    return text[:lone[0]].strip(), text[lone[0] + 1:].strip()


def is_function_name(name: str) -> bool:
    """A symbol (a C name or a mangled C++ name), or a demangled C++ name as
    c++filt prints it (packer/cxxnames.py resolves it)."""
    return bool(SYMBOL.fullmatch(name)) or (
        bool(CXX_NAME.fullmatch(name)) and any(char in name for char in CXX_ONLY))


class _Builder:
    """Collects the lines of one description, checking each as it comes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.base = os.path.dirname(os.path.abspath(path))
        self.patch_so: tuple[str, int] | None = None
        self.target: tuple[str, int] | None = None  # of the section being read
        self.pairs: list[Pair] = []
        self.requires: list[Requirement] = []
        self.old_lines: dict[str, int] = {}
        self.references: list[ReferenceLine] = []
        self.variable_lines: dict[str, int] = {}
        self.labels: list[str] = []
        self.sections: list[Section] = []  # those read before the current one

    def error(self, line: int, message: str) -> UlpError:
        return UlpError(f"{self.path}:{line}: {message}", ExitCode.BAD_INPUT)

    def resolve(self, relative: str) -> str:
        return os.path.normpath(os.path.join(self.base, relative))

    def add(self, line: int, text: str) -> None:
        if text.startswith("!"):
            self.add_label(line, text[1:].strip())
        elif text.startswith("#"):
            self.add_reference(line, text)
        elif text.startswith("*") and self.patch_so is not None:
            self.add_requirement(line, text[1:].strip())
        elif self.patch_so is None:
            self.add_patch_so(line, text)
        elif text.startswith("@"):
            self.add_target(line, text[1:].strip())
        elif self.target is None:
            raise self.error(line, "expected @TARGET (the prepared library) on the second line")
        elif match := REQUIRES.fullmatch(text):
            self.add_requirement(line, match["path"].strip())
        else:
            self.add_pair(line, text)

    def add_requirement(self, line: int, path: str) -> None:
        if not path:
            raise self.error(line, "expected the path of the required patch (.ulp)")
        self.requires.append(Requirement(self.resolve(path), line))

    def add_label(self, line: int, text: str) -> None:
        """libpulp's ``!`` lines: kept as the patch's labels (a CVE id...)."""
        if not text:
            return
        if not text.isprintable():
            raise self.error(line, "a label must be printable text")
        self.labels.append(text)

    def add_reference(self, line: int, text: str) -> None:
        """``#symbol:variable`` and ``#%symbol:variable`` are libpulp's data
        references; other ``#`` lines are comments."""
        if not REFERENCE.fullmatch(text):
            return
        tls = text.startswith("#%")
        fields = [field.strip() for field in text[2 if tls else 1:].split(":")]
        if len(fields) == 4:
            raise self.error(line, "a reference with explicit offsets (#sym:var:OFFSET:OFFSET) "
                                   "is not supported; name the symbols: #sym:var")
        if len(fields) != 2 or not all(SYMBOL.fullmatch(field) for field in fields):
            raise self.error(line, f"expected #symbol:variable or #%symbol:variable, got {text!r}")
        if self.target is None:
            raise self.error(line, "expected @TARGET (the prepared library) before references")
        target, variable = fields
        if variable in self.variable_lines:
            raise self.error(line, f"{variable} is filled twice (first on line "
                                   f"{self.variable_lines[variable]})")
        self.variable_lines[variable] = line
        self.references.append(ReferenceLine(target, variable, tls, line))

    def add_patch_so(self, line: int, text: str) -> None:
        if text.startswith("@") or text.startswith("requires:") or ":" in text:
            raise self.error(line, "expected the patch .so path first, before @TARGET")
        self.patch_so = (self.resolve(text), line)

    def add_target(self, line: int, path: str) -> None:
        """A first ``@TARGET``, or the next library of a patch of several:
        the lines before it belong to the library before it."""
        if not path:
            raise self.error(line, "expected a library path after '@'")
        resolved = self.resolve(path)
        if self.target is not None:
            self.close_section(line)
            for section in self.sections:
                if os.path.realpath(section.target) == os.path.realpath(resolved):
                    raise self.error(line, f"a target named twice: {path} (first on line "
                                           f"{section.target_line})")
        self.target = (resolved, line)

    def close_section(self, line: int) -> None:
        """The section of the current target is complete: keep it."""
        assert self.target is not None
        if not self.pairs:
            raise self.error(line, f"no old:new lines for the target on line {self.target[1]}:"
                                   " each target needs at least one")
        self.sections.append(Section(self.target[0], self.target[1], tuple(self.pairs),
                                     tuple(self.references)))
        self.pairs, self.references, self.old_lines = [], [], {}

    def add_pair(self, line: int, text: str) -> None:
        old, new = split_pair(text) or ("", "")
        if not is_function_name(old) or not is_function_name(new):
            raise self.error(line, f"expected old:new, got {text!r}")
        if old in self.old_lines:
            raise self.error(line, f"{old} is replaced twice (first on line {self.old_lines[old]})")
        self.old_lines[old] = line
        self.pairs.append(Pair(old, new, line))

    def finish(self, last_line: int) -> Description:
        if self.patch_so is None:
            raise UlpError(f"{self.path}: empty description (no patch .so named)",
                           ExitCode.BAD_INPUT)
        if self.target is None:
            raise self.error(last_line, "no @TARGET line (the prepared library)")
        if not self.pairs and not self.sections:
            raise self.error(last_line, "no old:new lines: the patch replaces nothing")
        self.close_section(last_line)
        if len(self.sections) > MAX_TARGETS:
            raise self.error(self.sections[MAX_TARGETS].target_line,
                             f"more than {MAX_TARGETS} target libraries")
        first, *more = self.sections
        return Description(self.path, self.patch_so[0], self.patch_so[1], first.target,
                           first.target_line, first.pairs, tuple(self.requires),
                           first.references, tuple(self.labels), tuple(more))


def parse_description(text: str, path: str) -> Description:
    """Parse the text of a description; ``path`` locates it and its relative paths."""
    builder = _Builder(path)
    line = 0
    for line, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped:
            builder.add(line, stripped)
    return builder.finish(line)


def read_description(path: str) -> Description:
    """Read and parse the description file at ``path``."""
    with open_input(path) as stream:
        try:
            data = stream.read(MAX_DESC_SIZE + 1)
        except OSError as error:
            raise UlpError(f"{path}: cannot read ({error.strerror})",
                           ExitCode.FILE_MISSING) from None
    if len(data) > MAX_DESC_SIZE:
        raise UlpError(f"{path}: too large for a patch description", ExitCode.BAD_INPUT)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UlpError(f"{path}: not UTF-8 text (byte {error.start})", ExitCode.BAD_INPUT) from None
    if "\0" in text:
        raise UlpError(f"{path}: not a text file (contains NUL)", ExitCode.BAD_INPUT)
    return parse_description(text, path)
