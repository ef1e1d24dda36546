"""The runtime's message log of a process (runtime/log.c), read from outside.

``ulp messages PID`` reads the ring through /proc/PID/mem: nothing is
stopped and the agent is not asked, so it works on a process whose agent is
off, busy or stuck, and under a debugger.  This file mirrors
runtime/ulp_log.h; tests/test_messages.py compiles the header and checks
every offset, size and value here against it.

A record is kept only if it was whole while it was read: the ring is read
three times, and a record's fields (from the second copy) count if its
sequence word is even, non-zero, the same in all three and names a ticket
of its own slot (a seqlock read, runtime/log.c
"How a reader knows a record is whole").
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from ulp.errors import ExitCode, UlpError
from ulp.process import Process

LOG_SYMBOL = "ulp_log"
LOG_MAGIC = b"ULPLOG\x00\x00"
LOG_VERSION = 1
HEADER_FORMAT = "<8sIIIIQQQ16x"
HEADER_SIZE = struct.calcsize(HEADER_FORMAT)
RECORD_FORMAT = "<QqIiQ104s"
RECORD_SIZE = struct.calcsize(RECORD_FORMAT)
TEXT_SIZE = 104
RECORDS_MAX = 1 << 16  # a header claiming more is not one this reader trusts
TICKETS_OFFSET = 24
DROPPED_OFFSET = 32
RECORD_TEXT_OFFSET = 32
assert HEADER_SIZE == 64 and RECORD_SIZE == 136


class Kind(enum.IntEnum):
    RUNTIME = 1
    AGENT = 2
    LIBRARY = 3
    STAGED = 4
    APPLIED = 5
    REVERTED = 6
    REFUSED = 7


@dataclass(frozen=True)
class Message:
    number: int  # the record's ticket: messages are numbered from 0 in the order begun
    time_ns: int  # CLOCK_REALTIME
    kind: str  # a Kind's name in lower case, or "kind N" for one this reader does not know
    tid: int
    address: int  # the library descriptor it is about, or 0
    text: str


@dataclass(frozen=True)
class Log:
    pid: int
    messages: list[Message]  # oldest first
    overwritten: int  # older messages the ring no longer holds
    dropped: int  # messages the runtime gave up (their slot was busy)
    unreadable: int  # records being written while they were read


def read_log(pid: int) -> Log:
    """The messages of process ``pid``; NO_RUNTIME if it has no message log."""
    from ulp.trigger.agent import runtime_symbol

    process = Process(pid)
    try:
        address = runtime_symbol(process, LOG_SYMBOL)
        if address is None:
            if not process.known():
                raise process.gone()
            raise UlpError(f"process {process.pid} has no ulp message log (no ulp runtime, "
                           "or one older than the log)", ExitCode.NO_RUNTIME)
        return _read(process, address)
    finally:
        process.close()


def _read(process: Process, address: int) -> Log:
    magic, version, nrecords, record_size, text_size, _, _, ring = struct.unpack(
        HEADER_FORMAT, process.read(address, HEADER_SIZE))
    if (magic != LOG_MAGIC or version != LOG_VERSION or record_size != RECORD_SIZE
            or text_size != TEXT_SIZE or not 0 < nrecords <= RECORDS_MAX
            or nrecords & (nrecords - 1)):
        raise UlpError(f"process {process.pid} has a ulp message log this ulp cannot read "
                       f"(version {version})", ExitCode.NO_RUNTIME)
    # A seqlock read in three copies: the kernel copies with fast-string
    # moves, whose loads within one copy may happen in any order, so the
    # sequence words that bracket the fields come from the copies before
    # and after the one the fields come from (each a system call apart).
    before = process.read(ring, nrecords * RECORD_SIZE)
    fields = process.read(ring, nrecords * RECORD_SIZE)
    tickets, dropped = struct.unpack("<QQ", process.read(address + TICKETS_OFFSET, 16))
    after = process.read(ring, nrecords * RECORD_SIZE)
    messages, unreadable = [], 0
    for slot in range(nrecords):
        offset = slot * RECORD_SIZE
        record = struct.unpack_from(RECORD_FORMAT, fields, offset)
        seq = record[0]
        if seq == 0:
            continue
        first = struct.unpack_from("<Q", before, offset)[0]
        again = struct.unpack_from("<Q", after, offset)[0]
        ticket = seq // 2 - 1
        if seq % 2 or seq != first or seq != again or ticket % nrecords != slot:
            unreadable += 1
            continue
        messages.append(_message(ticket, record))
    messages.sort(key=lambda message: message.number)
    return Log(process.pid, messages, max(0, tickets - nrecords), dropped, unreadable)


def _message(ticket: int, record: tuple) -> Message:
    _, time_ns, kind, tid, address, text = record
    try:
        name = Kind(kind).name.lower()
    except ValueError:
        name = f"kind {kind}"
    return Message(ticket, time_ns, name, tid, address,
                   text.split(b"\0", 1)[0].decode("utf-8", "replace"))
