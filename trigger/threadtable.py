"""What the runtime needs to know of each stopped thread to start a
transition (runtime/transition.c): where it stopped, its thread pointer and
its stacks.

Taken while every thread is stopped, for the COMMIT or REVERT request that
is answered before any of them runs again.
"""

from __future__ import annotations

import bisect
import ctypes
import errno
import fcntl
import os
import struct

from ulp.agent_abi import RequestThread
from ulp.process import Process
from ulp.trigger.tracee import Tracee, UserRegs

#: ioctl(/proc/PID/maps, PROCMAP_QUERY) (Linux 6.11): the mapping that holds
#: one address, without the text of every mapping (struct procmap_query,
#: linux/fs.h: 104 bytes, _IOWR('f', 17, ...))
PROCMAP_QUERY = 0xC0686611
QUERY = struct.Struct("<9Q4I2Q")
NAME_MAX = 16  # enough for "[stack]"; a longer name is not that
#: above this many threads, one read of the whole text costs less than a
#: query per address
QUERY_THREADS_MAX = 16

Range = tuple[int, int]


class _NoQuery(Exception):
    """PROCMAP_QUERY cannot answer (an older kernel): read the text instead."""


class _Queried:
    """The mappings of a process, asked one address at a time."""

    def __init__(self, pid: int) -> None:
        try:
            self._fd = os.open(f"/proc/{pid}/maps", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            raise _NoQuery() from None
        self._name = ctypes.create_string_buffer(NAME_MAX)

    def close(self) -> None:
        os.close(self._fd)

    def containing(self, address: int, name: bytes | None = None) -> Range | None:
        """The mapping that holds ``address`` (with ``name``: only if it is
        named so), None if there is none."""
        name_size, name_address = (NAME_MAX, ctypes.addressof(self._name)) if name else (0, 0)
        query = bytearray(QUERY.pack(QUERY.size, 0, address, 0, 0, 0, 0, 0, 0, 0, 0,
                                     name_size, 0, name_address, 0))
        try:
            fcntl.ioctl(self._fd, PROCMAP_QUERY, query, True)
        except OSError as error:
            if error.errno == errno.ENOENT:
                return None  # nothing mapped there
            if name and error.errno == errno.ENAMETOOLONG:
                return None  # named otherwise
            raise _NoQuery() from None
        fields = QUERY.unpack(query)
        # the size the kernel gives back counts the final NUL; 0: no name
        if name and self._name.raw[:max(fields[11] - 1, 0)] != name:
            return None
        return fields[3], fields[4]


def _queried_table(process: Process, threads: list[tuple[int, UserRegs]]) -> list[tuple]:
    """(tid, regs, own stack, mapping of %rsp) per thread, each asked of the
    kernel; _NoQuery if it cannot answer, or if the main thread is not on
    [stack] (then only the whole text finds [stack])."""
    maps = _Queried(process.pid)
    try:
        rows = []
        for tid, regs in threads:
            if tid == process.pid:
                here = own = maps.containing(regs.rsp, b"[stack]")
                if own is None:
                    raise _NoQuery()
            else:
                own, here = maps.containing(regs.fs_base), maps.containing(regs.rsp)
            rows.append((tid, regs, own, here))
        return rows
    finally:
        maps.close()


def _read_table(process: Process, threads: list[tuple[int, UserRegs]]) -> list[tuple]:
    """The same from the text of /proc/PID/maps."""
    ranges, main_stack = _address_ranges(process.pid)
    starts = [start for start, _ in ranges]
    return [(tid, regs, main_stack if tid == process.pid
             else _containing(ranges, starts, regs.fs_base),
             _containing(ranges, starts, regs.rsp)) for tid, regs in threads]


def _address_ranges(pid: int) -> tuple[list[Range], Range | None]:
    """The mappings of ``pid``, sorted, as (start, end), and [stack]'s.
    Parsed here, no more than that: every thread waits while this runs."""
    ranges, stack = [], None
    with open(f"/proc/{pid}/maps", "rb") as stream:
        for line in stream.read().splitlines():
            span = line.split(b" ", 1)[0]
            start, _, end = span.partition(b"-")
            entry = (int(start, 16), int(end, 16))
            ranges.append(entry)
            if line.endswith(b"[stack]"):
                stack = entry
    return ranges, stack


def _containing(ranges: list[Range], starts: list[int], address: int) -> Range | None:
    index = bisect.bisect_right(starts, address) - 1
    if index >= 0 and address < ranges[index][1]:
        return ranges[index]
    return None


def leaves_stacks_to_runtime(threads: int, runtime_finds_stacks: bool) -> bool:
    """Does the table of ``threads`` threads leave their stacks 0, for the runtime?"""
    return runtime_finds_stacks and threads > QUERY_THREADS_MAX


def thread_table(process: Process, stopped: dict[int, Tracee],
                 runtime_finds_stacks: bool = False) -> list[RequestThread]:
    """One entry per thread in ``stopped``: %rip, %rsp, thread pointer, its own
    stack (the mapping of [stack] for the main thread, else the mapping its
    thread pointer lies in: glibc puts the thread's control block at the top
    of its stack) and the end of the mapping %rsp is in.

    With a few threads, each mapping is asked of the kernel (PROCMAP_QUERY):
    reading and parsing the text of every mapping was most of this, and
    every thread waits meanwhile.  With more, and ``runtime_finds_stacks``
    (the runtime announces FEATURE_THREAD_BOUNDS), the stacks are left 0
    for the runtime to find in its own mappings, in C (the request then
    says REQUEST_FILL_BOUNDS): 0.95 ms of the 257-thread pause here."""
    threads = [(tid, tracee.registers_when_stopped or tracee.get_registers())
               for tid, tracee in sorted(stopped.items())]
    if leaves_stacks_to_runtime(len(threads), runtime_finds_stacks):
        return [RequestThread(tid, regs.rip, regs.rsp, regs.fs_base, 0, 0, 0)
                for tid, regs in threads]
    rows = None
    if len(threads) <= QUERY_THREADS_MAX:
        try:
            rows = _queried_table(process, threads)
        except _NoQuery:
            pass
    if rows is None:
        rows = _read_table(process, threads)
    return [RequestThread(tid=tid, rip=regs.rip, rsp=regs.rsp, thread_pointer=regs.fs_base,
                          stack_low=own[0] if own else 0, stack_high=own[1] if own else 0,
                          here_high=here[1] if here else 0)
            for tid, regs, own, here in rows]
