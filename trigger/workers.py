"""Worker processes: one ulp-trigger call working on many processes at once.

Processes, not threads.  A worker spends most of its time in Python (the
CPU of an apply is the interpreter's, between system calls), and threads of
one interpreter run it one at a time: every system call hands the
interpreter lock over to another thread, a context switch each with the
real-time priority (ulp.trigger.priority).  Measured on 2 cores, 501 idle
processes: 2 threads took longer than 1 (1.65 s against 1.55 s, a quarter
of the CPU in futex calls); separate processes share nothing and use every
core (docs/trigger.md, "Speed").

The parent forks ``jobs`` workers once everything shared has been read and
checked (patch files, the list of PIDs): each inherits it.  PIDs are handed
out through one pipe, four bytes each: every write is a whole number of
PIDs of at most PIPE_BUF bytes and every read takes four, both atomic, so a
worker takes the next process as soon as it is free.  Each worker sends
back what ``work(pid)`` returns (marshal data) on a pipe of its own, as a
length and the bytes.

Stopping: a worker ignores SIGINT and finishes the process it is working on
(an apply is never cut in the middle by a Ctrl-C).  On a KeyboardInterrupt
the parent takes back the PIDs no worker took yet (it keeps a read end of
their pipe for that), takes the results of the processes under way, then
raises it again; on any other exception, or a second Ctrl-C, it closes its
end of the pipes, and each worker ends at its next write (EPIPE), then is
waited for.  A worker whose parent dies ends the same way.  A worker that
dies leaves its process without a result: ``run`` returns the PIDs no
answer came for.
"""

from __future__ import annotations

import marshal
import os
import select
import signal
import time
from collections.abc import Callable

PID_SIZE = 4
CHUNK = 4096  # PIDs written at once: PIPE_BUF, a multiple of PID_SIZE
LENGTH_SIZE = 4
UNEXPECTED = 70  # a worker's exit code when something other than EPIPE ended it
STOP_GRACE = 60.0  # seconds a worker has to finish its process once told to stop


def run(pids: list[int], work: Callable[[int], object], jobs: int,
        answer: Callable[[int, object], None]) -> set[int]:
    """``work(pid)`` for every PID in ``jobs`` forked processes;
    ``answer(pid, result)`` in this process as each result comes.  Returns
    the PIDs that got no result (a worker died)."""
    pipes = _Pipes()
    workers: list[int] = []
    waiting = set(pids)
    finished = False
    try:
        pipes.todo_read, pipes.todo_write = os.pipe()
        for _ in range(jobs):
            read, write = os.pipe()
            child = os.fork()
            if child == 0:
                os.close(read)
                pipes.close_all_but(pipes.todo_read)
                _worker(pipes.todo_read, write, work)
            os.close(write)
            pipes.results[read] = bytearray()
            workers.append(child)
        results = _Results(pids, pipes, waiting, answer)
        try:
            results.collect()
        except KeyboardInterrupt:
            results.stop()
            results.collect()  # of the processes under way: their outcomes are told
            raise
        finished = True
    finally:
        pipes.close_all_but(-1)
        _reap(workers, finished)
    return waiting


class _Pipes:
    """The parent's ends of the pipes (-1: closed)."""

    def __init__(self) -> None:
        self.todo_read = self.todo_write = -1
        self.results: dict[int, bytearray] = {}  # result pipe -> bytes not yet a whole record

    def close_todo_write(self) -> None:
        os.close(self.todo_write)
        self.todo_write = -1

    def close_all_but(self, kept: int) -> None:
        for fd in (self.todo_read, self.todo_write, *self.results):
            if fd >= 0 and fd != kept:
                os.close(fd)
        self.todo_read = self.todo_read if self.todo_read == kept else -1
        self.todo_write = -1
        self.results = {}


class _Results:
    """Handing out the PIDs and taking the results."""

    def __init__(self, pids: list[int], pipes: _Pipes, waiting: set[int],
                 answer: Callable[[int, object], None]) -> None:
        self.pending = b"".join(pid.to_bytes(PID_SIZE, "little") for pid in pids)
        self.pipes = pipes
        self.waiting = waiting
        self.answer = answer
        self.open = dict(pipes.results)  # result pipes not at their end yet
        os.set_blocking(pipes.todo_write, False)

    def collect(self) -> None:
        """Until every worker is done."""
        pipes = self.pipes
        while self.open:
            writable = [pipes.todo_write] if pipes.todo_write >= 0 else []
            ready, can_write, _ = select.select(list(self.open), writable, [])
            if can_write:
                try:
                    self.pending = self.pending[os.write(pipes.todo_write,
                                                         self.pending[:CHUNK]):]
                except BlockingIOError:
                    pass
                if not self.pending:
                    pipes.close_todo_write()  # the workers read to its end, then stop
            for fd in ready:
                self._read(fd)

    def _read(self, fd: int) -> None:
        data = os.read(fd, 65536)
        if not data:
            del self.open[fd]
            return
        buffer = self.open[fd]
        buffer += data
        for pid, result in _records(buffer):
            self.waiting.discard(pid)
            self.answer(pid, result)

    def stop(self) -> None:
        """No process is started any more: the PIDs not taken yet are taken
        back (this process keeps the pipe's read end for that), and the
        workers end once they are done with the one they work on."""
        self.pending = b""
        if self.pipes.todo_write >= 0:
            # closed first: with no writer left, reading ends at the end of
            # what is there (the read end is shared with the workers: it
            # must stay blocking)
            self.pipes.close_todo_write()
        while os.read(self.pipes.todo_read, CHUNK):
            pass


def _records(buffer: bytearray):
    """The whole (pid, result) records at the start of ``buffer``, taken out of it."""
    while len(buffer) >= LENGTH_SIZE:
        size = int.from_bytes(buffer[:LENGTH_SIZE], "little")
        if len(buffer) < LENGTH_SIZE + size:
            return
        record = marshal.loads(bytes(buffer[LENGTH_SIZE:LENGTH_SIZE + size]))
        del buffer[:LENGTH_SIZE + size]
        yield record


def _worker(todo: int, results: int, work: Callable[[int], object]) -> None:
    """A worker's whole life; never returns."""
    code = UNEXPECTED
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        while True:
            data = os.read(todo, PID_SIZE)
            if len(data) < PID_SIZE:
                break
            pid = int.from_bytes(data, "little")
            _send(results, marshal.dumps((pid, work(pid))))
        code = 0
    except BrokenPipeError:
        code = 0  # the parent stopped listening: stop too
    finally:
        os._exit(code)  # not the parent's exit handlers, nor its buffered output


def _send(fd: int, payload: bytes) -> None:
    view = memoryview(len(payload).to_bytes(LENGTH_SIZE, "little") + payload)
    while view:
        view = view[os.write(fd, view):]


def _reap(workers: list[int], finished: bool) -> None:
    """Wait for every worker.  ``finished``: every worker closed its result
    pipe, which it does only by exiting.  Otherwise each is told to stop
    (its result pipe is closed) and has STOP_GRACE to finish its process;
    one still running then is killed."""
    deadline = time.monotonic() + STOP_GRACE
    for child in workers:
        while True:
            try:
                done, _ = os.waitpid(child, 0 if finished else os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            if time.monotonic() >= deadline:
                os.kill(child, signal.SIGKILL)
                finished = True  # and waited for at once
            else:
                time.sleep(0.001)
