"""Finding any symbol of a target, exported or not: its own symbol tables,
or the separate debug file a distribution ships for a stripped library.

A static or hidden function (or variable) is not in ``.dynsym``; the linker
keeps it in ``.symtab`` unless the file was stripped, and a stripped file
usually names its debug file, as gdb finds it (``info gdb "Separate Debug
Files"``):

* by build-id: ``DEBUG_DIR/.build-id/xx/yyyy.debug``, where ``xxyyyy`` is the
  hex GNU build-id;
* by ``.gnu_debuglink``: the name it holds, looked for next to the file, in
  its ``.debug/`` directory, and under ``DEBUG_DIR`` + the file's directory.

``DEBUG_DIR`` is ``/usr/lib/debug``, or ``ULP_DEBUG_DIR`` when set (like
gdb's ``set debug-file-directory``).  A debug file counts only if its
build-id is the target's (when the target has one), so a debug file of
another build never gives a wrong address.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ulp.elfinfo import build_id, open_elf
from ulp.errors import UlpError

DEFAULT_DEBUG_DIR = "/usr/lib/debug"


@dataclass(frozen=True)
class Symbol:
    name: str
    value: int  # link-time address (st_value; for TLS: offset in the TLS block)
    size: int
    kind: str  # STT_FUNC, STT_OBJECT, STT_TLS, ...
    source: str  # the file whose table gave it, for messages


class SymbolTables:
    """Every defined symbol of a target: its ``.symtab`` and ``.dynsym``, or
    those of its debug file when it has no ``.symtab``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.by_name: dict[str, list[Symbol]] = {}
        self.debug_file: str | None = None
        with open_elf(path) as elf:
            own_build_id = build_id(elf)
            has_symtab = elf.get_section_by_name(".symtab") is not None
            self._add(elf, path, (".dynsym", ".symtab"))
            candidates = [] if has_symtab else _debug_candidates(elf, path, own_build_id)
        for candidate in candidates:
            if self._add_debug_file(candidate, own_build_id):
                self.debug_file = candidate
                break
        self.stripped = not has_symtab and self.debug_file is None

    def _add(self, elf, source: str, sections: tuple[str, ...]) -> None:
        for section_name in sections:
            table = elf.get_section_by_name(section_name)
            if table is None or table["sh_type"] not in ("SHT_SYMTAB", "SHT_DYNSYM"):
                continue
            for symbol in table.iter_symbols():
                if not symbol.name or symbol["st_shndx"] in ("SHN_UNDEF", "SHN_ABS"):
                    continue
                found = Symbol(symbol.name, symbol["st_value"], symbol["st_size"],
                               symbol["st_info"]["type"], source)
                known = self.by_name.setdefault(symbol.name.split("@", 1)[0], [])
                if all(other.value != found.value for other in known):
                    known.append(found)

    def _add_debug_file(self, candidate: str, own_build_id: bytes) -> bool:
        try:
            with open_elf(candidate) as elf:
                if own_build_id and build_id(elf) != own_build_id:
                    return False
                if elf.get_section_by_name(".symtab") is None:
                    return False
                self._add(elf, candidate, (".symtab",))
                return True
        except (UlpError, OSError):
            return False

    def lookup(self, name: str) -> list[Symbol]:
        """The defined symbols named ``name`` (several for static symbols of
        the same name in different source files)."""
        return list(self.by_name.get(name, ()))


def debug_dir() -> str:
    return os.environ.get("ULP_DEBUG_DIR") or DEFAULT_DEBUG_DIR


def _debuglink(elf) -> str | None:
    section = elf.get_section_by_name(".gnu_debuglink")
    if section is None:
        return None
    name = section.data().split(b"\0", 1)[0]
    try:
        text = name.decode()
    except UnicodeDecodeError:
        return None
    return text if text and "/" not in text else None


def _debug_candidates(elf, path: str, own_build_id: bytes) -> list[str]:
    """Where a debug file for ``path`` may be, in gdb's order."""
    root = debug_dir()
    candidates = []
    if own_build_id:
        text = own_build_id.hex()
        candidates.append(os.path.join(root, ".build-id", text[:2], text[2:] + ".debug"))
    link = _debuglink(elf)
    if link:
        directory = os.path.dirname(os.path.realpath(path))
        candidates += [os.path.join(directory, link), os.path.join(directory, ".debug", link),
                       root + os.path.join(directory, link)]
    return [candidate for candidate in candidates if os.path.isfile(candidate)]
