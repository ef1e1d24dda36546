"""Writing code into a live process: every thread stopped, bytes written by
the tracer through /proc/PID/mem.

No thread executes while the bytes change, the kernel's entry and exit
serialise each thread's instruction stream, and /proc/PID/mem writes even to
pages the process mapped read-only or forbids to make writable (MDWE,
seccomp).

The pause of the application is kept short: threads are seized first (that
does not stop them), then all are interrupted at once, then waited for;
the code is checked before the stop and only written during it.
``last_pause()`` tells how long the last stop held the threads.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ulp.errors import ExitCode, UlpError
from ulp.process import Process, stat_fields
from ulp.trigger.priority import scheduled_first
from ulp.trigger.tracee import WALL, ThreadGone, Tracee, thread_is_exiting, wait_for_sigchld


@dataclass(frozen=True)
class Pause:
    """One stop of the application.

    ``seconds``: the longest stop of any thread, each bounded by the moment
    just before it was interrupted and the moment just after it was let go
    (it runs before the first and after the second); ``span``: from the
    first interrupt to the last release, the figure this reported before
    (the threads are interrupted one after the other and let go one after
    the other, the first interrupted first, so no thread is stopped that
    long: with 257 threads, 0.7 ms more)."""

    threads: int
    seconds: float
    span: float = 0.0


_pauses = threading.local()  # each thread's last pause: ulp-trigger runs one per process

RELEASE_WAIT = 0.2  # how long to wait for a thread to stop so that it can be detached
#: With more threads than this still to stop, the wait for them sleeps
#: BATCH_SLEEP and then takes every stop that came, instead of waking at each
#: thread's SIGCHLD: each wake-up of this real-time process took a CPU from
#: the threads still on their way to their stop (2 cores, 128 busy threads:
#: the 257-thread pause 8.9 ms [7.7..10.1] waking, 6.6 ms [6.3..7.1]
#: sleeping 0.3 ms; with 9 threads waking is faster, 0.85 against 1.03 ms)
BATCH_ABOVE = 32
BATCH_SLEEP = 0.0003
_DEATHS = (os.CLD_EXITED, os.CLD_KILLED, os.CLD_DUMPED)


def last_pause() -> Pause | None:
    """The pause of this thread's most recent code write (for benchmarks)."""
    return getattr(_pauses, "last", None)


@dataclass(frozen=True)
class CodeWrite:
    """Bytes to write at an address of the target's code, and what must be there."""

    address: int
    expected: bytes  # what must be there before
    new: bytes
    what: str  # for messages: "the entry of foo"


def check_code(process: Process, writes: list[CodeWrite]) -> list[CodeWrite]:
    """The writes still to do; TARGET_MISMATCH if some code is neither old nor new.

    Runs before any thread is stopped: only the ulp agent, held by this
    trigger, could change these bytes meanwhile.
    """
    todo = []
    for write in writes:
        current = process.read(write.address, len(write.expected))
        if current == write.new:
            continue
        if current != write.expected:
            raise UlpError(f"unexpected code at {write.what} ({current.hex()}); "
                           "refusing to write", ExitCode.TARGET_MISMATCH)
        todo.append(write)
    return todo


def write_code(process: Process, writes: list[CodeWrite], held: dict[int, Tracee],
               timeout: float, avoid: dict[int, str] | None = None,
               then: Callable[[dict[int, Tracee]], object] | None = None) -> object:
    """Write every change with every thread of ``process`` stopped, then
    call ``then(stopped threads)`` before any of them runs again.

    ``avoid``: addresses no stopped thread may be about to execute (the
    second of two one-byte entry NOPs that a two-byte jump replaces), with
    what they are for the message; such a thread makes it RETRY.
    """
    with all_threads_stopped(process, held, timeout) as stopped:
        _check_avoided(stopped, avoid or {})
        for write in writes:
            process.write(write.address, write.new)
        return then(stopped) if then else None


def _check_avoided(stopped: dict[int, Tracee], avoid: dict[int, str]) -> None:
    if not avoid:
        return
    for tracee in stopped.values():
        what = avoid.get((tracee.registers_when_stopped or tracee.get_registers()).rip)
        if what is not None:
            raise UlpError(f"thread {tracee.tid} is stopped inside {what}; nothing written, "
                           "try again (--retries)", ExitCode.RETRY)


@contextlib.contextmanager
def all_threads_stopped(process: Process, held: dict[int, Tracee],
                        timeout: float) -> Iterator[dict[int, Tracee]]:
    """Stop every thread of ``process`` (those in ``held`` are stopped already).

    Threads started meanwhile are caught by scanning again until a scan finds
    no new thread; a thread that is exiting never runs user code again and
    is left alone.
    """
    deadline = time.monotonic() + timeout
    stopped: dict[int, Tracee] = {}
    longest: list[float] = []
    with scheduled_first(), _reaper.watching(held), _stopping(process, held, deadline,
                                                              stopped, longest) as started:
        yield stopped
    if started:
        _pauses.last = Pause(len(stopped), longest[0] if longest else 0.0,
                             time.monotonic() - started[0])


class _Reaper:
    """Reaps a held thread that dies while other threads are being seized.

    An execve by another thread kills the held agent and then waits, holding
    the lock PTRACE_SEIZE needs, until the agent's tracer (this process)
    reaps it: a seize blocked on that lock would wait forever.  A second
    thread of this process reaps the dead (exit events only: stops stay for
    the main logic, which may run the held agent meanwhile), so the exec,
    and then the seize, go on.

    One thread for the whole process, looking every PERIOD while a stop is
    under way, not one per stop: starting and joining a thread for every
    process of a fleet cost more than the rest of the stop (docs/trigger.md,
    "Speed").  It ends after IDLE_END without work, so that a long-lived
    program using this module keeps no thread polling.
    """

    PERIOD = 0.002
    IDLE_END = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()  # held while it reaps, and to start or end it
        # the held threads of each stop under way (a program's threads may stop several)
        self._held: dict[int, dict[int, Tracee]] = {}
        self._running = False
        self._last_use = 0.0

    @contextlib.contextmanager
    def watching(self, held: dict[int, Tracee]) -> Iterator[None]:
        with self._lock:
            self._held[id(held)] = held
            self._last_use = time.monotonic()
            if not self._running:
                # started inside scheduled_first, it inherits the real-time
                # policy: at normal priority, busy application threads keep it
                # off the CPU while it holds the interpreter lock the tracer
                # needs (the 256-thread pause went from 7 ms to 0.6-1.5 s that way)
                threading.Thread(target=self._run, name="ulp-reaper", daemon=True).start()
                self._running = True
        try:
            yield
        finally:
            with self._lock:  # not while it reaps: after this, the caller's alone
                del self._held[id(held)]
                self._last_use = time.monotonic()

    def _run(self) -> None:
        while True:
            time.sleep(self.PERIOD)
            with self._lock:
                for held in self._held.values():
                    _reap_dead(held)
                if not self._held and time.monotonic() - self._last_use > self.IDLE_END:
                    self._running = False
                    return

    def forget(self) -> None:
        """In a child after fork: the thread was not copied."""
        self.__init__()


_reaper = _Reaper()
os.register_at_fork(after_in_child=_reaper.forget)


def _reap_dead(held: dict[int, Tracee]) -> None:
    for tracee in list(held.values()):
        if not tracee.seized:
            continue
        try:
            # a tracer is told of its tracees' stops whatever the
            # flags say: only look (WNOWAIT), and reap an exit only
            info = os.waitid(os.P_PID, tracee.tid, os.WEXITED | os.WNOHANG | os.WNOWAIT | WALL)
            if info is not None and info.si_code in _DEATHS:
                os.waitid(os.P_PID, tracee.tid, os.WEXITED | os.WNOHANG | WALL)
                tracee.seized = tracee.stopped = False
        except ChildProcessError:
            tracee.seized = tracee.stopped = False


@contextlib.contextmanager
def _stopping(process: Process, held: dict[int, Tracee], deadline: float,
              stopped: dict[int, Tracee], longest: list[float]) -> Iterator[list[float]]:
    """Stop the threads into ``stopped``; yield [time of the first interrupt].
    Once they are let go, ``longest`` holds the longest stop of any of them."""
    started: list[float] = []
    exiting: set[int] = set()  # listed, but could not be seized: they never run again
    try:
        while True:
            new = [tid for tid in process.threads()
                   if tid not in held and tid not in stopped and tid not in exiting]
            if not new:
                break
            seized = _seize_all(process, new)
            exiting.update(set(new) - {tracee.tid for tracee in seized})
            if not started:
                started.append(time.monotonic())
            _interrupt_all(seized)
            stopped.update(_wait_all(process, seized, deadline))
            if not exiting and _thread_count(process) == len(stopped) + len(held):
                break  # no thread started meanwhile: spares listing them again
        if not process.known():
            raise process.gone()
        yield started
    finally:
        longest.append(_let_go_in_order(stopped))


def _thread_count(process: Process) -> int | None:
    """How many threads the process has (/proc/PID/stat: one read instead of
    listing /proc/PID/task, 0.2 ms with 257 threads while every thread
    waits); None if unknown.

    Equal to the threads held and stopped, with none exiting, there is no
    other: a stopped thread cannot end without the whole process, and one
    that did stays counted until this tracer reaps it.  (From the pause
    helper's branch, session 8.)"""
    fields = stat_fields(process.pid)
    try:
        return int(fields[17]) if fields else None
    except (IndexError, ValueError):
        return None


def _let_go_in_order(stopped: dict[int, Tracee]) -> float:
    """Detach every stopped thread, the first interrupted first; the
    longest time any was held, from its interrupt to its release."""
    longest = 0.0
    for tracee in sorted(stopped.values(), key=lambda t: t.interrupted_at or 0.0):
        tracee.detach()
        if tracee.interrupted_at is not None:
            longest = max(longest, time.monotonic() - tracee.interrupted_at)
    return longest


def _seize_all(process: Process, tids: list[int]) -> list[Tracee]:
    """Seize each thread (it keeps running); skip threads that are exiting."""
    seized = []
    try:
        for tid in tids:
            tracee = Tracee(tid)
            try:
                tracee.seize()
            except ThreadGone:
                continue
            except UlpError as error:
                # the kernel refuses to seize a thread in do_exit (EPERM)
                if error.exit_code == ExitCode.PERMISSION and thread_is_exiting(process.pid, tid):
                    continue
                raise
            seized.append(tracee)
            # a TID is reused once its thread is gone: make sure we hold ours
            if not os.path.exists(f"/proc/{process.pid}/task/{tid}"):
                seized.pop().let_go(time.monotonic() + RELEASE_WAIT)
    except BaseException:
        release = time.monotonic() + RELEASE_WAIT
        for tracee in seized:
            tracee.let_go(release)
        raise
    return seized


def _interrupt_all(seized: list[Tracee]) -> None:
    for tracee in seized:
        try:
            tracee.interrupted_at = time.monotonic()
            tracee.interrupt()
        except ThreadGone:
            pass  # _wait_all collects it


def _peek_event() -> int | None:
    """The thread or child with a wait event ready, without taking the event."""
    try:
        info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WSTOPPED | os.WNOHANG | os.WNOWAIT | WALL)
    except ChildProcessError:
        return None
    return info.si_pid if info is not None else None


def _collect(tracee: Tracee, waiting: dict[int, Tracee], stopped: dict[int, Tracee]) -> bool:
    """Take the tracee's event if it has one; True if it did (stopped or gone)."""
    try:
        if not tracee.poll_stop():
            return False
        stopped[tracee.tid] = tracee
        # now, while other threads are still stopping: a commit needs them
        # (trigger/threadtable.py), and the pause is the slowest thread's
        tracee.registers_when_stopped = tracee.get_registers()
    except ThreadGone:
        pass
    del waiting[tracee.tid]
    return True


def _collect_ready(waiting: dict[int, Tracee], stopped: dict[int, Tracee]) -> None:
    """Take every event the kernel has ready for the waiting tracees.

    Peeking (WNOWAIT) at whichever child has an event spares polling every
    waiting thread after each SIGCHLD, which made the pause grow with the
    square of the number of threads.  When the event belongs to some other
    child of this process, every tracee is polled instead.
    """
    while waiting:
        pid = _peek_event()
        if pid is None:
            return
        tracee = waiting.get(pid)
        if tracee is None or not _collect(tracee, waiting, stopped):
            for tracee in list(waiting.values()):
                _collect(tracee, waiting, stopped)
            return


def _wait_all(process: Process, seized: list[Tracee], deadline: float) -> dict[int, Tracee]:
    """Wait until every seized thread is stopped (or gone); return the stopped ones.

    A thread interrupted while inside execve does not stop afterwards: the
    kernel drops the interrupt, and the thread runs the new program, the
    only one left of the process.  Waiting for it would last the whole
    timeout; a changed image ends the wait (PROCESS_EXITED).
    """
    waiting = {tracee.tid: tracee for tracee in seized}
    stopped: dict[int, Tracee] = {}
    try:
        for tracee in list(waiting.values()):
            _collect(tracee, waiting, stopped)
        while waiting:
            _collect_ready(waiting, stopped)
            if not waiting:
                break
            if process.image_changed():
                raise process.gone()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UlpError(f"timed out waiting for {len(waiting)} thread(s) to stop "
                               f"(thread {next(iter(waiting))}, in an uninterruptible wait?)",
                               ExitCode.RETRY)
            if len(waiting) > BATCH_ABOVE:
                time.sleep(min(remaining, BATCH_SLEEP))
            else:
                wait_for_sigchld(min(remaining, 0.001))
    except BaseException:
        release = time.monotonic() + RELEASE_WAIT
        for tracee in waiting.values():
            tracee.let_go(release)
        for tracee in stopped.values():
            tracee.detach()
        raise
    return stopped
