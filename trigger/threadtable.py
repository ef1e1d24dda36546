"""What the runtime needs to know of each stopped thread to start a
transition (runtime/transition.c): where it stopped, its thread pointer and
its stacks.

Taken while every thread is stopped, for the COMMIT or REVERT request that
is answered before any of them runs again.
"""

from __future__ import annotations

import bisect

from ulp.agent_abi import RequestThread
from ulp.process import Process
from ulp.trigger.tracee import Tracee


def _address_ranges(pid: int) -> tuple[list[tuple[int, int]], tuple[int, int] | None]:
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


def _containing(ranges: list[tuple[int, int]], starts: list[int],
                address: int) -> tuple[int, int] | None:
    index = bisect.bisect_right(starts, address) - 1
    if index >= 0 and address < ranges[index][1]:
        return ranges[index]
    return None


def thread_table(process: Process, stopped: dict[int, Tracee]) -> list[RequestThread]:
    """One entry per thread in ``stopped``: %rip, %rsp, thread pointer, its own
    stack (the mapping of [stack] for the main thread, else the mapping its
    thread pointer lies in: glibc puts the thread's control block at the top
    of its stack) and the end of the mapping %rsp is in."""
    ranges, main_stack = _address_ranges(process.pid)
    starts = [start for start, _ in ranges]
    table = []
    for tid, tracee in sorted(stopped.items()):
        regs = tracee.registers_when_stopped or tracee.get_registers()
        own = main_stack if tid == process.pid else _containing(ranges, starts, regs.fs_base)
        here = _containing(ranges, starts, regs.rsp)
        table.append(RequestThread(
            tid=tid, rip=regs.rip, rsp=regs.rsp, thread_pointer=regs.fs_base,
            stack_low=own[0] if own else 0, stack_high=own[1] if own else 0,
            here_high=here[1] if here else 0))
    return table
