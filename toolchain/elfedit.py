"""Adding ulp's sections to a shared object with LIEF, keeping every address.

LIEF needs room for a bigger program header table.  Its default (and the
FILE_END / BSS_END modes) moves the table in ways that shift the loaded
addresses or leave DWARF unreadable (gdb: "Dwarf Error: wrong version").
SEGMENT_GAP puts the table in the padding between two segments and keeps
every original address; it fails when no gap is large enough, and then we
refuse rather than produce a library whose addresses or debug info moved.

LIEF moves .dynsym, .dynstr and .rela.dyn (plus .gnu.version when the
library has one) to a new segment at the end, since they grow; the dynamic
section is updated to match, and nothing refers to those tables by address
otherwise.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from itertools import pairwise

import lief
from elftools.elf.elffile import ELFFile

from ulp import layout
from ulp.elfinfo import MALFORMED_ELF_ERRORS
from ulp.errors import ExitCode, UlpError

lief.logging.disable()

_SHDR_ADDR_OFFSET = 16  # Elf64_Shdr: sh_name, sh_type, sh_flags, then sh_addr, sh_offset
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")  # type, flags, offset, vaddr, paddr, filesz, memsz, align
_SHDR = struct.Struct("<IIQQQQIIQQ")  # name, type, flags, addr, offset, size, ...
_PT_LOAD, _SHT_NULL, _SHT_NOBITS = 1, 0, 8
_PAGE = 0x1000
_ALIGNMENT = 16


@dataclass(frozen=True)
class NobitsSection:
    """A NOBITS section header as the linker wrote it."""

    name: str
    addr: int


def original_nobits(elf: ELFFile) -> list[NobitsSection]:
    return [NobitsSection(section.name, section["sh_addr"]) for section in elf.iter_sections()
            if section["sh_type"] == "SHT_NOBITS" and section["sh_addr"]]


class Editor:
    """One LIEF editing session of a library."""

    def __init__(self, path: str) -> None:
        self.path = path
        binary = _parse(path, path)
        # Before adding anything: see the module docstring.
        if not _relocate_phdr_table(binary):
            with open(path, "rb") as stream:
                widened = widen_address_gap(stream.read())
            binary = _parse(widened, path) if widened is not None else None
            if binary is None or not _relocate_phdr_table(binary):
                raise UlpError(f"{path}: no gap between its segments can hold a larger program "
                               "header table, and ulp-prepare does not move addresses; relink "
                               "it with the linker's default page-aligned segments (without "
                               "-z max-page-size below 4096, -N or -n)", ExitCode.NOT_PATCHABLE)
        self.binary = binary
        self.data: lief.ELF.Section | None = None
        self.code: lief.ELF.Section | None = None

    def add_sections(self, data_size: int, code_size: int) -> tuple[int, int]:
        """Add .ulp.data and .ulp with placeholder contents; return their addresses."""
        flags = lief.ELF.Section.FLAGS
        self.data = self._add(layout.DATA_SECTION, flags.ALLOC | flags.WRITE, bytes(data_size))
        self.code = self._add(layout.CODE_SECTION, flags.ALLOC | flags.EXECINSTR,
                              b"\xcc" * code_size)
        return self.data.virtual_address, self.code.virtual_address

    def _add(self, name: str, flags: lief.ELF.Section.FLAGS, content: bytes) -> lief.ELF.Section:
        section = lief.ELF.Section(name)
        section.type = lief.ELF.Section.TYPE.PROGBITS
        section.flags = flags
        section.alignment = _ALIGNMENT
        section.content = list(content)
        added = self.binary.add(section, loaded=True)
        if added is None:  # inputcheck refuses what LIEF cannot extend: a bug if seen
            raise UlpError(f"{self.path}: internal error, LIEF could not add section {name}",
                           ExitCode.FAILURE)
        return added

    def set_contents(self, data: bytes, code: bytes) -> None:
        assert self.data is not None and self.code is not None
        if len(data) != self.data.size or len(code) != self.code.size:
            raise AssertionError("section contents changed size after layout")
        self.data.content = list(data)
        self.code.content = list(code)

    def patch(self, vaddr: int, code: bytes) -> None:
        self.binary.patch_address(vaddr, list(code))

    def point_dynamic_symbols(self, trampolines: dict[int, int]) -> None:
        """Make each exported function's .dynsym entries (entry -> trampoline) point there."""
        for symbol in self.binary.dynamic_symbols:
            if (symbol.type == lief.ELF.Symbol.TYPE.FUNC and symbol.shndx != 0
                    and symbol.binding in (lief.ELF.Symbol.BINDING.GLOBAL,
                                           lief.ELF.Symbol.BINDING.WEAK)
                    and symbol.value in trampolines):
                symbol.value = trampolines[symbol.value]
                symbol.size = layout.TRAMPOLINE_SIZE

    def add_entry_symbol(self, got_slot: int) -> None:
        """A weak undefined ``ulp_entry`` that ld.so writes into ``got_slot``.

        Weak, so that without the runtime in the process the library still
        loads and the slot holds 0 (the trampolines then go to the function).
        """
        symbol = lief.ELF.Symbol()
        symbol.name = layout.ENTRY_SYMBOL
        symbol.binding = lief.ELF.Symbol.BINDING.WEAK
        symbol.type = lief.ELF.Symbol.TYPE.NOTYPE
        symbol.value = 0
        symbol = self.binary.add_dynamic_symbol(symbol)
        relocation = lief.ELF.Relocation(got_slot, lief.ELF.Relocation.TYPE.X86_64_GLOB_DAT,
                                         lief.ELF.Relocation.ENCODING.RELA)
        relocation.symbol = symbol
        self.binary.add_dynamic_relocation(relocation)

    def write(self, out: str, nobits: list[NobitsSection]) -> None:
        self.binary.write(out)
        try:
            restore_nobits_headers(out, nobits)
        except MALFORMED_ELF_ERRORS as error:  # LIEF wrote a file we cannot read: a bug
            raise UlpError(f"{self.path}: internal error, the file LIEF wrote does not "
                           f"parse ({error})", ExitCode.FAILURE) from None


def _parse(source: str | bytes, path: str) -> lief.ELF.Binary:
    binary = lief.ELF.parse(source)
    if binary is None:
        raise UlpError(f"{path}: LIEF cannot parse this file", ExitCode.BAD_INPUT)
    return binary


def _relocate_phdr_table(binary: lief.ELF.Binary) -> bool:
    return binary.relocate_phdr_table(lief.ELF.Binary.PHDR_RELOC.SEGMENT_GAP) != 0


def widen_address_gap(image: bytes) -> bytes | None:
    """The same library with one file gap between segments as wide as its address gap.

    LIEF's SEGMENT_GAP wants a gap between two PT_LOADs, in the file, with
    room for twice the program header table, and extends the segment before
    it over the gap.  A linker leaves a page or so of *address* space before
    the writable segment but packs the file: the writable segment starts
    with only a few bytes of file gap (``p_offset`` ≡ ``p_vaddr`` modulo the
    page size is all it needs).  Inserting zeros before the next segment,
    a multiple of every later segment's alignment, makes the file gap as
    wide as the address gap; every address stays, only the file offsets
    after the gap (segments, sections, the section header table) move.
    Returns None when no gap can be widened that way.
    """
    header = _EHDR.unpack_from(image)
    phoff, shoff, phnum, shnum = header[5], header[6], header[10], header[12]
    phdrs = [list(_PHDR.unpack_from(image, phoff + i * _PHDR.size)) for i in range(phnum)]
    loads = sorted((p for p in phdrs if p[0] == _PT_LOAD), key=lambda p: p[3])
    best = None
    for index, (current, following) in enumerate(pairwise(loads)):
        _, _, offset, vaddr, _, filesz, memsz, _ = current
        if filesz != memsz:  # LIEF never extends a segment with .bss
            continue
        address_gap = following[3] - (vaddr + memsz)
        file_gap = following[2] - (offset + filesz)
        shift = address_gap - file_gap
        alignments = [max(p[7], _PAGE) for p in loads[index + 1:]]
        if file_gap < 0 or shift <= 0 or any(shift % a for a in alignments):
            continue
        if best is None or address_gap > best[0]:
            best = (address_gap, following[2], shift)
    if best is None:
        return None
    _, at, shift = best
    shdrs = [list(_SHDR.unpack_from(image, shoff + i * _SHDR.size)) for i in range(shnum)]
    for phdr in phdrs:
        if phdr[2] < at < phdr[2] + phdr[5]:
            return None
        if phdr[2] >= at:
            phdr[2] += shift
    for shdr in shdrs:
        if shdr[1] != _SHT_NOBITS and shdr[4] < at < shdr[4] + shdr[5]:
            return None
        if shdr[4] >= at and shdr[1] != _SHT_NULL:
            shdr[4] += shift
    header = list(header)
    header[5] += shift if phoff >= at else 0
    header[6] += shift if shoff >= at else 0
    out = bytearray(image[:at] + bytes(shift) + image[at:])
    _EHDR.pack_into(out, 0, *header)
    for i, phdr in enumerate(phdrs):
        _PHDR.pack_into(out, header[5] + i * _PHDR.size, *phdr)
    for i, shdr in enumerate(shdrs):
        _SHDR.pack_into(out, header[6] + i * _SHDR.size, *shdr)
    return bytes(out)


def restore_nobits_headers(path: str, nobits: list[NobitsSection]) -> None:
    """Give NOBITS section headers (.bss) back the address the linker gave them.

    LIEF 1.0 rewrites the .bss header to an address past the segments it
    appends, although the segment that really holds .bss (and every symbol
    in it) did not move: debuggers and tools reading section headers would
    then look for .bss variables at the wrong place.  sh_offset is set to
    where the address falls in its PT_LOAD, as the linker does.
    """
    with open(path, "r+b") as stream:
        elf = ELFFile(stream)
        fixes = []
        for index, section in enumerate(elf.iter_sections()):
            original = next((n for n in nobits if n.name == section.name), None)
            if original is None or section["sh_type"] != "SHT_NOBITS":
                continue
            offset = _file_offset_of(elf, original.addr)
            header = elf["e_shoff"] + index * elf["e_shentsize"] + _SHDR_ADDR_OFFSET
            fixes.append((header, original.addr, offset))
        for header, addr, offset in fixes:
            stream.seek(header)
            stream.write(struct.pack("<QQ", addr, offset))


def _file_offset_of(elf: ELFFile, vaddr: int) -> int:
    for segment in elf.iter_segments(type="PT_LOAD"):
        if segment["p_vaddr"] <= vaddr <= segment["p_vaddr"] + segment["p_memsz"]:
            return segment["p_offset"] + vaddr - segment["p_vaddr"]
    raise UlpError(f"internal error, address {vaddr:#x} of a NOBITS section is in no segment",
                   ExitCode.FAILURE)
