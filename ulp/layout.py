"""The layout ulp-prepare gives a live-patchable library (version 4).

A prepared library carries two new sections (see docs/prepared-layout.md):

``.ulp.data`` (writable)
    a library descriptor (``LibDesc``) followed by one function descriptor
    (``FuncDesc``) per patchable function.  The runtime completes the
    descriptors in place the first time the library is entered.

``.ulp`` (executable)
    one trampoline of ``TRAMPOLINE_SIZE`` bytes per patchable function, in the
    same order as the function descriptors.  Every ``.dynsym`` entry of the
    function points at its trampoline.

The C side of these structures is ``runtime/ulp_layout.h``; tests/test_layout.py
checks that the two agree on every offset.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

LIB_MAGIC = b"ULPLIB\x00\x01"
LAYOUT_VERSION = 4

DATA_SECTION = ".ulp.data"
CODE_SECTION = ".ulp"

#: the weak undefined dynamic symbol ld.so resolves to the runtime's tracker
ENTRY_SYMBOL = "ulp_entry"

# struct ulp_lib_desc, 128 bytes:
#   magic, layout version, number of functions, GOT slot of ulp_entry,
#   registration state (runtime), identity, build-id length, build-id,
#   offset of the function descriptors, offset of the trampolines, address
#   of the global universe (runtime), offset and size of the library's code
LIB_DESC_FORMAT = "<8sIIQq32sB3x20sqqQqQ"
LIB_DESC_SIZE = struct.calcsize(LIB_DESC_FORMAT)
LIB_DESC_ENTRY_GOT_OFFSET = 16
LIB_DESC_STATE_OFFSET = 24
LIB_DESC_IDENTITY_OFFSET = 32
LIB_DESC_UNIVERSE_OFFSET = 104
LIB_DESC_CODE_OFFSET = 112

# struct ulp_func_desc, 112 bytes:
#   TLS offset (runtime), version list head (runtime), the embedded
#   "original body" version (applied_at, reverted_at, target, next),
#   body, entry and library descriptor as offsets from this descriptor,
#   flags, index, the library's code start and size (runtime), where calls
#   go now as an offset from this descriptor (the padding stub until the
#   runtime registers the library), 8 reserved bytes (alignment)
FUNC_DESC_FORMAT = "<qQQQQQqqqIIQQq8x"
FUNC_DESC_SIZE = struct.calcsize(FUNC_DESC_FORMAT)
FUNC_FLAG_ENDBR64 = 1
FUNC_FLAG_PATCHED = 0x100  # set in memory by the runtime, never in a file
FD_TLS_OFFSET = 0
FD_VERSIONS = 8
FD_ORIGINAL = 16
FD_BODY_DELTA = 48
FD_FLAGS = 72
FD_CODE_START = 80
FD_CODE_SIZE = 88
FD_CURRENT = 96

# struct ulp_version and the per-thread record the tracker keeps per library
V_APPLIED_AT = 0
V_REVERTED_AT = 8
V_TARGET = 16
V_NEXT = 24
REC_UNIVERSE = 0
REC_PENDING = 8
REC_STACK_LOW = 16
REC_STACK_HIGH = 24
REC_HINT_SLOT = 32
REC_HINT_WORD = 40
REC_SIZE = 64

#: the compiler flag that leaves PADDING_SIZE NOPs before and ENTRY_NOP_SIZE after each entry
PATCHABLE_FLAG = "-fpatchable-function-entry=16,14"

TRAMPOLINE_SIZE = 64
PADDING_SIZE = 14  # NOPs the compiler leaves before each entry
ENTRY_NOP_SIZE = 2  # NOPs it leaves after the entry (after endbr64 with CET)
ENDBR64 = b"\xf3\x0f\x1e\xfa"
TWO_BYTE_NOP = b"\x66\x90"
UNIVERSE_NEVER = 0xFFFF_FFFF_FFFF_FFFF

assert LIB_DESC_SIZE == 128, LIB_DESC_SIZE
assert FUNC_DESC_SIZE == 112, FUNC_DESC_SIZE


@dataclass(frozen=True)
class LibDesc:
    """The header of ``.ulp.data``: what identifies a prepared library."""

    layout_version: int
    nfuncs: int
    identity: bytes  # SHA-256 of the library as it was before preparing
    build_id: bytes  # the GNU build-id of the library, empty if it has none
    funcs_delta: int  # offset of the first FuncDesc from the LibDesc
    trampolines_delta: int  # offset of the first trampoline from the LibDesc
    code_delta: int = 0  # offset of the library's executable segments from the LibDesc
    code_size: int = 0  # their extent: a return address there is inside the library

    def pack(self) -> bytes:
        return struct.pack(
            LIB_DESC_FORMAT,
            LIB_MAGIC,
            self.layout_version,
            self.nfuncs,
            0,  # GOT slot of ulp_entry: ld.so fills it
            0,  # registration state: the runtime owns it
            self.identity,
            len(self.build_id),
            self.build_id,
            self.funcs_delta,
            self.trampolines_delta,
            0,  # address of the global universe: the runtime fills it
            self.code_delta,
            self.code_size,
        )

    @classmethod
    def unpack(cls, data: bytes) -> LibDesc:
        """Parse a descriptor; raise ValueError if it is not a valid one."""
        if len(data) < LIB_DESC_SIZE:
            raise ValueError("library descriptor truncated")
        (magic, version, nfuncs, _got, _state, identity, build_id_len, build_id,
         funcs_delta, trampolines_delta, _universe, code_delta,
         code_size) = struct.unpack_from(LIB_DESC_FORMAT, data)
        if magic != LIB_MAGIC:
            raise ValueError("no ulp library descriptor (bad magic)")
        if version != LAYOUT_VERSION:
            raise ValueError(f"unsupported .ulp layout version {version}")
        if build_id_len > len(build_id):
            raise ValueError("library descriptor has a bad build-id length")
        return cls(version, nfuncs, identity, build_id[:build_id_len],
                   funcs_delta, trampolines_delta, code_delta, code_size)


@dataclass(frozen=True)
class FuncDesc:
    """What ulp-prepare writes of one function descriptor."""

    body_delta: int  # first instruction after the entry NOPs
    entry_delta: int  # the function's own address
    lib_delta: int  # the library descriptor
    flags: int
    index: int

    def pack(self) -> bytes:
        return struct.pack(
            FUNC_DESC_FORMAT,
            0, 0,  # TLS offset and version list: the runtime fills them
            0, UNIVERSE_NEVER, 0, 0,  # the original body: valid in every universe
            self.body_delta, self.entry_delta, self.lib_delta, self.flags, self.index,
            0, 0,  # the library's code: the runtime fills it
            self.entry_delta - PADDING_SIZE,  # calls go to the padding stub: registration
        )

    @classmethod
    def unpack(cls, data: bytes) -> FuncDesc:
        if len(data) < FUNC_DESC_SIZE:
            raise ValueError("function descriptor truncated")
        fields = struct.unpack_from(FUNC_DESC_FORMAT, data)
        return cls(*fields[6:11])

    @property
    def has_endbr64(self) -> bool:
        return bool(self.flags & FUNC_FLAG_ENDBR64)
