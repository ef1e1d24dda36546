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

import lief
from elftools.elf.elffile import ELFFile

from ulp import layout
from ulp.elfinfo import MALFORMED_ELF_ERRORS
from ulp.errors import ExitCode, UlpError

lief.logging.disable()

_SHDR_ADDR_OFFSET = 16  # Elf64_Shdr: sh_name, sh_type, sh_flags, then sh_addr, sh_offset
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
        binary = lief.ELF.parse(path)
        if binary is None:
            raise UlpError(f"{path}: LIEF cannot parse this file", ExitCode.BAD_INPUT)
        self.binary = binary
        # Before adding anything: see the module docstring.
        if binary.relocate_phdr_table(lief.ELF.Binary.PHDR_RELOC.SEGMENT_GAP) == 0:
            raise UlpError(f"{path}: no gap between segments can hold a larger program "
                           "header table, cannot add sections without moving addresses",
                           ExitCode.NOT_PATCHABLE)
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
