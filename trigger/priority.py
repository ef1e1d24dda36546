"""Running the trigger and the target's agent first while they work.

A target whose own threads keep every core busy leaves a normal-priority
trigger and agent a thin slice each: with 64 busy threads on 2 cores, one
apply took 22-98 s of wall time for 0.25 s of CPU, every wake-up of the
trigger or the agent waiting behind the busy threads.  With the privilege
to (root, CAP_SYS_NICE), both run with SCHED_FIFO priority 1 for the
duration: they get a core as soon as they are runnable and give it back
whenever they wait.  Each waits in the kernel between its steps, so the
application still runs meanwhile; its threads are only held by the short
code-writing stop.  The agent's policy is put back when the trigger lets it
go; SCHED_RESET_ON_FORK keeps a child it forks (a patch constructor can)
from inheriting the boost (the trigger's own threads must inherit it: the
flag resets threads too), and a trigger that dies leaves at most an idle
agent with a real-time policy, which waits in ppoll all the same.
Without the privilege everything runs as it is.
"""

from __future__ import annotations

import os

FIFO_PRIORITY = 1

Saved = tuple[int, os.sched_param] | None


def raise_priority(tid: int = 0, reset_on_fork: bool = False) -> Saved:
    """SCHED_FIFO for thread ``tid`` (0: the calling thread, and the threads
    it starts); what to restore, or None."""
    try:
        policy, param = os.sched_getscheduler(tid), os.sched_getparam(tid)
        if policy & ~os.SCHED_RESET_ON_FORK in (os.SCHED_FIFO, os.SCHED_RR) \
                and param.sched_priority >= FIFO_PRIORITY:
            return None  # real-time already: leave it
        flags = os.SCHED_RESET_ON_FORK if reset_on_fork else 0
        os.sched_setscheduler(tid, os.SCHED_FIFO | flags, os.sched_param(FIFO_PRIORITY))
    except (OSError, AttributeError):
        return None
    return policy, param


def restore_priority(saved: Saved, tid: int = 0) -> None:
    """Put back what ``raise_priority`` changed; never raises (the thread may be gone)."""
    if saved is not None:
        try:
            os.sched_setscheduler(tid, *saved)
        except OSError:
            pass


class scheduled_first:
    """``with scheduled_first():`` SCHED_FIFO for the block (a class, not
    contextlib: ulp.trigger.launch imports this module before the raise,
    and every import then costs wall time on a busy machine)."""

    def __init__(self, tid: int = 0) -> None:
        self.tid = tid
        self.saved: Saved = None

    def __enter__(self) -> None:
        self.saved = raise_priority(self.tid)

    def __exit__(self, *exc: object) -> None:
        restore_priority(self.saved, self.tid)
