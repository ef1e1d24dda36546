"""Starting the agent of a process that runs the runtime with
ULP_AGENT=demand (runtime/demand.c explains the runtime's side).

Starting a thread (pthread_create: malloc, the cache of thread stacks, the
loader's TLS lock) is safe only on a thread inside none of them.  Such a
thread, here: one stopped inside a blocking system call (read, poll, a
sleep, a wait...) made by the C library's own wrapper (the allocator, the
stack cache and the TLS setup make none of these), with no signal frame on
its stack (it is not in a handler that may have interrupted malloc).  A
thread blocked in a library constructor, inside dlopen, holds the loader's
lock but not its TLS lock: the agent starts, and its first dlopen waits for
the constructor.  The thread is pointed at the runtime's
ulp_demand_start, which starts the agent and returns into the system call
by itself, as the kernel restarts one after a signal: whatever happens to
this process afterwards, the thread goes on as if it had only been
interrupted.
"""

from __future__ import annotations

import functools
import os
import struct
import time

from ulp.errors import ExitCode, UlpError
from ulp.process import Mapping, Process
from ulp.trigger.tracee import ThreadGone, Tracee

#: system calls that block waiting for the outside world, made with no lock
#: of the C library held (by its plain wrappers)
BLOCKING_CALLS = {
    0: "read", 7: "poll", 17: "pread64", 19: "readv", 23: "select", 34: "pause",
    35: "nanosleep", 43: "accept", 45: "recvfrom", 47: "recvmsg", 61: "wait4",
    128: "rt_sigtimedwait", 230: "clock_nanosleep", 232: "epoll_wait", 247: "waitid",
    270: "pselect6", 271: "ppoll", 281: "epoll_pwait", 288: "accept4", 299: "recvmmsg",
    441: "epoll_pwait2",
}
#: -ERESTARTSYS, -ERESTARTNOINTR, -ERESTARTNOHAND: the call is made again
RESTART = (-512, -513, -514)
RESTART_BLOCK = -516  # made again through restart_syscall
SYS_RESTART_SYSCALL = 219
SYSCALL = b"\x0f\x05"
#: glibc's __restore_rt (mov $15, %rax; syscall): a signal frame's return address
RESTORE_RT = b"\x48\xc7\xc0\x0f\x00\x00\x00\x0f\x05"
RED_ZONE = 128
RESUME_SIZE = 144  # struct demand_resume (runtime/demand.c)
ATTEMPT_PAUSE = 0.01
STOP_WAIT = 1.0  # for one thread to stop, or to be let go


def start_agent(process: Process, entry: int, deadline: float) -> None:
    """Make a thread of ``process`` at a safe point start the agent; raise
    RETRY if none gets there before ``deadline``."""
    if _under_seccomp(process):
        raise UlpError(f"process {process.pid} runs the ulp runtime with ULP_AGENT=demand "
                       "under a seccomp filter, which may forbid starting a thread (or kill "
                       "the process for it): its agent is not started", ExitCode.NO_RUNTIME)
    while True:
        code = _code_ranges(process)
        for tid in process.threads():
            if _blocked_in_a_waiting_call(process.pid, tid) and \
                    _start_on(process, tid, code, entry):
                return
        if time.monotonic() > deadline:
            raise UlpError(f"process {process.pid} runs the ulp runtime with ULP_AGENT=demand, "
                           "and none of its threads waited in a blocking system call (read, "
                           "poll, a sleep...) where the agent could be started; nothing done",
                           ExitCode.RETRY)
        time.sleep(ATTEMPT_PAUSE)


def _blocked_in_a_waiting_call(pid: int, tid: int) -> bool:
    """Does /proc say the thread is blocked in one of BLOCKING_CALLS?  Read
    without stopping it: a busy thread is never stopped for nothing."""
    try:
        with open(f"/proc/{pid}/task/{tid}/syscall") as stream:
            fields = stream.read().split()
    except OSError:
        return False
    try:
        return bool(fields) and int(fields[0]) in BLOCKING_CALLS
    except ValueError:
        return False  # "running"


def _under_seccomp(process: Process) -> bool:
    try:
        with open(f"/proc/{process.pid}/status") as stream:
            for line in stream:
                if line.startswith("Seccomp:"):
                    return line.split()[1] != "0"
    except OSError:
        raise process.gone() from None
    return False


class _Code:
    """The process's mappings (read once per attempt), where the C library's
    code lies, and its signal return (a signal frame's return address)."""

    def __init__(self, mappings: list[Mapping]) -> None:
        self.mappings = mappings
        self.libc: list[tuple[int, int]] = []
        self.restore_rt: set[int] = set()


def _code_ranges(process: Process) -> _Code:
    code = _Code(process.mappings())
    for mapping in code.mappings:
        name = os.path.basename(mapping.path)
        if "x" in mapping.perms and (name.startswith("libc.so") or name.startswith("libc-")):
            code.libc.append((mapping.start, mapping.end))
            source = process.object_file(mapping.path, mapping.start)
            for offset in _restore_rt_offsets(source):
                if mapping.offset <= offset < mapping.offset + mapping.end - mapping.start:
                    code.restore_rt.add(mapping.start + offset - mapping.offset)
    return code


@functools.lru_cache(maxsize=8)
def _restore_rt_offsets(path: str) -> tuple[int, ...]:
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except OSError:
        return ()
    offsets, at = [], data.find(RESTORE_RT)
    while at >= 0:
        offsets.append(at)
        at = data.find(RESTORE_RT, at + 1)
    return tuple(offsets)


def _inside(ranges: list[tuple[int, int]], address: int) -> bool:
    return any(low <= address < high for low, high in ranges)


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _start_on(process: Process, tid: int, code: _Code, entry: int) -> bool:
    """Try thread ``tid``: True if it now runs the agent's start."""
    tracee = Tracee(tid)
    try:
        # a wait of its own: the whole deadline may be over by now, and a
        # thread seized but not let go would stay stopped
        tracee.stop(time.monotonic() + STOP_WAIT)
    except ThreadGone:
        return False
    except UlpError:
        tracee.let_go(time.monotonic() + STOP_WAIT)
        raise
    try:
        if tracee.group_stop or tracee.pending_signal:
            return False
        regs = tracee.get_registers()
        if not _at_safe_point(process, regs, code):
            return False
        block = (regs.rsp - RED_ZONE - 64 - RESUME_SIZE) & ~63
        process.write(block, _resume_state(regs))
        regs.rip = entry
        regs.rsp = block
        regs.orig_rax = (1 << 64) - 1  # not in a system call: the kernel restarts nothing
        tracee.set_registers(regs)
        return True
    except ThreadGone:
        return False
    finally:
        tracee.detach()


def _at_safe_point(process: Process, regs, code: _Code) -> bool:
    if _signed(regs.orig_rax) not in BLOCKING_CALLS or not _inside(code.libc, regs.rip):
        return False
    if process.read(regs.rip - 2, 2) != SYSCALL:
        return False
    return not _stack_holds(process, regs.rsp, code)


def _stack_holds(process: Process, rsp: int, code: _Code) -> bool:
    """Does the stack from ``rsp`` up to the end of its mapping hold a
    signal frame's return address (maybe a stale one: then this thread is
    passed over, no harm)?"""
    end = next((m.end for m in code.mappings if m.start <= rsp < m.end), None)
    if end is None:
        return True
    data = process.read(rsp & ~7, end - (rsp & ~7))
    return any(word in code.restore_rt for (word,) in struct.iter_unpack("<Q", data))


def _resume_state(regs) -> bytes:
    """struct demand_resume (runtime/demand.c): the registers the thread
    resumes with, its system call made again when the kernel would have."""
    rax, rip = regs.rax, regs.rip
    if _signed(regs.rax) in RESTART:
        rax, rip = regs.orig_rax, regs.rip - 2
    elif _signed(regs.rax) == RESTART_BLOCK:
        rax, rip = SYS_RESTART_SYSCALL, regs.rip - 2
    return struct.pack("<18Q", regs.r15, regs.r14, regs.r13, regs.r12, regs.rbp, regs.rbx,
                       regs.r11, regs.r10, regs.r9, regs.r8, rax, regs.rcx, regs.rdx, regs.rsi,
                       regs.rdi, rip, regs.eflags, regs.rsp)
