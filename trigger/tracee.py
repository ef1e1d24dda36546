"""One thread of another process under ptrace (python-ptrace bindings).

Threads are seized, never attached with SIGSTOP: a parent waiting with
WUNTRACED must not see its child stop.  The tracer never sets
PTRACE_O_EXITKILL, so if ulp-trigger dies its tracees just run on.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import time

from ptrace.binding import func as ptrace_func
from ptrace.error import PtraceError

from ulp.errors import ExitCode, UlpError

PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_EVENT_STOP = 128
NT_X86_XSTATE = 0x202
WALL = 0x40000000
XSTATE_BUFFER = 16384


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class ThreadGone(UlpError):
    exit_code = ExitCode.PROCESS_EXITED


def block_sigchld() -> None:
    """Stops of our tracees are then waited for with sigtimedwait, not polling."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})


class Tracee:
    def __init__(self, tid: int) -> None:
        self.tid = tid
        self.seized = False
        self.stopped = False
        self.pending_signal = 0  # a signal that arrived while we held it stopped
        self._regs = None
        self._xstate: bytes | None = None

    # -- attaching -------------------------------------------------------------
    def seize(self) -> None:
        try:
            ptrace_func.ptrace(PTRACE_SEIZE, self.tid, 0, 0)
        except PtraceError as error:
            raise self._error("attach to", error) from None
        self.seized = True

    def interrupt(self) -> None:
        try:
            ptrace_func.ptrace(PTRACE_INTERRUPT, self.tid, 0, 0)
        except PtraceError as error:
            raise self._error("interrupt", error) from None

    def wait_stop(self, deadline: float) -> None:
        """Wait until the thread is in a ptrace stop."""
        while True:
            try:
                pid, status = os.waitpid(self.tid, os.WNOHANG | WALL)
            except ChildProcessError:
                raise ThreadGone(f"thread {self.tid} exited") from None
            if pid == self.tid:
                if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                    self.seized = False
                    raise ThreadGone(f"thread {self.tid} exited")
                if os.WIFSTOPPED(status):
                    event = status >> 16
                    stop_signal = os.WSTOPSIG(status)
                    if event != PTRACE_EVENT_STOP and stop_signal != signal.SIGTRAP:
                        # a real signal: hand it back to the thread when we let it go
                        self.pending_signal = stop_signal
                    self.stopped = True
                    return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise UlpError(f"timed out waiting for thread {self.tid} to stop", ExitCode.RETRY)
            signal.sigtimedwait({signal.SIGCHLD}, min(remaining, 0.05))

    def stop(self, deadline: float) -> None:
        self.seize()
        self.interrupt()
        self.wait_stop(deadline)

    # -- registers -------------------------------------------------------------
    def save_registers(self) -> None:
        """Keep every register, FP/SSE/AVX included, to put back on release."""
        self._regs = self.get_registers()
        self._xstate = self._get_xstate()

    def restore_registers(self) -> None:
        if self._regs is not None:
            self.set_registers(self._regs)
        if self._xstate is not None:
            self._set_xstate(self._xstate)

    def get_registers(self):
        try:
            return ptrace_func.ptrace_getregs(self.tid)
        except PtraceError as error:
            raise self._error("read the registers of", error) from None

    def set_registers(self, regs) -> None:
        try:
            ptrace_func.ptrace_setregs(self.tid, regs)
        except PtraceError as error:
            raise self._error("set the registers of", error) from None

    def _get_xstate(self) -> bytes:
        buffer = ctypes.create_string_buffer(XSTATE_BUFFER)
        iovec = _Iovec(ctypes.cast(buffer, ctypes.c_void_p), XSTATE_BUFFER)
        try:
            ptrace_func.ptrace(PTRACE_GETREGSET, self.tid, NT_X86_XSTATE, ctypes.addressof(iovec))
        except PtraceError as error:
            raise self._error("read the FP state of", error) from None
        return buffer.raw[: iovec.len]

    def _set_xstate(self, state: bytes) -> None:
        buffer = ctypes.create_string_buffer(state, len(state))
        iovec = _Iovec(ctypes.cast(buffer, ctypes.c_void_p), len(state))
        try:
            ptrace_func.ptrace(PTRACE_SETREGSET, self.tid, NT_X86_XSTATE, ctypes.addressof(iovec))
        except PtraceError as error:
            raise self._error("restore the FP state of", error) from None

    # -- running ---------------------------------------------------------------
    def resume(self) -> None:
        try:
            ptrace_func.ptrace_cont(self.tid, 0)
        except PtraceError as error:
            raise self._error("resume", error) from None
        self.stopped = False

    def detach(self) -> None:
        """Let the thread go; never raises (it may have exited meanwhile)."""
        if not self.seized:
            return
        try:
            ptrace_func.ptrace_detach(self.tid, self.pending_signal)
        except PtraceError:
            pass
        self.seized = False
        self.stopped = False

    def _error(self, action: str, error: PtraceError) -> UlpError:
        if error.errno == errno.ESRCH:
            self.seized = False
            return ThreadGone(f"thread {self.tid} exited")
        if error.errno in (errno.EPERM, errno.EACCES):
            return UlpError(f"cannot {action} thread {self.tid}: ptrace not permitted "
                            "(another tracer, or not allowed by the system)", ExitCode.PERMISSION)
        return UlpError(f"cannot {action} thread {self.tid}: {error}", ExitCode.FAILURE)
