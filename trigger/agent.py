"""Driving the runtime's agent thread: the hijack.

The agent waits in a system call in a loop that holds no lock and uses no
stack.  To run a request, the trigger stops it (PTRACE_INTERRUPT), saves all
its registers, points it at ``ulp_agent_dispatch`` on the runtime's call
stack and lets it run while every application thread keeps running.  The
agent answers by bumping the mailbox serial and waits again; the trigger then
stops it and puts every register back.
"""

from __future__ import annotations

import os
import time

from ulp import agent_abi
from ulp.agent_abi import AgentState, MailboxHeader, Request
from ulp.elfinfo import dynamic_symbol_value, open_elf
from ulp.errors import ExitCode, UlpError
from ulp.process import Process
from ulp.trigger.tracee import ThreadGone, Tracee

POLL_INTERVAL = 0.0002


def find_mailbox(process: Process) -> int:
    """The address of ``ulp_mailbox`` in ``process``, or a NO_RUNTIME error."""
    objects = process.mapped_objects()
    # the runtime is usually named libulp.so: look there first
    for path in sorted(objects, key=lambda p: "ulp" not in os.path.basename(p)):
        try:
            with open_elf(path) as elf:
                value = dynamic_symbol_value(elf, agent_abi.MAILBOX_SYMBOL)
        except UlpError:
            continue
        if value is not None:
            return objects[path] + value
    raise UlpError(f"process {process.pid} does not have the ulp runtime loaded "
                   "(start it with LD_PRELOAD=libulp.so)", ExitCode.NO_RUNTIME)


class Agent:
    def __init__(self, process: Process, timeout: float) -> None:
        self.process = process
        self.timeout = timeout
        self.mailbox = find_mailbox(process)
        self.tracee: Tracee | None = None
        header = self.header()
        if header.magic != agent_abi.MAILBOX_MAGIC or header.abi_version != agent_abi.ABI_VERSION:
            raise UlpError(f"process {process.pid} has an incompatible ulp runtime "
                           f"(ABI {header.abi_version})", ExitCode.NO_RUNTIME)

    def header(self) -> MailboxHeader:
        return MailboxHeader.unpack(self.process.read(self.mailbox,
                                                      agent_abi.MAILBOX_HEADER_SIZE))

    def deadline(self) -> float:
        return time.monotonic() + self.timeout

    def attach(self) -> None:
        """Stop the agent in its idle loop; only one trigger can hold it."""
        header = self.header()
        if header.state == AgentState.STARTING or header.agent_tid <= 0:
            raise UlpError(f"the ulp agent of process {self.process.pid} is not running yet",
                           ExitCode.RETRY)
        if header.state != AgentState.IDLE:
            raise UlpError(f"the ulp agent of process {self.process.pid} is busy", ExitCode.RETRY)
        tracee = Tracee(header.agent_tid)
        try:
            tracee.stop(self.deadline())
        except ThreadGone:
            raise UlpError(f"the ulp agent of process {self.process.pid} is gone",
                           ExitCode.NO_RUNTIME) from None
        except UlpError as error:
            tracee.detach()
            if error.exit_code == ExitCode.PERMISSION and self.process.alive():
                raise UlpError(f"{error} — is another ulp-trigger working on process "
                               f"{self.process.pid}?", ExitCode.PERMISSION) from None
            raise
        self.tracee = tracee
        tracee.save_registers()

    def call(self, request: Request) -> tuple[int, str]:
        """Run one request on the agent; return the runtime's status and message."""
        assert self.tracee is not None and self.tracee.stopped
        header = self.header()
        payload = request.pack()
        self.process.write(self.mailbox + agent_abi.REQUEST_OFFSET, payload)
        self.process.write(self.mailbox + agent_abi.REQUEST_SIZE_OFFSET,
                           len(payload).to_bytes(4, "little"))
        self._start_dispatch(header)
        self._wait_answer(header.serial)
        self.tracee.interrupt()
        self.tracee.wait_stop(self.deadline())
        answer = self.header()
        raw = self.process.read(self.mailbox + agent_abi.MESSAGE_OFFSET, agent_abi.MESSAGE_MAX)
        message = raw.split(b"\0", 1)[0].decode(errors="replace")
        return answer.status, message

    def _start_dispatch(self, header: MailboxHeader) -> None:
        regs = self.tracee.get_registers()
        stack = header.call_stack_top - 8  # as if called: 16-byte aligned before the call
        self.process.write(stack, bytes(8))
        regs.rip = header.dispatch
        regs.rsp = stack
        regs.rbp = 0
        regs.orig_rax = -1 & 0xFFFFFFFFFFFFFFFF  # not in a system call: no restart
        self.tracee.set_registers(regs)
        self.tracee.resume()

    def _wait_answer(self, old_serial: int) -> None:
        deadline = self.deadline()
        while True:
            if self.header().serial != old_serial:
                return
            if not self.process.alive():
                raise self.process.gone()
            if time.monotonic() > deadline:
                raise UlpError(f"the ulp agent of process {self.process.pid} did not answer in "
                               f"{self.timeout:g}s; it finishes on its own", ExitCode.RETRY)
            time.sleep(POLL_INTERVAL)

    def release(self) -> None:
        """Put the agent back exactly as it was and let it go."""
        if self.tracee is None:
            return
        try:
            if self.tracee.stopped:
                self.tracee.restore_registers()
        except UlpError:
            pass
        self.tracee.detach()
        self.tracee = None
