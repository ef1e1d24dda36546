"""Reading ELF files (pyelftools), with errors a user can act on."""

from __future__ import annotations

import contextlib
import io
import os
import struct
import weakref
from collections.abc import Iterator
from typing import BinaryIO

from elftools.common.exceptions import ELFError
from elftools.construct import ConstructError
from elftools.elf.elffile import ELFFile

from ulp.errors import ExitCode, UlpError
from ulp.files import open_input

# pyelftools reports a damaged file with more than ELFError: a bad offset
# surfaces as OSError (negative seek), struct.error, a construct error (a
# string without its NUL), a zero entry size or a None where a section was
# expected.
MALFORMED_ELF_ERRORS = (ELFError, ConstructError, OSError, ValueError, AttributeError,
                        TypeError, KeyError, IndexError, ZeroDivisionError, struct.error,
                        UnicodeDecodeError)


@contextlib.contextmanager
def open_elf(path: str) -> Iterator[ELFFile]:
    """Open ``path`` as an ELF file or raise a UlpError naming the problem."""
    with open_input(path) as stream, _elf_of(stream, path) as elf:
        yield elf


@contextlib.contextmanager
def open_elf_bytes(data: bytes, name: str) -> Iterator[ELFFile]:
    """``data`` (the contents of the file ``name``) as an ELF file, like ``open_elf``:
    what is checked is exactly the bytes a caller goes on to use."""
    with _elf_of(io.BytesIO(data), name) as elf:
        yield elf


# A compressed section may legitimately grow this much when inflated; a
# larger claim is damage (pyelftools would try to allocate it).
MAX_INFLATION = 64
_SHF_COMPRESSED = 0x800


def _stream_size(stream: BinaryIO) -> int:
    if isinstance(stream, io.BytesIO):
        return len(stream.getbuffer())
    return os.fstat(stream.fileno()).st_size


def _check_extents(elf: ELFFile, size: int) -> None:
    """Every segment and section lies within the file, and no compressed
    section claims more than it can hold: pyelftools reads what the headers
    claim, and a damaged size would make it allocate gigabytes."""
    for segment in elf.iter_segments():
        if segment["p_offset"] + segment["p_filesz"] > size:
            raise ValueError("a segment is past the end of the file")
    for section in elf.iter_sections():
        if section["sh_type"] in ("SHT_NOBITS", "SHT_NULL"):
            continue
        if section["sh_offset"] + section["sh_size"] > size:
            raise ValueError(f"section {section.name or '?'} is past the end of the file")
        if (section["sh_flags"] & _SHF_COMPRESSED
                and section.data_size > MAX_INFLATION * max(section["sh_size"], 1)):
            raise ValueError(f"section {section.name or '?'} claims an impossible size")


@contextlib.contextmanager
def _elf_of(stream: BinaryIO, name: str) -> Iterator[ELFFile]:
    try:
        elf = ELFFile(stream)
    except ELFError:
        raise UlpError(f"{name}: not an ELF file", ExitCode.BAD_INPUT) from None
    except MALFORMED_ELF_ERRORS as error:
        raise UlpError(f"{name}: malformed ELF file ({error})", ExitCode.BAD_INPUT) from None
    try:
        _check_extents(elf, _stream_size(stream))
    except MALFORMED_ELF_ERRORS as error:
        raise UlpError(f"{name}: malformed ELF file ({error})", ExitCode.BAD_INPUT) from None
    try:
        yield elf
    except MALFORMED_ELF_ERRORS as error:
        raise UlpError(f"{name}: malformed ELF file ({error})", ExitCode.BAD_INPUT) from None


def require_x86_64_shared_object(elf: ELFFile, path: str, executable_too: bool = False) -> None:
    """``path`` is an x86-64 shared object (or, with ``executable_too``, a
    position-independent executable: docs/patching-private.md)."""
    if elf.elfclass != 64 or elf["e_machine"] != "EM_X86_64":
        raise UlpError(f"{path}: not an x86-64 ELF file", ExitCode.BAD_INPUT)
    if elf["e_type"] != "ET_DYN" or elf.get_section_by_name(".dynamic") is None:
        raise UlpError(f"{path}: not a shared object", ExitCode.BAD_INPUT)
    if not executable_too and is_pie_executable(elf):
        raise UlpError(f"{path}: not a shared object (a position-independent executable)",
                       ExitCode.BAD_INPUT)


_DF_1_PIE = 0x08000000


def is_pie_executable(elf: ELFFile) -> bool:
    """PIE executables are ET_DYN too; the linker marks them with DF_1_PIE."""
    dynamic = elf.get_section_by_name(".dynamic")
    for tag in dynamic.iter_tags():
        if tag.entry.d_tag == "DT_FLAGS_1":
            return bool(tag.entry.d_val & _DF_1_PIE)
    return False


def build_id(elf: ELFFile) -> bytes:
    """The GNU build-id note of ``elf``, or b"" if it has none."""
    for section in elf.iter_sections():
        if section["sh_type"] != "SHT_NOTE":
            continue
        for note in section.iter_notes():
            if note["n_type"] == "NT_GNU_BUILD_ID":
                return bytes.fromhex(note["n_desc"])
    return b""


def dynamic_symbol_value(elf: ELFFile, name: str) -> int | None:
    """The st_value of defined dynamic symbol ``name``, or None."""
    dynsym = elf.get_section_by_name(".dynsym")
    if dynsym is None:
        return None
    for symbol in dynsym.get_symbol_by_name(name) or ():
        if symbol["st_shndx"] != "SHN_UNDEF":
            return symbol["st_value"]
    return None


_LOADS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def read_vaddr(elf: ELFFile, vaddr: int, size: int) -> bytes:
    """The file bytes that load at ``vaddr`` (from a PT_LOAD segment)."""
    loads = _LOADS.get(elf)
    if loads is None:  # parsed once per file: preparing reads thousands of addresses
        loads = _LOADS[elf] = [(s["p_vaddr"], s["p_filesz"], s["p_offset"])
                               for s in elf.iter_segments(type="PT_LOAD")]
    for start, filesz, offset in loads:
        if start <= vaddr and vaddr + size <= start + filesz:
            elf.stream.seek(offset + vaddr - start)
            return elf.stream.read(size)
    raise ValueError(f"address {vaddr:#x} is not in the file")


def file_sha256(path: str) -> bytes:
    import hashlib

    digest = hashlib.sha256()
    with open_input(path) as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.digest()


def file_key(path: str) -> tuple:
    """What identifies one version of a file, for caching what was read from it."""
    info = os.stat(path)
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
