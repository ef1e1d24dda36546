"""Writing code into a live process: every thread stopped, bytes written by
the tracer through /proc/PID/mem.

No thread executes while the bytes change, the kernel's entry and exit
serialise each thread's instruction stream, and /proc/PID/mem writes even to
pages the process mapped read-only or forbids to make writable.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from ulp.errors import ExitCode, UlpError
from ulp.process import Process
from ulp.trigger.tracee import ThreadGone, Tracee


@contextlib.contextmanager
def all_threads_stopped(process: Process, held: dict[int, Tracee],
                        timeout: float) -> Iterator[None]:
    """Stop every thread of ``process`` (those in ``held`` are stopped already).

    Threads started meanwhile are caught by scanning again until a scan finds
    no new thread.
    """
    deadline = time.monotonic() + timeout
    stopped: dict[int, Tracee] = {}
    try:
        while True:
            new = [tid for tid in process.threads() if tid not in held and tid not in stopped]
            if not new:
                break
            for tid in new:
                tracee = Tracee(tid)
                try:
                    tracee.stop(deadline)
                except ThreadGone:
                    tracee.detach()
                    continue
                except UlpError:
                    tracee.detach()
                    raise
                stopped[tid] = tracee
        if not process.alive():
            raise process.gone()
        yield
    finally:
        for tracee in stopped.values():
            tracee.detach()


def write_code(process: Process, address: int, expected: bytes, new: bytes,
               what: str) -> bool:
    """Replace ``expected`` by ``new`` at ``address``; False if ``new`` is there already."""
    current = process.read(address, len(expected))
    if current == new:
        return False
    if current != expected:
        raise UlpError(f"unexpected code at {what} ({current.hex()}); refusing to write",
                       ExitCode.TARGET_MISMATCH)
    process.write(address, new)
    return True
