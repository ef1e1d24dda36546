"""What the packer resolves beyond exported functions: private functions
(static, hidden, or any function of an executable) and the data references a
patch declares (libpulp's ``#sym:var`` and ``#%sym:var``).

docs/patching-private.md is the how-to; docs/patch-format.md has the records.
"""

from __future__ import annotations

from ulp import layout
from ulp import metadata as md
from ulp.elfinfo import is_pie_executable, open_elf, read_vaddr
from ulp.errors import ExitCode, UlpError
from ulp.prepared import PreparedLibrary
from ulp.symbols import Symbol, SymbolTables

from .desc import Description, Pair, ReferenceLine

ENDBR64 = bytes.fromhex("f30f1efa")
PADDING = b"\x90" * layout.PADDING_SIZE
ENTRY_NOPS = (b"\x90\x90", layout.TWO_BYTE_NOP)


def target_is_executable(path: str) -> bool:
    with open_elf(path) as elf:
        return is_pie_executable(elf)


def _one_symbol(desc: Description, line: int, tables: SymbolTables, name: str,
                kinds: tuple[str, ...], what: str) -> Symbol:
    found = [symbol for symbol in tables.lookup(name) if symbol.kind in kinds]
    if not found:
        if tables.stripped and not tables.lookup(name):
            raise UlpError(f"{desc.where(line)}: cannot find {name}: {tables.path} is stripped "
                           "and no debug file was found for it (.gnu_debuglink or build-id "
                           "under the debug directory)", ExitCode.NOT_PATCHABLE)
        raise UlpError(f"{desc.where(line)}: {name} is not {what} of {tables.path}",
                       ExitCode.NOT_PATCHABLE)
    if len(found) > 1:
        where = ", ".join(f"{symbol.value:#x}" for symbol in found)
        raise UlpError(f"{desc.where(line)}: {len(found)} symbols named {name} in "
                       f"{tables.path} ({where}): cannot tell which one is meant",
                       ExitCode.NOT_PATCHABLE)
    return found[0]


def private_unit(desc: Description, pair: Pair, library: PreparedLibrary,
                 tables: SymbolTables) -> md.PrivateUnit:
    """``pair.old`` as a function without a descriptor, checked in the file."""
    symbol = _one_symbol(desc, pair.line, tables, pair.old, ("STT_FUNC",),
                         "a patchable function")
    lib_desc = library.lib_desc_vaddr
    code_start = lib_desc + library.desc.code_delta
    code_end = code_start + library.desc.code_size
    entry = symbol.value
    if not code_start + layout.PADDING_SIZE <= entry < code_end:
        raise UlpError(f"{desc.where(pair.line)}: {pair.old} is not in the code of "
                       f"{library.path}", ExitCode.NOT_PATCHABLE)
    with open_elf(library.path) as elf:
        code = read_vaddr(elf, entry - layout.PADDING_SIZE, layout.PADDING_SIZE + 6)
    head = code[layout.PADDING_SIZE:]
    flags = md.FLAG_ENDBR64 if head.startswith(ENDBR64) else 0
    nops = head[4:6] if flags else head[:2]
    if code[:layout.PADDING_SIZE] != PADDING or nops not in ENTRY_NOPS:
        raise UlpError(f"{desc.where(pair.line)}: {pair.old} has no patchable entry (build "
                       f"the target with {layout.PATCHABLE_FLAG})", ExitCode.NOT_PATCHABLE)
    return md.PrivateUnit(entry - lib_desc, flags, pair.old, pair.new)


def _patch_variable_size(patch_so: str, name: str) -> int | None:
    with open_elf(patch_so) as elf:
        dynsym = elf.get_section_by_name(".dynsym")
        for symbol in (dynsym.get_symbol_by_name(name) or ()) if dynsym else ():
            if symbol["st_shndx"] != "SHN_UNDEF" and symbol["st_info"]["type"] == "STT_OBJECT":
                return symbol["st_size"]
    return None


def reference(desc: Description, ref: ReferenceLine, library: PreparedLibrary,
              tables: SymbolTables) -> md.Reference:
    """One ``#sym:var`` line, resolved in the target and checked in the patch."""
    needed = 16 if ref.tls else 8
    size = _patch_variable_size(desc.patch_so, ref.variable)
    if size is None or size < needed:
        kind = "a tls_index (16 bytes)" if ref.tls else "a pointer (8 bytes)"
        raise UlpError(f"{desc.where(ref.line)}: {ref.variable} is not {kind} variable defined "
                       f"in the dynamic symbols of {desc.patch_so}", ExitCode.PATCH_OBJECT)
    if ref.tls:
        symbol = _one_symbol(desc, ref.line, tables, ref.target, ("STT_TLS",),
                             "a thread-local variable")
        return md.Reference(md.REF_TLS, symbol.value, ref.target, ref.variable)
    try:  # an exported function: its trampoline, as a call through the PLT would
        value = library.function(ref.target).trampoline
    except KeyError:
        value = _one_symbol(desc, ref.line, tables, ref.target, ("STT_OBJECT", "STT_FUNC"),
                            "a variable or function").value
    return md.Reference(md.REF_ADDRESS, value - library.lib_desc_vaddr, ref.target,
                        ref.variable)
