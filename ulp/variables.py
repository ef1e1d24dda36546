"""Globals of a running process, read and written by name (``ulp var``).

A variable is named ``LIB:SYMBOL``: LIB a mapped object's path, its file
name, or its file name without the version (``libfoo.so`` for
``libfoo.so.1``); an empty LIB names the program itself.  The symbol comes
from the mapped file's own tables (``.dynsym``, ``.symtab``, or a separate
debug file: ulp/symbols.py), read through /proc/PID/map_files, so it is the
file that runs even if the one on disk was replaced.  Only data counts: a
function, a thread-local variable or an undefined symbol is refused.

Values have a type: ``i8`` .. ``u64``, ``f32``, ``f64`` (the variable's size
must be the type's) or ``str`` (a char array: the bytes up to its first NUL;
written with its NUL, the rest of the array zeroed).  Reading goes through
/proc/PID/mem without stopping the process; writing stops every thread
first (trigger/codewrite.py), so that no thread ever sees half a value, and
lets them go once the bytes are in.  The ulp runtime is not needed.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ulp.errors import ExitCode, UlpError, one_line
from ulp.process import Process

if TYPE_CHECKING:  # ulp.symbols needs pyelftools: not for `ulp --help`
    from ulp.symbols import Symbol

#: struct format and size of each number type
NUMBER_TYPES = {
    "i8": "<b", "u8": "<B", "i16": "<h", "u16": "<H", "i32": "<i", "u32": "<I",
    "i64": "<q", "u64": "<Q", "f32": "<f", "f64": "<d",
}
TYPES = (*NUMBER_TYPES, "str")
_DEFAULT_BY_SIZE = {1: "i8", 2: "i16", 4: "i32", 8: "i64"}


class VariableError(UlpError):
    """A name, type or value the command line got wrong."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class Variable:
    spec: str  # LIB:SYMBOL as given
    object_path: str  # the mapped object it belongs to
    address: int
    size: int


def find_variable(process: Process, spec: str) -> Variable:
    """The variable ``spec`` (``LIB:SYMBOL``) names in ``process``."""
    library, colon, name = spec.rpartition(":")
    if not colon or not name:
        raise VariableError(f"{spec}: name a variable as LIB:SYMBOL (:SYMBOL for the program)")
    path, start = _mapped_object(process, library)
    symbol = _data_symbol(process.object_file(path, start), spec, name)
    if library:
        interposed = _program_copy(process, path, start, name, symbol)
        if interposed is not None:
            return Variable(spec, *interposed)
    address = _load_bias(process.object_file(path, start), start) + symbol.value
    return Variable(spec, path, address, symbol.size)


def _program_copy(process: Process, path: str, start: int, name: str,
                  symbol: Symbol) -> tuple[str, int, int] | None:
    """Where the program keeps its own copy of a library's exported
    variable, if it does: (program path, address, size).

    A program that uses a library's variable directly gets a copy of it
    (an R_X86_64_COPY relocation) and its definition comes first in the
    lookup, so the library's own code uses that copy too: the library's
    variable is then never read again, and writing it would change nothing
    the process sees."""
    from ulp.elfinfo import dynamic_symbol_value, open_elf

    with open_elf(process.object_file(path, start)) as elf:
        if dynamic_symbol_value(elf, name) is None:
            return None     # not exported: the library's own references only
    objects = process.mapped_objects(reuse=True)
    program = _program_path(process)
    if program not in objects or program == path:
        return None
    file = process.object_file(program, objects[program])
    with open_elf(file) as elf:
        value = dynamic_symbol_value(elf, name)
    if value is None:
        return None
    return program, _load_bias(file, objects[program]) + value, symbol.size


def _mapped_object(process: Process, library: str) -> tuple[str, int]:
    objects = process.mapped_objects()
    if not library:
        program = _program_path(process)
        if program not in objects:
            raise UlpError(f"cannot find the program of PID {process.pid} among its "
                           "mappings", ExitCode.LIBRARY_NOT_LOADED)
        return program, objects[program]
    matches = [path for path in objects if _names(path, library)]
    if not matches:
        raise UlpError(f"{library} is not loaded in process {process.pid}",
                       ExitCode.LIBRARY_NOT_LOADED)
    if len(matches) > 1:
        raise VariableError(f"{library} names {len(matches)} objects of process "
                            f"{process.pid}: {', '.join(sorted(matches))}; give the path")
    return matches[0], objects[matches[0]]


def _names(path: str, library: str) -> bool:
    """Does ``library`` (a path, a file name, or a file name without its
    version suffix) name the mapped object ``path``?"""
    if "/" in library:
        return path == library
    base = os.path.basename(path)
    return base == library or base.startswith(library + ".")


def _program_path(process: Process) -> str:
    try:
        return os.readlink(f"/proc/{process.pid}/exe").removesuffix(" (deleted)")
    except OSError:
        raise process.gone() from None


def _data_symbol(path: str, spec: str, name: str) -> Symbol:
    from ulp.symbols import SymbolTables

    found = SymbolTables(path).lookup(name)
    if not found:
        raise VariableError(f"{spec}: no symbol {name} in {path}")
    data = [symbol for symbol in found if symbol.kind == "STT_OBJECT" and symbol.size > 0]
    if not data:
        kind = {"STT_FUNC": "a function", "STT_GNU_IFUNC": "a function",
                "STT_TLS": "thread-local: each thread has its own"}.get(found[0].kind,
                                                                      "not a variable")
        raise VariableError(f"{spec} is {kind}, not a global variable")
    if len(data) > 1:
        raise VariableError(f"{spec}: {len(data)} variables of that name (static ones of "
                            "several source files); ulp var cannot tell which")
    return data[0]


def _load_bias(path: str, start: int) -> int:
    """What to add to a link-time address of ``path``, mapped (offset 0) at ``start``."""
    from ulp.elfinfo import open_elf

    with open_elf(path) as elf:
        if elf["e_type"] != "ET_DYN":
            return 0
        lowest = min((segment["p_vaddr"] for segment in elf.iter_segments()
                      if segment["p_type"] == "PT_LOAD"), default=0)
    return start - (lowest & ~0xFFF)


def _covering(process: Process, variable: Variable, permission: str) -> None:
    """Refuse unless the variable lies in mappings with ``permission`` ("r" or "w")."""
    at, end = variable.address, variable.address + variable.size
    for mapping in sorted(process.mappings(), key=lambda m: m.start):
        if mapping.start <= at < mapping.end and permission in mapping.perms:
            at = mapping.end
            if at >= end:
                return
    if permission == "w":
        raise VariableError(f"{variable.spec} is read-only in process {process.pid} (a "
                            "constant): refusing to write it")
    raise UlpError(f"{variable.spec} at {variable.address:#x} is not in readable memory of "
                   f"process {process.pid}", ExitCode.TARGET_MISMATCH)


def value_type(variable: Variable, wanted: str | None) -> str:
    """The type to use: ``wanted``, checked against the size, or the
    default by size ("bytes" when none fits)."""
    if wanted is None:
        return _DEFAULT_BY_SIZE.get(variable.size, "bytes")
    if wanted in NUMBER_TYPES and struct.calcsize(NUMBER_TYPES[wanted]) != variable.size:
        raise VariableError(f"{variable.spec} is {variable.size} bytes, --type {wanted} is "
                            f"{struct.calcsize(NUMBER_TYPES[wanted])}")
    return wanted


def read_value(process: Process, variable: Variable, kind: str) -> int | float | str:
    _covering(process, variable, "r")
    data = process.read(variable.address, variable.size)
    if kind in NUMBER_TYPES:
        return struct.unpack(NUMBER_TYPES[kind], data)[0]
    if kind == "str":  # bytes that are not UTF-8 as \xNN
        return data.split(b"\0", 1)[0].decode(errors="backslashreplace")
    return data.hex()


def encode_value(variable: Variable, kind: str, text: str) -> bytes:
    """The bytes ``text`` is as a value of type ``kind`` for ``variable``."""
    if kind == "str":
        data = os.fsencode(text) + b"\0"
        if len(data) > variable.size:
            raise VariableError(f"{variable.spec} holds {variable.size - 1} characters at "
                                f"most; {one_line(text)!r} is {len(data) - 1} bytes")
        return data.ljust(variable.size, b"\0")
    form = NUMBER_TYPES[kind]
    if kind.startswith("f"):
        try:
            number = float(text)
        except ValueError:
            raise VariableError(f"{one_line(text)!r} is not a number") from None
        try:
            data = struct.pack(form, number)
        except OverflowError:
            raise VariableError(f"{one_line(text)} is out of range for {kind}") from None
        if kind == "f32" and math.isinf(struct.unpack(form, data)[0]) and \
                not math.isinf(number):
            raise VariableError(f"{one_line(text)} is out of range for {kind}")
        return data
    try:
        number = int(text, 0)
    except ValueError:
        raise VariableError(f"{one_line(text)!r} is not an integer (decimal, or 0x.. "
                            "hexadecimal)") from None
    try:
        return struct.pack(form, number)
    except struct.error:
        bits = 8 * struct.calcsize(form)
        low, high = (0, 2 ** bits - 1) if kind.startswith("u") else \
            (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        raise VariableError(f"{number} is out of range for {kind} ({low}..{high})") from None


def write_value(process: Process, variable: Variable, data: bytes, timeout: float) -> None:
    """Write ``data`` with every thread of ``process`` stopped."""
    from ulp.trigger.codewrite import all_threads_stopped
    from ulp.trigger.tracee import block_sigchld

    _covering(process, variable, "w")
    block_sigchld()
    with all_threads_stopped(process, {}, timeout):
        process.write(variable.address, data)

