"""The mailbox protocol between ulp-trigger and the runtime (runtime/ulp_abi.h).

This mirrors the C header field by field; tests/test_provenance.py compiles
the header and checks every offset, size and constant here against it.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

MAILBOX_SYMBOL = "ulp_mailbox"
#: how /proc/PID/maps names a patch object the agent staged and loaded (a
#: memfd, runtime/patch.c): one per apply and process, never a patch's
#: target nor the runtime, so the trigger does not look into them
STAGED_OBJECT_PATH = "/memfd:ulp-patch"
MAILBOX_MAGIC = b"ULPMBOX\x00"
ABI_VERSION = 6
MESSAGE_MAX = 512
REQUEST_MAX = 256 * 1024

# struct ulp_mailbox up to the message
MAILBOX_HEADER_FORMAT = "<8sIIiIiIQQQiIQQ"
MAILBOX_HEADER_SIZE = struct.calcsize(MAILBOX_HEADER_FORMAT)
MESSAGE_OFFSET = MAILBOX_HEADER_SIZE
REQUEST_OFFSET = MESSAGE_OFFSET + MESSAGE_MAX
SERIAL_OFFSET = 20
REQUEST_SIZE_OFFSET = 28
STAGED_FD_OFFSET = 56
assert MAILBOX_HEADER_SIZE == 80

REQUEST_HEADER_FORMAT = "<IIII16sQ32s32sIiQIIIHHII"
#: PREPARE's so_fd when the patch object follows the request's strings, which
#: a runtime announcing FEATURE_INLINE_OBJECT in its mailbox takes
SO_INLINE = -2
FEATURE_INLINE_OBJECT = 1
#: a runtime announcing FEATURE_THREAD_BOUNDS finds the stopped threads'
#: stacks itself for a COMMIT or REVERT flagged REQUEST_FILL_BOUNDS
FEATURE_THREAD_BOUNDS = 2
REQUEST_KEEP_PINS = 1  # request flags: keep the libraries pinned for the next request
#: COMMIT, REVERT: no search for activations on stacks nobody noted (runtime/foreign.c)
REQUEST_TRUST_STACKS = 2
#: COMMIT, REVERT: the threads' stack bounds are left 0 for the runtime (threadstacks.c)
REQUEST_FILL_BOUNDS = 4
REQUEST_UNIT_FORMAT = "<II"
REQUEST_PRIVATE_FORMAT = "<qIIQQ"  # entry_delta, name, flags, desc (written by the runtime), size
REQUEST_REF_FORMAT = "<IIq"  # kind, name, delta
#: tid, reserved, rip, rsp, thread pointer, own stack low/high, end of the %rsp mapping
REQUEST_THREAD_FORMAT = "<iIQQQQQQ"
REQUEST_PRIVATE_DESC_OFFSET = 16
NO_LABEL = 0xFFFF_FFFF
assert struct.calcsize(REQUEST_HEADER_FORMAT) == 144
assert struct.calcsize(REQUEST_PRIVATE_FORMAT) == 32
assert struct.calcsize(REQUEST_REF_FORMAT) == 16
assert struct.calcsize(REQUEST_THREAD_FORMAT) == 56


#: struct ulp_applied_table: the applied patches, read from outside the
#: process under its sequence lock (runtime/applied.c)
APPLIED_MAGIC = b"ULPAPPL\x00"
APPLIED_MAX = 64
APPLIED_TABLE_FORMAT = "<8sIIII"  # magic, generation, count, more, reserved
APPLIED_PATCH_FORMAT = "<16sQQQHHI96s96s"
assert struct.calcsize(APPLIED_TABLE_FORMAT) == 24
assert struct.calcsize(APPLIED_PATCH_FORMAT) == 240


@dataclass(frozen=True)
class AppliedPatch:
    """One entry of struct ulp_applied_table."""

    patch_id: bytes
    lib_desc: int
    universe: int  # the universe its commit published
    time_ns: int  # when, CLOCK_REALTIME
    part: int
    nparts: int
    label: str
    object_path: str  # the patch object's path when it was packed

    @classmethod
    def unpack(cls, data: bytes, offset: int = 0) -> AppliedPatch:
        (patch_id, lib_desc, universe, time_ns, part, nparts, _, label,
         object_path) = struct.unpack_from(APPLIED_PATCH_FORMAT, data, offset)
        return cls(patch_id, lib_desc, universe, time_ns, part, nparts,
                   label.split(b"\0", 1)[0].decode(errors="replace"),
                   object_path.split(b"\0", 1)[0].decode(errors="replace"))


class AgentState(enum.IntEnum):
    STARTING = 0
    IDLE = 1
    BUSY = 2
    OFF = 3  # no agent: ULP_AGENT=off, or it could not be started
    ENDED = 4  # it was the last thread of the process and ended
    DEMAND = 5  # none yet (ULP_AGENT=demand): the trigger starts it (runtime/demand.c)


class Op(enum.IntEnum):
    PREPARE = 1
    COMMIT = 2
    REVERT = 3
    ABORT = 4
    STATUS = 5
    STAGE = 6
    LIST = 7  # the applied patches of one library (ABI 4)


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
    PRIVATE = 18  # a private function's entry cannot be routed
    REFERENCE = 19  # a data reference cannot be filled
    PINS_RELEASED = 20  # a commit with every thread stopped came too late: retry
    COROUTINES = 21  # activations cannot be judged now (coroutine or unnoted stacks, shared TLS)


class RefKind(enum.IntEnum):
    ADDRESS = 1  # the patch's pointer := the target symbol's address
    TLS = 2  # the patch's tls_index := {module of the target, offset}


@dataclass(frozen=True)
class MailboxHeader:
    """struct ulp_mailbox up to the message."""

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
    features: int  # FEATURE_*: what the runtime takes beyond its ABI version
    idle_address: int
    applied_table: int  # struct ulp_applied_table (0: a runtime without one)

    @classmethod
    def unpack(cls, data: bytes) -> MailboxHeader:
        return cls(*struct.unpack_from(MAILBOX_HEADER_FORMAT, data))


@dataclass(frozen=True)
class RequestThread:
    """A stopped thread, for COMMIT and REVERT (runtime/transition.c)."""

    tid: int
    rip: int
    rsp: int
    thread_pointer: int
    stack_low: int
    stack_high: int
    here_high: int

    def pack(self) -> bytes:
        return struct.pack(REQUEST_THREAD_FORMAT, self.tid, 0, self.rip, self.rsp,
                           self.thread_pointer, self.stack_low, self.stack_high,
                           self.here_high)


@dataclass
class Request:
    """One request to the agent, packed as struct ulp_request and what follows it."""

    op: Op
    patch_id: bytes = bytes(16)
    lib_desc: int = 0
    identity: bytes = bytes(32)
    so_sha256: bytes = bytes(32)
    so_path: str = ""  # the name the link map shows for the patch object
    so_fd: int = -1  # PREPARE: the descriptor STAGE returned, filled; or SO_INLINE
    so_size: int = 0
    requires: tuple[bytes, ...] = ()
    units: tuple[tuple[int, str], ...] = ()  # (function index, replacement name)
    #: (entry - library descriptor, flags, replacement name)
    #: (entry - library descriptor, flags, replacement name, code size or 0)
    privates: tuple[tuple[int, int, str, int], ...] = ()
    refs: tuple[tuple[int, int, str], ...] = ()  # (RefKind, delta, patch variable name)
    label: str | None = None
    part: int = 0  # PREPARE: which target library of the patch (ABI 5)
    nparts: int = 1  # PREPARE: how many the patch has
    threads: tuple[RequestThread, ...] = ()  # COMMIT, REVERT: every stopped thread (ABI 6)
    keep_pins: bool = False  # the next request (sent with every thread stopped) uses them
    trust_stacks: bool = False  # COMMIT, REVERT: the operator vouches no stack goes unnoted
    fill_bounds: bool = False  # COMMIT, REVERT: the runtime finds the threads' stacks
    inline_object: bytes = b""  # PREPARE with SO_INLINE: the patch object's bytes

    def privates_offset(self) -> int:
        """Where the private units start in the packed request (the runtime
        writes their descriptors there)."""
        return (struct.calcsize(REQUEST_HEADER_FORMAT) + 16 * len(self.requires)
                + struct.calcsize(REQUEST_UNIT_FORMAT) * len(self.units))

    def pack(self) -> bytes:
        strings = bytearray()

        def add_string(text: str) -> int:
            offset = len(strings)
            strings.extend(text.encode() + b"\0")
            return offset

        so_path = add_string(self.so_path)
        units = b"".join(struct.pack(REQUEST_UNIT_FORMAT, index, add_string(name))
                         for index, name in self.units)
        privates = b"".join(struct.pack(REQUEST_PRIVATE_FORMAT, delta, add_string(name), flags, 0,
                                        size)
                            for delta, flags, name, size in self.privates)
        refs = b"".join(struct.pack(REQUEST_REF_FORMAT, kind, add_string(name), delta)
                        for kind, delta, name in self.refs)
        label = NO_LABEL if self.label is None else add_string(self.label)
        header = struct.pack(REQUEST_HEADER_FORMAT, self.op, len(self.units), len(self.requires),
                             len(strings), self.patch_id, self.lib_desc, self.identity,
                             self.so_sha256, so_path, self.so_fd, self.so_size,
                             len(self.privates), len(self.refs), label, self.part,
                             self.nparts, len(self.threads),
                             (REQUEST_KEEP_PINS if self.keep_pins else 0)
                             | (REQUEST_TRUST_STACKS if self.trust_stacks else 0)
                             | (REQUEST_FILL_BOUNDS if self.fill_bounds else 0))
        threads = b"".join(thread.pack() for thread in self.threads)
        data = (header + b"".join(self.requires) + units + privates + refs + threads
                + bytes(strings) + self.inline_object)
        if len(data) > REQUEST_MAX:
            raise ValueError("request too large for the runtime's mailbox")
        return data
