"""Checking a prepared library from its bytes alone.

``verify_prepared`` is the one check of a prepared library: ulp-prepare runs
it on the file it has just written (before renaming it over the output) and
on a library it is given that claims to be prepared already (before leaving
it alone or copying it), and the fuzz test (tests/fuzz_prepare.py) runs it
on every output.  It reads the file as the packer and the runtime will and
checks everything docs/prepared-layout.md promises: the descriptors, the
sections and the segments holding them, every trampoline and padding stub
instruction by instruction (capstone), the entry NOPs, the weak
``ulp_entry`` symbol with its GOT relocation, and that every exported
function's ``.dynsym`` entries point at its trampoline.
"""

from __future__ import annotations

from elftools.elf.constants import P_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from ulp import layout
from ulp.elfinfo import is_pie_executable, open_elf, read_vaddr
from ulp.errors import ExitCode, UlpError
from ulp.prepared import PreparedLibrary

from . import trampolines

_R_X86_64_GLOB_DAT = 6
_SHF_WRITE, _SHF_ALLOC, _SHF_EXECINSTR = 1, 2, 4


class Invalid(Exception):
    """The file is not a prepared library as ulp-prepare writes one."""


def verify_prepared(path: str) -> PreparedLibrary:
    """Read ``path`` back; raise UlpError (BAD_INPUT) naming the first thing that is off."""
    library = PreparedLibrary.open(path)
    with open_elf(path) as elf:
        try:
            check(elf, library)
        except (Invalid, trampolines.CodeError, ValueError) as error:
            raise UlpError(f"{path}: not a valid prepared library ({error})",
                           ExitCode.BAD_INPUT) from None
    return library


def check(elf: ELFFile, library: PreparedLibrary) -> None:
    desc, base = library.desc, library.lib_desc_vaddr
    count = desc.nfuncs
    if count == 0 and not is_pie_executable(elf):
        raise Invalid("no function")
    if desc.funcs_delta != layout.LIB_DESC_SIZE:
        raise Invalid("function descriptors not after the library descriptor")
    _check_section(elf, layout.DATA_SECTION, base,
                   layout.LIB_DESC_SIZE + count * layout.FUNC_DESC_SIZE,
                   _SHF_ALLOC | _SHF_WRITE, P_FLAGS.PF_R | P_FLAGS.PF_W)
    if count:  # an executable exporting nothing has no trampolines
        _check_section(elf, layout.CODE_SECTION, base + desc.trampolines_delta,
                       count * layout.TRAMPOLINE_SIZE, _SHF_ALLOC | _SHF_EXECINSTR,
                       P_FLAGS.PF_R | P_FLAGS.PF_X)
    got = base + layout.LIB_DESC_ENTRY_GOT_OFFSET
    _check_entry_symbol(elf, got)
    code_start = base + desc.code_delta
    code_end = code_start + desc.code_size
    for function in library.functions:
        fdesc = layout.FuncDesc.unpack(read_vaddr(elf, function.func_desc,
                                                  layout.FUNC_DESC_SIZE))
        name = function.name
        if fdesc.index != function.index or function.func_desc + fdesc.lib_delta != base:
            raise Invalid(f"descriptor of {name} does not match its place")
        if fdesc.flags & ~layout.FUNC_FLAG_ENDBR64:
            raise Invalid(f"descriptor of {name} has unknown flags")
        if not code_start <= function.entry < code_end:
            raise Invalid(f"{name} is outside the code range of the library descriptor")
        nops = function.entry + (len(layout.ENDBR64) if function.has_endbr64 else 0)
        if function.body != nops + layout.ENTRY_NOP_SIZE:
            raise Invalid(f"descriptor of {name}: body is not after the entry NOPs")
        head = read_vaddr(elf, function.entry, nops - function.entry + layout.ENTRY_NOP_SIZE)
        if function.has_endbr64 and not trampolines.is_endbr64(head[:4], function.entry):
            raise Invalid(f"{name} does not start with endbr64")
        if head[-layout.ENTRY_NOP_SIZE:] != layout.TWO_BYTE_NOP:
            raise Invalid(f"entry of {name} is not the two-byte NOP")
        padding = function.entry - layout.PADDING_SIZE
        trampolines.verify_padding_stub(read_vaddr(elf, padding, layout.PADDING_SIZE),
                                        padding, function.func_desc, got)
        trampolines.verify_trampoline(
            read_vaddr(elf, function.trampoline, layout.TRAMPOLINE_SIZE), function.trampoline,
            trampolines.TrampolineTargets(
                entry_nops=nops, body=function.body, func_desc=function.func_desc, got=got,
                code_start=code_start, code_size=desc.code_size,
                endbr64=function.has_endbr64))
    _check_dynamic_symbols(elf, library)


def _check_section(elf: ELFFile, name: str, address: int, size: int, flags: int,
                   segment_flags: int) -> None:
    section = elf.get_section_by_name(name)
    if section is None:
        raise Invalid(f"no {name} section")
    if (section["sh_type"] != "SHT_PROGBITS" or section["sh_addr"] != address
            or section["sh_size"] != size or section["sh_flags"] & flags != flags):
        raise Invalid(f"{name} section is not where or what the descriptor says")
    for segment in elf.iter_segments(type="PT_LOAD"):
        start = segment["p_vaddr"]
        if start <= address and address + size <= start + segment["p_filesz"]:
            if segment["p_flags"] & segment_flags != segment_flags:
                raise Invalid(f"{name} is in a segment without the right permissions")
            if segment["p_offset"] + address - start != section["sh_offset"]:
                raise Invalid(f"{name} section and segment disagree on its file offset")
            return
    raise Invalid(f"{name} is in no loaded segment")


def _check_entry_symbol(elf: ELFFile, got: int) -> None:
    """ulp_entry: weak undefined in .dynsym, with one GLOB_DAT relocation at ``got``."""
    dynsym = elf.get_section_by_name(".dynsym")
    symbols = dynsym.get_symbol_by_name(layout.ENTRY_SYMBOL) if dynsym else None
    if not symbols or any(s["st_shndx"] != "SHN_UNDEF" or s["st_info"]["bind"] != "STB_WEAK"
                          for s in symbols):
        raise Invalid(f"no weak undefined {layout.ENTRY_SYMBOL} symbol")
    slots = []
    for section in elf.iter_sections():
        if not isinstance(section, RelocationSection) or section["sh_link"] >= elf.num_sections():
            continue
        table = elf.get_section(section["sh_link"])
        if table.name != ".dynsym":
            continue
        for relocation in section.iter_relocations():
            if relocation["r_info_type"] != _R_X86_64_GLOB_DAT:
                continue
            if table.get_symbol(relocation["r_info_sym"]).name == layout.ENTRY_SYMBOL:
                slots.append(relocation["r_offset"])
    if slots != [got]:
        raise Invalid(f"{layout.ENTRY_SYMBOL} is not relocated into the descriptor's GOT slot")


def _check_dynamic_symbols(elf: ELFFile, library: PreparedLibrary) -> None:
    """Every exported function's .dynsym entries point at a trampoline; none is left out."""
    first = library.lib_desc_vaddr + library.desc.trampolines_delta
    count = library.desc.nfuncs
    named = set()
    for symbol in elf.get_section_by_name(".dynsym").iter_symbols():
        info = symbol["st_info"]
        if (info["type"] != "STT_FUNC" or info["bind"] not in ("STB_GLOBAL", "STB_WEAK")
                or symbol["st_shndx"] == "SHN_UNDEF"):
            continue
        index, rest = divmod(symbol["st_value"] - first, layout.TRAMPOLINE_SIZE)
        if rest or not 0 <= index < count or symbol["st_size"] != layout.TRAMPOLINE_SIZE:
            raise Invalid(f"exported function {symbol.name} does not point at a trampoline")
        named.add(index)
    if len(named) != count:
        raise Invalid("a trampoline has no exported name")
