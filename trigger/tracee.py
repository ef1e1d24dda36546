"""One thread of another process under ptrace (python-ptrace bindings).

Threads are seized, never attached with SIGSTOP: a parent waiting with
WUNTRACED must not see its child stop.  The tracer never sets
PTRACE_O_EXITKILL, so if ulp-trigger dies its tracees just run on.

The ptrace calls go straight to libc through ctypes rather than through
python-ptrace's binding: importing that takes about 19 ms (it looks libc up
with ctypes.util and builds its tables for every architecture), a third of
the whole command's budget (docs/trigger.md, "Speed").

A seized thread is stopped with PTRACE_INTERRUPT.  A thread blocked in a
system call leaves it with an ERESTART* code; as long as its registers are
not changed, the kernel restarts the call when the thread is let go, so the
program never sees EINTR (epoll_wait and a few other calls excepted, see
docs/trigger.md).
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import time

from ulp.errors import ExitCode, UlpError
from ulp.process import DEAD_STATES, stat_fields

PTRACE_CONT = 7
PTRACE_DETACH = 17
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_EVENT_STOP = 128
NT_X86_XSTATE = 0x202
WALL = 0x40000000
XSTATE_BUFFER = 16384
PF_EXITING = 0x4  # /proc/PID/stat flags: the thread is in do_exit
JOB_CONTROL_STOPS = {signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU}


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class UserRegs(ctypes.Structure):
    """struct user_regs_struct of x86-64 (sys/user.h)."""

    _fields_ = [(name, ctypes.c_ulong) for name in (
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
        "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
        "gs_base", "ds", "es", "fs", "gs")]


class PtraceError(OSError):
    pass


_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]


def ptrace(request: int, tid: int, address: int = 0, data: int = 0) -> int:
    """ptrace(2); PtraceError (an OSError) with its errno on failure."""
    result = _libc.ptrace(request, tid, address, data)
    if result == -1:
        code = ctypes.get_errno()
        if code:
            raise PtraceError(code, os.strerror(code))
    return result


class ThreadGone(UlpError):
    exit_code = ExitCode.PROCESS_EXITED


def block_sigchld() -> None:
    """Stops of our tracees are then waited for with sigtimedwait, not polling."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})


def wait_for_sigchld(seconds: float) -> None:
    """Sleep until a child (tracee) changes state, at most ``seconds``.

    Another thread of this process may take the SIGCHLD (in-process use from
    a program with threads), so callers always poll again after this.
    """
    if seconds > 0:
        signal.sigtimedwait({signal.SIGCHLD}, seconds)


def thread_is_exiting(pid: int, tid: int) -> bool:
    """True if the thread is gone or in do_exit: it never runs user code again."""
    fields = stat_fields(pid, tid)
    if fields is None or fields[0] in DEAD_STATES:
        return True
    try:
        return bool(int(fields[6]) & PF_EXITING)
    except (IndexError, ValueError):
        return False


_orphans: list[Tracee] = []


def release_orphans() -> None:
    """Detach tracees that could not be stopped before; keep those still running."""
    waiting = list(_orphans)
    _orphans.clear()
    for tracee in waiting:
        try:
            if tracee.poll_stop():
                tracee.detach()
            else:
                _orphans.append(tracee)
        except UlpError:
            pass


class Tracee:
    def __init__(self, tid: int) -> None:
        self.tid = tid
        self.seized = False
        self.stopped = False
        self.pending_signal = 0  # a signal that arrived while we held it stopped
        self.group_stop = False  # stopped by job control (SIGSTOP...), not by us
        self._regs = None
        self._xstate: bytes | None = None
        #: its registers, read as soon as it stopped (codewrite): valid until it runs
        self.registers_when_stopped = None
        #: time.monotonic() just before it was interrupted (codewrite's pause)
        self.interrupted_at: float | None = None

    # -- attaching -------------------------------------------------------------
    def seize(self) -> None:
        try:
            ptrace(PTRACE_SEIZE, self.tid)
        except PtraceError as error:
            raise self._error("attach to", error) from None
        self.seized = True

    def interrupt(self) -> None:
        try:
            ptrace(PTRACE_INTERRUPT, self.tid)
        except PtraceError as error:
            raise self._error("interrupt", error) from None

    def poll_stop(self) -> bool:
        """True once the thread is in a ptrace stop; never blocks."""
        if self.stopped:
            return True
        try:
            pid, status = os.waitpid(self.tid, os.WNOHANG | WALL)
        except ChildProcessError:
            self.seized = False
            raise ThreadGone(f"thread {self.tid} exited") from None
        if pid != self.tid:
            return False
        if os.WIFEXITED(status) or os.WIFSIGNALED(status):
            self.seized = False
            raise ThreadGone(f"thread {self.tid} exited")
        if os.WIFSTOPPED(status):
            self._note_stop(status)
            return True
        return False

    def _note_stop(self, status: int) -> None:
        event = status >> 16
        stop_signal = os.WSTOPSIG(status)
        if event == PTRACE_EVENT_STOP:
            # PTRACE_INTERRUPT reports SIGTRAP; a job-control stop its signal
            self.group_stop = stop_signal in JOB_CONTROL_STOPS
        elif stop_signal != signal.SIGTRAP:
            # a real signal: hand it back to the thread when we let it go
            self.pending_signal = stop_signal
        self.stopped = True

    def wait_stop(self, deadline: float) -> None:
        """Wait until the thread is in a ptrace stop."""
        while not self.poll_stop():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UlpError(f"timed out waiting for thread {self.tid} to stop", ExitCode.RETRY)
            wait_for_sigchld(min(remaining, 0.01))

    def stop(self, deadline: float) -> None:
        self.seize()
        self.interrupt()
        self.wait_stop(deadline)

    # -- registers -------------------------------------------------------------
    def save_registers(self, regs: UserRegs | None = None) -> None:
        """Keep every register, FP/SSE/AVX included, to put back on release
        (``regs``: the general registers, if just read)."""
        self._regs = UserRegs.from_buffer_copy(regs) if regs is not None else self.get_registers()
        self._xstate = self._get_xstate()

    def restore_registers(self) -> None:
        if self._regs is not None:
            self.set_registers(self._regs)
        if self._xstate is not None:
            self._set_xstate(self._xstate)

    def get_registers(self):
        try:
            regs = UserRegs()
            ptrace(PTRACE_GETREGS, self.tid, 0, ctypes.addressof(regs))
            return regs
        except PtraceError as error:
            raise self._error("read the registers of", error) from None

    def set_registers(self, regs) -> None:
        try:
            ptrace(PTRACE_SETREGS, self.tid, 0, ctypes.addressof(regs))
        except PtraceError as error:
            raise self._error("set the registers of", error) from None

    def get_xstate(self) -> bytes:
        """The FP/SSE/AVX state as PTRACE_GETREGSET NT_X86_XSTATE gives it."""
        return self._get_xstate()

    def _get_xstate(self) -> bytes:
        buffer = ctypes.create_string_buffer(XSTATE_BUFFER)
        iovec = _Iovec(ctypes.cast(buffer, ctypes.c_void_p), XSTATE_BUFFER)
        try:
            ptrace(PTRACE_GETREGSET, self.tid, NT_X86_XSTATE, ctypes.addressof(iovec))
        except PtraceError as error:
            raise self._error("read the FP state of", error) from None
        return buffer.raw[: iovec.len]

    def _set_xstate(self, state: bytes) -> None:
        buffer = ctypes.create_string_buffer(state, len(state))
        iovec = _Iovec(ctypes.cast(buffer, ctypes.c_void_p), len(state))
        try:
            ptrace(PTRACE_SETREGSET, self.tid, NT_X86_XSTATE, ctypes.addressof(iovec))
        except PtraceError as error:
            raise self._error("restore the FP state of", error) from None

    # -- running ---------------------------------------------------------------
    def resume(self) -> None:
        try:
            ptrace(PTRACE_CONT, self.tid)
        except PtraceError as error:
            raise self._error("resume", error) from None
        self.stopped = False
        self.registers_when_stopped = None

    def detach(self) -> None:
        """Let a stopped thread go; never raises (it may have exited meanwhile)."""
        if not self.seized:
            return
        try:
            ptrace(PTRACE_DETACH, self.tid, 0, self.pending_signal)
        except PtraceError:
            self._reap()
        self.seized = False
        self.stopped = False
        self.registers_when_stopped = None

    def _reap(self) -> None:
        """Collect a tracee that died under us.

        A traced thread that exits stays a zombie until its tracer waits for
        it, and keeps its whole process unreapable meanwhile: that matters
        when the trigger runs inside a long-lived program (tests, a daemon).
        """
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                pid, status = os.waitpid(self.tid, os.WNOHANG | WALL)
            except ChildProcessError:
                return
            if pid == self.tid and os.WIFSTOPPED(status):
                try:  # it had not died after all: it stopped, so it can go now
                    ptrace(PTRACE_DETACH, self.tid, 0, self.pending_signal)
                except PtraceError:
                    continue
                return
            if pid == self.tid:
                return
            wait_for_sigchld(0.005)

    def let_go(self, deadline: float) -> None:
        """Detach whether it runs or not: PTRACE_DETACH needs a stopped tracee.

        Registers are left as they are; never raises.
        """
        if not self.seized:
            return
        if not self.stopped:
            try:
                self.interrupt()
                self.wait_stop(deadline)
            except ThreadGone:
                return
            except UlpError:
                # it would not stop in time (an uninterruptible wait): the
                # kernel detaches it when this process exits; a long-lived
                # caller lets it go later with release_orphans()
                if not self.stopped:
                    _orphans.append(self)
                    return
        self.detach()

    def _error(self, action: str, error: PtraceError) -> UlpError:
        if error.errno == errno.ESRCH:
            if self.seized and action != "attach to":
                # dead: a traced thread stays a zombie until its tracer waits
                # for it, and an execve of another thread waits for that
                self._reap()
            self.seized = False
            self.stopped = False
            return ThreadGone(f"thread {self.tid} exited")
        if error.errno in (errno.EPERM, errno.EACCES):
            return UlpError(f"cannot {action} thread {self.tid}: ptrace not permitted "
                            "(another tracer, or not allowed by the system)", ExitCode.PERMISSION)
        return UlpError(f"cannot {action} thread {self.tid}: {error}", ExitCode.FAILURE)
