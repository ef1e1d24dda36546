"""The little the trigger reads from the ELF files mapped in a process.

ulp-trigger needs, per mapped object, only its section table, one dynamic
symbol (``ulp_mailbox``) and, in a prepared library, ``.ulp.data`` and the
``.dynsym`` names of its trampolines.  That is read here with ``struct`` and
``os.pread``, a few hundred microseconds per object: pyelftools (which the
packer and ulp-prepare use for everything else) takes 18 ms to import and
3-5 ms to index the sections of each object, and the trigger looks at every
object of every process it is given (docs/trigger.md, "Speed").

Every offset and size read from the file is checked against the file before
use: a damaged file gives ``UlpError`` (BAD_INPUT), never another exception.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, replace

from ulp import layout
from ulp.errors import ExitCode, UlpError

ELF_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
SECTION_HEADER = struct.Struct("<IIQQQQIIQQ")
PROGRAM_HEADER = struct.Struct("<IIQQQQQQ")
SYMBOL = struct.Struct("<IBBHQQ")
EM_X86_64 = 62
PT_LOAD = 1
SHN_UNDEF = 0
MAX_TABLE = 64 << 20  # no section this reader needs is larger


@dataclass(frozen=True)
class Section:
    """A section header of the file."""

    name: str
    address: int
    offset: int
    size: int


class ElfScan:
    """One ELF x86-64 object, read on demand from an open descriptor."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as error:
            raise UlpError(f"{path}: cannot read ({error.strerror})",
                           ExitCode.FILE_MISSING) from None
        try:
            self._size = os.fstat(self._fd).st_size
            self.sections = self._read_sections()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> ElfScan:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _malformed(self, why: str) -> UlpError:
        return UlpError(f"{self.path}: malformed ELF file ({why})", ExitCode.BAD_INPUT)

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` of the file, all of them or BAD_INPUT."""
        if offset < 0 or size < 0 or size > MAX_TABLE or offset + size > self._size:
            raise self._malformed(f"{size} bytes at offset {offset:#x} are outside the file")
        data = os.pread(self._fd, size, offset)
        if len(data) != size:
            raise self._malformed("short read")
        return data

    def _read_sections(self) -> dict[str, Section]:
        if self._size < ELF_HEADER.size:
            raise UlpError(f"{self.path}: not an ELF file", ExitCode.BAD_INPUT)
        header = ELF_HEADER.unpack(self.read(0, ELF_HEADER.size))
        ident, machine = header[0], header[2]
        if ident[:4] != b"\x7fELF":
            raise UlpError(f"{self.path}: not an ELF file", ExitCode.BAD_INPUT)
        if ident[4] != 2 or ident[5] != 1 or machine != EM_X86_64:
            raise UlpError(f"{self.path}: not an x86-64 ELF file", ExitCode.BAD_INPUT)
        self._phoff, self._phentsize, self._phnum = header[5], header[9], header[10]
        shoff, shentsize, shnum, shstrndx = header[6], header[11], header[12], header[13]
        if shnum == 0:
            return {}
        if shentsize != SECTION_HEADER.size or shstrndx >= shnum:
            raise self._malformed("section header table")
        table = self.read(shoff, shnum * shentsize)
        raw = list(SECTION_HEADER.iter_unpack(table))
        names = self.read(raw[shstrndx][4], raw[shstrndx][5])
        sections = {}
        for name_offset, kind, _flags, address, offset, size, *_ in raw:
            if kind == 8:  # SHT_NOBITS: nothing in the file
                size = 0
            name = _string(names, name_offset)
            if name is not None:
                sections.setdefault(name, Section(name, address, offset, size))
        return sections

    def section_data(self, name: str) -> bytes | None:
        section = self.sections.get(name)
        return None if section is None else self.read(section.offset, section.size)

    def dynamic_symbols(self, wanted=None) -> list[tuple[str, int, int]]:
        """(name, value, section index) of the .dynsym entries for which
        ``wanted(value, section index)`` is true (all without ``wanted``):
        only their names are decoded."""
        symbols = self.section_data(".dynsym")
        strings = self.section_data(".dynstr")
        if symbols is None or strings is None:
            return []
        result = []
        for name_offset, _info, _other, shndx, value, _size in SYMBOL.iter_unpack(
                symbols[: len(symbols) - len(symbols) % SYMBOL.size]):
            if wanted is not None and not wanted(value, shndx):
                continue
            name = _string(strings, name_offset)
            if name is None:
                raise self._malformed("a symbol name outside .dynstr")
            result.append((name, value, shndx))
        return result

    def dynamic_symbol_value(self, wanted: str) -> int | None:
        """st_value of the defined dynamic symbol ``wanted``, or None."""
        symbols = self.section_data(".dynsym")
        strings = self.section_data(".dynstr")
        if symbols is None or strings is None:
            return None
        # the name's offsets in the string table first: one bytes search, not a decode per symbol
        key = b"\0" + wanted.encode() + b"\0"
        offsets = set()
        at = strings.find(key)
        while at >= 0:
            offsets.add(at + 1)
            at = strings.find(key, at + 1)
        if not offsets:
            return None
        for name_offset, _info, _other, shndx, value, _size in SYMBOL.iter_unpack(
                symbols[: len(symbols) - len(symbols) % SYMBOL.size]):
            if name_offset in offsets and shndx != SHN_UNDEF:
                return value
        return None

    def read_vaddr(self, vaddr: int, size: int) -> bytes:
        """The file bytes that load at ``vaddr`` (from a PT_LOAD segment)."""
        if self._phentsize != PROGRAM_HEADER.size:
            raise self._malformed("program header table")
        table = self.read(self._phoff, self._phnum * self._phentsize)
        for kind, _flags, offset, start, _paddr, filesz, _memsz, _align in \
                PROGRAM_HEADER.iter_unpack(table):
            if kind == PT_LOAD and start <= vaddr and vaddr + size <= start + filesz:
                return self.read(offset + vaddr - start, size)
        raise self._malformed(f"address {vaddr:#x} is not in the file")


def _string(table: bytes, offset: int) -> str | None:
    end = table.find(b"\0", offset)
    if offset >= len(table) or end < 0:
        return None
    return table[offset:end].decode(errors="replace")


# -- a prepared library, as the trigger needs it ---------------------------------

@dataclass(frozen=True)
class TargetFunction:
    """A function of a prepared library, by its descriptor index."""

    names: tuple[str, ...]  # every .dynsym name that points at its trampoline
    entry: int  # link-time address of the function
    has_endbr64: bool

    @property
    def name(self) -> str:
        return self.names[0]


@dataclass(frozen=True)
class TargetLibrary:
    """A prepared library as its file describes it."""

    path: str
    lib_desc_vaddr: int
    desc: layout.LibDesc
    functions: tuple[TargetFunction, ...]

    @property
    def identity(self) -> bytes:
        return self.desc.identity


#: what was read from files, by file version (file_version) and what was
#: read: a result, or the UlpError that said it is not there; bounded
_READ: dict[tuple, object] = {}
READ_CACHE_MAX = 1024
#: errors that depend only on the file's content, and so are kept with it
CONTENT_ERRORS = (ExitCode.NOT_PATCHABLE, ExitCode.BAD_INPUT)


def once_per_version(path: str, version: tuple, what: str, read):
    """``read(path)``, or what it gave or raised for the same ``what`` on a
    file of the same ``version``, whatever path named it then.

    Every process of a fleet maps the same files, each under a path of its
    own (/proc/PID/map_files/...): reading them again per process was most
    of the trigger's work (4,001 processes), and the files that are not
    what is looked for (libc, ld.so, the program) the costliest part of it.
    An error that depends on the content only (not prepared, malformed) is
    kept too, and raised again with the path of this call.
    """
    found = kept_per_version(path, version, what, read)
    if isinstance(found, UlpError):
        raise for_path(found, path)
    return found


def for_path(error: UlpError, path: str) -> UlpError:
    """A kept error (kept_per_version) as it reads for the file at ``path``."""
    message, first = str(error), getattr(error, "first_path", path)
    if message.startswith(first):
        message = path + message[len(first):]
    return UlpError(message, error.exit_code)


def kept_per_version(path: str, version: tuple, what: str, read):
    """The same as once_per_version, the error given back instead of raised
    (a UlpError whose ``first_path`` is the path it was found with): cheaper
    when only its code matters."""
    key = (version, what)
    found = _READ.get(key)
    if found is None:
        try:
            found = read(path)
        except UlpError as error:
            if error.exit_code not in CONTENT_ERRORS:
                raise
            error.first_path = path
            found = error
        if len(_READ) >= READ_CACHE_MAX:
            del _READ[next(iter(_READ))]  # the oldest
        _READ[key] = found
    return found


def read_prepared(path: str, version: tuple | None = None) -> TargetLibrary:
    """The prepared library at ``path``; NOT_PATCHABLE if it is not one.

    The same facts as ulp.prepared.PreparedLibrary (tests/test_operators.py
    compares the two on the same file), read without pyelftools, once per
    version of the file (``once_per_version``; ``version``: the caller's
    file_version(path), if it has it).
    """
    if version is None:
        try:
            version = file_version(path)
        except OSError:
            return _read_prepared(path)  # says why it cannot be read
    library = once_per_version(path, version, "prepared", _read_prepared)
    return library if library.path == path else replace(library, path=path)


def prepared_or_error(path: str, version: tuple) -> TargetLibrary | UlpError:
    """read_prepared, its content error given back (see kept_per_version)."""
    library = kept_per_version(path, version, "prepared", _read_prepared)
    if isinstance(library, UlpError) or library.path == path:
        return library
    return replace(library, path=path)


def mapped_version(process, path: str, start: int) -> tuple[str, tuple]:
    """A path that opens the object ``path`` mapped at ``start`` in
    ``process`` (a ulp.process.Process), and that file's version; OSError
    if it cannot be looked at.

    /proc/PID/map_files (root) is tried first with one stat; the full
    choice of Process.object_file (which checks access) only without it.
    """
    direct = process.map_files_path(path, start)
    if direct is not None:
        try:
            return direct, file_version(direct)
        except OSError:
            pass
    source = process.object_file(path, start)
    return source, file_version(source)


def _read_prepared(path: str) -> TargetLibrary:
    with ElfScan(path) as elf:
        data = elf.sections.get(layout.DATA_SECTION)
        if data is None:
            raise UlpError(f"{path}: not prepared for live patching (run ulp-prepare on it)",
                           ExitCode.NOT_PATCHABLE)
        try:
            desc = layout.LibDesc.unpack(elf.read(data.offset, min(data.size,
                                                                   layout.LIB_DESC_SIZE)))
        except ValueError as error:
            raise UlpError(f"{path}: {error}", ExitCode.BAD_INPUT) from None
        funcs_base = data.address + desc.funcs_delta
        tramp_base = data.address + desc.trampolines_delta
        names: dict[int, list[str]] = {}
        extent = desc.nfuncs * layout.TRAMPOLINE_SIZE

        def trampoline(value: int, shndx: int) -> bool:
            return shndx != SHN_UNDEF and 0 <= value - tramp_base < extent

        for name, value, _ in elf.dynamic_symbols(trampoline):
            names.setdefault((value - tramp_base) // layout.TRAMPOLINE_SIZE, []).append(name)
        table = elf.read_vaddr(funcs_base, desc.nfuncs * layout.FUNC_DESC_SIZE)
        functions = []
        for index in range(desc.nfuncs):
            start = index * layout.FUNC_DESC_SIZE
            fdesc = layout.FuncDesc.unpack(table[start:start + layout.FUNC_DESC_SIZE])
            functions.append(TargetFunction(tuple(names.get(index, [f"#{index}"])),
                                            funcs_base + start + fdesc.entry_delta,
                                            fdesc.has_endbr64))
        return TargetLibrary(path, data.address, desc, tuple(functions))


def file_version(path: str) -> tuple:
    """What tells one version of a file from another, to cache what was read from it."""
    info = os.stat(path)
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
