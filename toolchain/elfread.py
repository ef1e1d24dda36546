"""Reading many small things out of one ELF file fast: segment bytes and dynamic symbols.

ulp-prepare reads a few bytes at every exported function and every
trampoline, and walks ``.dynsym`` several times.  Through pyelftools that is
a seek and a construct parse per item: for 5,000 functions it cost more than
a second (issue 8).  Here each loaded segment is read once and sliced, and
the symbol table is unpacked with ``struct`` in one pass.  The headers were
checked before (``inputcheck``), so the tables are where they claim to be.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from elftools.elf.elffile import ELFFile

_SYM = struct.Struct("<IBBHQQ")
_RELA = struct.Struct("<QQq")
_SHN_UNDEF = 0
STT_FUNC = 2
STB_GLOBAL, STB_WEAK = 1, 2
_SHT_RELA = "SHT_RELA"


class LoadedBytes:
    """The file bytes of the PT_LOAD segments, each read once, when first needed."""

    def __init__(self, elf: ELFFile) -> None:
        self.segments = [(segment["p_vaddr"], segment["p_filesz"], segment)
                         for segment in elf.iter_segments(type="PT_LOAD")]
        self.data: dict[int, bytes] = {}

    def read(self, vaddr: int, size: int) -> bytes:
        """The bytes that load at ``vaddr``; ValueError if the file does not hold them."""
        for index, (start, filesz, segment) in enumerate(self.segments):
            if start <= vaddr and vaddr + size <= start + filesz:
                data = self.data.get(index)
                if data is None:
                    data = self.data[index] = segment.data()
                return data[vaddr - start:vaddr - start + size]
        raise ValueError(f"address {vaddr:#x} is not in the file")


@dataclass(frozen=True)
class DynamicSymbol:
    index: int
    name: str
    value: int
    size: int
    type: int
    binding: int
    shndx: int

    @property
    def defined(self) -> bool:
        return self.shndx != _SHN_UNDEF

    @property
    def is_exported_function(self) -> bool:
        """A function the library defines and exports (IFUNC resolvers are not)."""
        return (self.type == STT_FUNC and self.binding in (STB_GLOBAL, STB_WEAK)
                and self.defined)


def dynamic_symbols(elf: ELFFile) -> list[DynamicSymbol]:
    """Every ``.dynsym`` entry, in table order (index 0 included)."""
    dynsym = elf.get_section_by_name(".dynsym")
    if dynsym is None:
        return []
    strings = elf.get_section(dynsym["sh_link"]).data()
    table = dynsym.data()
    symbols = []
    for index, (name, info, _other, shndx, value, size) in enumerate(
            _SYM.iter_unpack(table[:len(table) // _SYM.size * _SYM.size])):
        end = strings.find(b"\0", name)
        text = strings[name:end if end >= 0 else len(strings)].decode("utf-8", "replace")
        symbols.append(DynamicSymbol(index, text, value, size, info & 0xF, info >> 4, shndx))
    return symbols


def relocations(elf: ELFFile) -> list[tuple[str, int, int, int, int]]:
    """(symbol table name, offset, type, symbol index, addend) of every RELA relocation."""
    found = []
    for section in elf.iter_sections():
        if section["sh_type"] != _SHT_RELA or section["sh_link"] >= elf.num_sections():
            continue
        table = elf.get_section(section["sh_link"]).name
        data = section.data()
        for offset, info, addend in _RELA.iter_unpack(data[:len(data) // _RELA.size
                                                           * _RELA.size]):
            found.append((table, offset, info & 0xFFFFFFFF, info >> 32, addend))
    return found


def dynamic_relocations(elf: ELFFile) -> list[tuple[int, int, int]]:
    """(offset, type, symbol index) of every RELA relocation against ``.dynsym``."""
    return [(offset, kind, symbol) for table, offset, kind, symbol, _addend in relocations(elf)
            if table == ".dynsym"]
