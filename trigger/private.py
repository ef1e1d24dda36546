"""The code a private function needs before its entry can be routed.

An exported function's padding holds, since ulp-prepare, a stub that loads
its descriptor into %r10 and jumps to the tracker; a private function's
padding still holds the compiler's 14 NOPs, and its descriptor is made by
the runtime during PREPARE (runtime/private.c), which writes its address
back into the request.  The trigger then writes, with every thread
stopped, the same stub into the padding and the same short jump over the
entry NOPs as for an exported function.

The compiler leaves two one-byte NOPs at the entry (ulp-prepare turns them
into one two-byte NOP only for exported functions): a thread stopped
between them would resume inside the jump, so the write is refused (RETRY)
while one is there.
"""

from __future__ import annotations

import struct

from ulp import layout
from ulp import metadata as md
from ulp.agent_abi import REQUEST_OFFSET, REQUEST_PRIVATE_DESC_OFFSET, REQUEST_PRIVATE_FORMAT
from ulp.errors import ExitCode, UlpError
from ulp.process import Process
from ulp.trigger.codewrite import CodeWrite
from ulp.trigger.elfscan import TargetLibrary

PRIVATE_SIZE = struct.calcsize(REQUEST_PRIVATE_FORMAT)
PADDING_NOPS = b"\x90" * layout.PADDING_SIZE
ONE_BYTE_NOPS = b"\x90\x90"


def _nop_address(lib_desc: int, unit: md.PrivateUnit) -> int:
    entry = lib_desc + unit.entry_delta
    return entry + (len(layout.ENDBR64) if unit.flags & md.FLAG_ENDBR64 else 0)


def entry_jump(lib_desc: int, unit: md.PrivateUnit) -> bytes:
    """The short jump from the entry NOP back to the padding's start."""
    stub = lib_desc + unit.entry_delta - layout.PADDING_SIZE
    return bytes([0xEB, (stub - (_nop_address(lib_desc, unit) + 2)) & 0xFF])


def padding_stub(lib_desc: int, unit: md.PrivateUnit, desc: int) -> bytes:
    """lea r10, [rip -> desc + 1]; jmp qword ptr [rip -> entry_got]; int3, as
    ulp-prepare writes for exported functions (docs/prepared-layout.md, "The
    padding and the entry"): the odd descriptor tells the tracker that any
    caller may come this way, so it checks the return address itself."""
    stub = lib_desc + unit.entry_delta - layout.PADDING_SIZE
    lea = b"\x4c\x8d\x15" + struct.pack("<i", desc + 1 - (stub + 7))
    got = lib_desc + layout.LIB_DESC_ENTRY_GOT_OFFSET
    jmp = b"\xff\x25" + struct.pack("<i", got - (stub + 13))
    return lea + jmp + b"\xcc"


def code_sizes(library: TargetLibrary, metadata: md.PatchMetadata) -> dict[int, int]:
    """entry_delta -> the size of each private function's code, from the
    target's symbol table (empty when it has none).  In an executable the
    runtime takes a thread whose stack holds a word of a patched function's
    code as inside it (runtime/transition.c); the rest of the program's code
    says nothing of the library's activations."""
    if not metadata.private_units:
        return {}
    from ulp.symbols import SymbolTables

    try:
        tables = SymbolTables(library.path)
    except UlpError:
        return {}
    sizes = {}
    for unit in metadata.private_units:
        entry = library.lib_desc_vaddr + unit.entry_delta
        sizes[unit.entry_delta] = max((symbol.size for symbol in tables.lookup(unit.old_name)
                                       if symbol.value == entry), default=0)
    return sizes


def check_entries(process: Process, lib_desc: int, metadata: md.PatchMetadata) -> None:
    """Before anything changes: each private entry is untouched or already
    routed (by an earlier patch of the same function)."""
    for unit in metadata.private_units:
        current = process.read(_nop_address(lib_desc, unit), 2)
        if current not in (ONE_BYTE_NOPS, layout.TWO_BYTE_NOP, entry_jump(lib_desc, unit)):
            raise UlpError(f"unexpected code at the entry of {unit.old_name} "
                           f"({current.hex()}); refusing to write", ExitCode.TARGET_MISMATCH)


def descriptors(process: Process, mailbox: int, privates_offset: int, count: int) -> list[int]:
    """The descriptors the runtime wrote back into the PREPARE request."""
    base = mailbox + REQUEST_OFFSET + privates_offset
    return [int.from_bytes(process.read(base + i * PRIVATE_SIZE + REQUEST_PRIVATE_DESC_OFFSET,
                                        8), "little") for i in range(count)]


def writes(process: Process, lib_desc: int, metadata: md.PatchMetadata,
           descs: list[int]) -> tuple[list[CodeWrite], dict[int, str]]:
    """The stub and jump of each private function not routed yet, and the
    addresses no thread may be stopped at meanwhile."""
    todo: list[CodeWrite] = []
    avoid: dict[int, str] = {}
    for unit, desc in zip(metadata.private_units, descs, strict=True):
        stub_address = lib_desc + unit.entry_delta - layout.PADDING_SIZE
        stub = padding_stub(lib_desc, unit, desc)
        if process.read(stub_address, layout.PADDING_SIZE) != stub:
            todo.append(CodeWrite(stub_address, PADDING_NOPS, stub,
                                  f"the padding of {unit.old_name}"))
        nop = _nop_address(lib_desc, unit)
        current = process.read(nop, 2)
        if current in (ONE_BYTE_NOPS, layout.TWO_BYTE_NOP):
            todo.append(CodeWrite(nop, current, entry_jump(lib_desc, unit),
                                  f"the entry of {unit.old_name}"))
            if current == ONE_BYTE_NOPS:
                avoid[nop + 1] = f"the entry NOPs of {unit.old_name}"
    return todo, avoid
