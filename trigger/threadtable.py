"""What the runtime needs to know of each stopped thread to start a
transition (runtime/transition.c): where it stopped, its thread pointer and
its stacks.

Taken while every thread is stopped, for the COMMIT or REVERT request that
is answered before any of them runs again.
"""

from __future__ import annotations

import bisect

from ulp.agent_abi import RequestThread
from ulp.process import Mapping, Process
from ulp.trigger.tracee import Tracee


def _containing(mappings: list[Mapping], starts: list[int], address: int) -> Mapping | None:
    index = bisect.bisect_right(starts, address) - 1
    if index >= 0 and address < mappings[index].end:
        return mappings[index]
    return None


def thread_table(process: Process, stopped: dict[int, Tracee]) -> list[RequestThread]:
    """One entry per thread in ``stopped``: %rip, %rsp, thread pointer, its own
    stack (the mapping of [stack] for the main thread, else the mapping its
    thread pointer lies in: glibc puts the thread's control block at the top
    of its stack) and the end of the mapping %rsp is in."""
    mappings = sorted(process.mappings(), key=lambda mapping: mapping.start)
    starts = [mapping.start for mapping in mappings]
    main_stack = next((m for m in mappings if m.path == "[stack]"), None)
    table = []
    for tid, tracee in sorted(stopped.items()):
        regs = tracee.get_registers()
        own = main_stack if tid == process.pid else _containing(mappings, starts, regs.fs_base)
        here = _containing(mappings, starts, regs.rsp)
        table.append(RequestThread(
            tid=tid, rip=regs.rip, rsp=regs.rsp, thread_pointer=regs.fs_base,
            stack_low=own.start if own else 0, stack_high=own.end if own else 0,
            here_high=here.end if here else 0))
    return table
