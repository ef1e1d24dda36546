"""Reading the library ulp-prepare is given: what it exports, and whether it can be patched."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from ulp import elfinfo, layout
from ulp.errors import ExitCode, UlpError

from . import trampolines

PATCHABLE_FLAG = layout.PATCHABLE_FLAG
ENTRIES_SECTION = "__patchable_function_entries"
_R_X86_64_RELATIVE = 8
_PF_X = 1
#: the LibDesc has room for a build-id of this many bytes (ld's sha1 build-id)
BUILD_ID_MAX = 20


@dataclass(frozen=True)
class Function:
    """An exported function, identified by its entry address."""

    names: tuple[str, ...]  # every .dynsym name at this address, in .dynsym order
    entry: int
    has_endbr64: bool

    @property
    def name(self) -> str:
        return self.names[0]

    @property
    def padding(self) -> int:
        """The first of the NOPs the compiler left before the entry."""
        return self.entry - layout.PADDING_SIZE

    @property
    def entry_nops(self) -> int:
        """The two one-byte NOPs at the entry (after endbr64 with CET)."""
        return self.entry + (len(layout.ENDBR64) if self.has_endbr64 else 0)

    @property
    def body(self) -> int:
        return self.entry_nops + layout.ENTRY_NOP_SIZE


@dataclass
class Library:
    """What ulp-prepare needs to know of its input."""

    path: str
    identity: bytes  # SHA-256 of the file
    build_id: bytes
    code_start: int  # the executable segments: a return address there is inside the library
    code_end: int
    functions: list[Function] = field(default_factory=list)
    #: the entry NOPs of the functions that are not exported (static, hidden,
    #: an executable's): made one two-byte NOP too, so that the jump written
    #: there when one is patched never lands on a thread between two NOPs
    private_entry_nops: list[int] = field(default_factory=list)


def code_range(elf: ELFFile, path: str) -> tuple[int, int]:
    """From the lowest to the highest address of the executable PT_LOAD segments."""
    ranges = [(segment["p_vaddr"], segment["p_vaddr"] + segment["p_memsz"])
              for segment in elf.iter_segments()
              if segment["p_type"] == "PT_LOAD" and segment["p_flags"] & _PF_X]
    if not ranges:
        raise UlpError(f"{path}: has no executable segment", ExitCode.NOT_PATCHABLE)
    return min(start for start, _ in ranges), max(end for _, end in ranges)


def prepared_descriptor(elf: ELFFile, path: str) -> layout.LibDesc | None:
    """The LibDesc of an already prepared library, None for one not prepared yet."""
    section = elf.get_section_by_name(layout.DATA_SECTION)
    if section is None:
        return None
    try:
        return layout.LibDesc.unpack(section.data())
    except ValueError as error:
        raise UlpError(f"{path}: has a {layout.DATA_SECTION} section but {error}",
                       ExitCode.BAD_INPUT) from None


def read_library(elf: ELFFile, path: str) -> Library:
    """Check that every exported function of ``elf`` can be patched; describe them."""
    entries = patchable_entries(elf, path)
    code_start, code_end = code_range(elf, path)
    library = Library(path, elfinfo.file_sha256(path), elfinfo.build_id(elf), code_start,
                      code_end)
    if len(library.build_id) > BUILD_ID_MAX:
        raise UlpError(f"{path}: its build-id is {len(library.build_id)} bytes, the "
                       f".ulp layout holds at most {BUILD_ID_MAX}",
                       ExitCode.NOT_PATCHABLE)
    for entry, names in exported_functions(elf).items():
        library.functions.append(check_function(elf, path, entry, names, entries))
    exported = {function.padding for function in library.functions}
    library.private_entry_nops = private_entry_nops(elf, entries - exported)
    # an executable usually exports nothing: its functions are patched as
    # private ones (docs/patching-private.md), the descriptor is enough
    if not library.functions and not elfinfo.is_pie_executable(elf):
        raise UlpError(f"{path}: exports no function to patch", ExitCode.NOT_PATCHABLE)
    return library


def exported_functions(elf: ELFFile) -> dict[int, tuple[str, ...]]:
    """Entry address -> the .dynsym names of it, for each exported function.

    Aliases and the several versions of a versioned symbol share an address,
    hence one trampoline.  IFUNC resolvers are not the functions their
    callers get, so they are left alone.
    """
    names: dict[int, list[str]] = {}
    dynsym = elf.get_section_by_name(".dynsym")
    for symbol in dynsym.iter_symbols() if dynsym else ():
        info = symbol["st_info"]
        if (info["type"] == "STT_FUNC" and info["bind"] in ("STB_GLOBAL", "STB_WEAK")
                and symbol["st_shndx"] != "SHN_UNDEF"):
            same = names.setdefault(symbol["st_value"], [])
            if symbol.name not in same:
                same.append(symbol.name)
    return {entry: tuple(names[entry]) for entry in sorted(names)}


def patchable_entries(elf: ELFFile, path: str) -> set[int]:
    """The padding addresses recorded by the compiler in __patchable_function_entries."""
    section = elf.get_section_by_name(ENTRIES_SECTION)
    if section is None:
        raise UlpError(f"{path}: has no {ENTRIES_SECTION} section; "
                       f"rebuild it with {PATCHABLE_FLAG}", ExitCode.NOT_PATCHABLE)
    start, data = section["sh_addr"], section.data()
    slots = {start + offset: struct.unpack_from("<Q", data, offset)[0]
             for offset in range(0, len(data) - 7, 8)}
    # In a shared object the slots are R_X86_64_RELATIVE targets: the addend
    # is the authoritative value (the linker may leave the slot itself 0).
    for relocations in elf.iter_sections():
        if not isinstance(relocations, RelocationSection) or not relocations.is_RELA():
            continue
        for relocation in relocations.iter_relocations():
            if (relocation["r_offset"] in slots
                    and relocation["r_info_type"] == _R_X86_64_RELATIVE):
                slots[relocation["r_offset"]] = relocation["r_addend"]
    return set(slots.values())


def private_entry_nops(elf: ELFFile, paddings: set[int]) -> list[int]:
    """The addresses of the two one-byte entry NOPs of the non-exported
    functions whose padding and entry the compiler left intact (others are
    left alone: the packer refuses to patch them)."""
    found = []
    for padding in sorted(paddings):
        try:
            code = elfinfo.read_vaddr(elf, padding, layout.PADDING_SIZE + 6)
        except ValueError:
            continue
        head = code[layout.PADDING_SIZE:]
        offset = len(layout.ENDBR64) if head.startswith(layout.ENDBR64) else 0
        if code[:layout.PADDING_SIZE] == b"\x90" * layout.PADDING_SIZE \
                and head[offset:offset + 2] == b"\x90\x90":
            found.append(padding + layout.PADDING_SIZE + offset)
    return found


def check_function(elf: ELFFile, path: str, entry: int, names: tuple[str, ...],
                   entries: set[int]) -> Function:
    """Raise NOT_PATCHABLE unless the compiler left the padding and entry NOPs intact."""
    name = names[0]

    def refuse(reason: str) -> UlpError:
        return UlpError(f"{path}: function {name} {reason}", ExitCode.NOT_PATCHABLE)

    padding_start = entry - layout.PADDING_SIZE
    if padding_start not in entries:
        raise refuse(f"was not compiled with {PATCHABLE_FLAG}")
    try:
        padding = elfinfo.read_vaddr(elf, padding_start, layout.PADDING_SIZE)
        head = elfinfo.read_vaddr(elf, entry, len(layout.ENDBR64) + layout.ENTRY_NOP_SIZE)
    except ValueError:
        raise refuse("is not in the file") from None
    one_byte_nops = (1,) * layout.PADDING_SIZE
    if padding != b"\x90" * layout.PADDING_SIZE or not trampolines.is_nop_run(
            padding, padding_start, one_byte_nops):
        raise refuse(f"does not have the {layout.PADDING_SIZE} NOPs of {PATCHABLE_FLAG} "
                     "before its entry (padding overwritten?)")
    has_endbr64 = head.startswith(layout.ENDBR64) and trampolines.is_endbr64(
        head[:len(layout.ENDBR64)], entry)
    nops_at = len(layout.ENDBR64) if has_endbr64 else 0
    nops = head[nops_at:nops_at + layout.ENTRY_NOP_SIZE]
    if nops != b"\x90" * layout.ENTRY_NOP_SIZE or not trampolines.is_nop_run(
            nops, entry + nops_at, (1,) * layout.ENTRY_NOP_SIZE):
        raise refuse(f"does not start with the {layout.ENTRY_NOP_SIZE} NOPs of "
                     f"{PATCHABLE_FLAG} (entry overwritten?)")
    return Function(names, entry, has_endbr64)
