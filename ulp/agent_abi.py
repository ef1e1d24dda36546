"""The mailbox protocol between ulp-trigger and the runtime (runtime/ulp_abi.h).

This mirrors the C header field by field; tests/test_provenance.py compiles
the header and checks every offset, size and constant here against it.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

MAILBOX_SYMBOL = "ulp_mailbox"
MAILBOX_MAGIC = b"ULPMBOX\x00"
ABI_VERSION = 2
MESSAGE_MAX = 512
REQUEST_MAX = 256 * 1024

# struct ulp_mailbox up to the message
MAILBOX_HEADER_FORMAT = "<8sIIiIiIQQQiIQ8x"
MAILBOX_HEADER_SIZE = struct.calcsize(MAILBOX_HEADER_FORMAT)
MESSAGE_OFFSET = MAILBOX_HEADER_SIZE
REQUEST_OFFSET = MESSAGE_OFFSET + MESSAGE_MAX
SERIAL_OFFSET = 20
REQUEST_SIZE_OFFSET = 28
STAGED_FD_OFFSET = 56
assert MAILBOX_HEADER_SIZE == 80

REQUEST_HEADER_FORMAT = "<IIII16sQ32s32sIiQ"
REQUEST_UNIT_FORMAT = "<II"
assert struct.calcsize(REQUEST_HEADER_FORMAT) == 120


class AgentState(enum.IntEnum):
    STARTING = 0
    IDLE = 1
    BUSY = 2
    OFF = 3  # no agent: ULP_AGENT=off, or it could not be started
    ENDED = 4  # it was the last thread of the process and ended


class Op(enum.IntEnum):
    PREPARE = 1
    COMMIT = 2
    REVERT = 3
    ABORT = 4
    STATUS = 5
    STAGE = 6


class Status(enum.IntEnum):
    OK = 0
    BAD_REQUEST = 1
    NOT_ULP_LIBRARY = 2
    TARGET_MISMATCH = 3
    PATCH_OPEN = 4
    PATCH_HASH = 5
    PATCH_LOAD = 6
    PATCH_SYMBOL = 7
    ALREADY_APPLIED = 8
    NOT_APPLIED = 9
    DEPENDENCY = 10
    DEPENDENT = 11
    NO_MEMORY = 12
    TOO_MANY_LIBS = 13
    NOT_PENDING = 14
    STAGE = 15
    PATCH_ID = 16
    UNLOADED = 17


@dataclass(frozen=True)
class MailboxHeader:
    magic: bytes
    abi_version: int
    state: int
    agent_tid: int
    serial: int
    status: int
    request_size: int
    dispatch: int
    call_stack_top: int
    universe_address: int
    staged_fd: int
    reserved0: int
    idle_address: int

    @classmethod
    def unpack(cls, data: bytes) -> MailboxHeader:
        return cls(*struct.unpack_from(MAILBOX_HEADER_FORMAT, data))


@dataclass
class Request:
    op: Op
    patch_id: bytes = bytes(16)
    lib_desc: int = 0
    identity: bytes = bytes(32)
    so_sha256: bytes = bytes(32)
    so_path: str = ""  # the name the link map shows for the patch object
    so_fd: int = -1  # PREPARE: the descriptor STAGE returned, filled
    so_size: int = 0
    requires: tuple[bytes, ...] = ()
    units: tuple[tuple[int, str], ...] = ()  # (function index, replacement name)

    def pack(self) -> bytes:
        strings = bytearray()

        def add_string(text: str) -> int:
            offset = len(strings)
            strings.extend(text.encode() + b"\0")
            return offset

        so_path = add_string(self.so_path)
        units = b"".join(struct.pack(REQUEST_UNIT_FORMAT, index, add_string(name))
                         for index, name in self.units)
        header = struct.pack(REQUEST_HEADER_FORMAT, self.op, len(self.units), len(self.requires),
                             len(strings), self.patch_id, self.lib_desc, self.identity,
                             self.so_sha256, so_path, self.so_fd, self.so_size)
        data = header + b"".join(self.requires) + units + bytes(strings)
        if len(data) > REQUEST_MAX:
            raise ValueError("request too large for the runtime's mailbox")
        return data
