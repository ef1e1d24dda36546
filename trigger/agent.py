"""Driving the runtime's agent thread: the hijack.

The agent waits in a system call (ppoll with a timeout) in a loop that
holds no lock.  It wakes up now and then to see whether it is the last
thread of the process (then it ends, and so does the process).  To run a
request, the trigger stops it (PTRACE_INTERRUPT), saves all its registers,
points it at ``ulp_agent_dispatch`` on the runtime's call stack and lets it
run while every application thread keeps running.  The agent answers by
bumping the mailbox serial and goes back to its idle loop on its own stack;
the trigger then stops it and puts every register back.

The agent is taken only when it is idle: state IDLE in the mailbox and,
once stopped, inside the ``ppoll`` of its idle loop (the mailbox gives its
address; the only ``ppoll`` the agent makes).  Anything else means a request
still runs, for example one started by a trigger that died: it is left to
finish (RETRY).
"""

from __future__ import annotations

import os
import stat
import time

from ulp import agent_abi
from ulp.agent_abi import AgentState, MailboxHeader, Request
from ulp.errors import ExitCode, UlpError
from ulp.process import Process, stat_fields
from ulp.trigger.elfscan import ElfScan, mapped_version, once_per_version
from ulp.trigger.priority import raise_priority, restore_priority
from ulp.trigger.tracee import ThreadGone, Tracee, thread_is_exiting

#: the wait for an answer polls the mailbox: a first look after POLL_FIRST
#: (most requests take tens of microseconds), then one every POLL_STEP for
#: the first POLL_STEADY (a PREPARE takes a few hundred: a wait doubling
#: from the start overshot it by as much, more than the trigger's own work
#: per process), then less and less.  Working on many processes, the first
#: look comes when the same kind of request was answered in the ones before
#: (``_AnswerTimes``): every look that comes too early is a wake-up, and a
#: first PREPARE took five of them.
POLL_FIRST, POLL_STEP, POLL_STEADY, POLL_MAX = 0.00002, 0.00004, 0.001, 0.002
SYS_PPOLL = 271
IDLE_ATTEMPTS = 20  # times the agent is stopped looking for it idle before giving up


class _AnswerTimes:
    """When to look first for the answer to each kind of request, from the
    answers to it so far in this run.  A look that finds the answer there
    brings the next one 10 % earlier; one that comes too early brings it to
    where the answer was seen, at most twice as late as before: a request
    the load held up for once (the agent preempted) moves it little.  An
    average of the times seen would only grow: a look that finds the answer
    says only that it came before."""

    SOONER = 0.9
    LATER = 2.0

    def __init__(self) -> None:
        self.look: dict[int, float] = {}

    def first_look(self, op: int) -> float:
        return self.look.get(op, POLL_FIRST)

    def answered(self, op: int, at_first_look: bool, seen: float) -> None:
        look = self.first_look(op)
        look = look * self.SOONER if at_first_look else min(seen, look * self.LATER)
        self.look[op] = min(max(POLL_FIRST, look), POLL_STEADY)


_answer_times = _AnswerTimes()


def _symbol_reader(symbol: str):
    def read(path: str) -> int | None:
        with ElfScan(path) as elf:
            return elf.dynamic_symbol_value(symbol)
    return read


def _waiting(tracee: Tracee, header: MailboxHeader) -> bool:
    """Is the stopped agent in its idle wait (the one ppoll it makes)?
    Its registers are kept in ``tracee.registers_when_stopped``."""
    regs = tracee.registers_when_stopped = tracee.get_registers()
    return regs.orig_rax == SYS_PPOLL and regs.rip == header.idle_address


def runtime_symbol(process: Process, symbol: str) -> int | None:
    """The address of the runtime's exported ``symbol`` in ``process``, or None."""
    objects = process.mapped_objects(reuse=True)
    # the runtime is usually named libulp.so: look there first
    for path in sorted(objects, key=lambda p: not os.path.basename(p).startswith("libulp")):
        if path.startswith(agent_abi.STAGED_OBJECT_PATH):
            continue
        try:
            source, version = mapped_version(process, path, objects[path])
            value = once_per_version(source, version, symbol, _symbol_reader(symbol))
        except (UlpError, OSError):
            continue
        if value is not None:
            return objects[path] + value
    return None


def find_mailbox(process: Process) -> int:
    """The address of ``ulp_mailbox`` in ``process``, or a NO_RUNTIME error."""
    address = runtime_symbol(process, agent_abi.MAILBOX_SYMBOL)
    if address is not None:
        return address
    if not process.known():
        raise process.gone()
    raise UlpError(f"process {process.pid} does not have the ulp runtime loaded "
                   "(start it with LD_PRELOAD=libulp.so)", ExitCode.NO_RUNTIME)


class Agent:
    def __init__(self, process: Process, timeout: float) -> None:
        self.process = process
        self.timeout = timeout
        self.mailbox = find_mailbox(process)
        self.tracee: Tracee | None = None
        self.running_request = False  # the agent was let run and has not answered
        self._return_slot_written = False  # the dispatcher's return address, since attach()
        self._saved_priority = None  # the agent's scheduling before attach() raised it
        self._header = header = self.header()  # as the last read of the mailbox left it
        self._to_collect: MailboxHeader | None = None  # answered, not stopped again (call)
        if header.magic != agent_abi.MAILBOX_MAGIC or header.abi_version != agent_abi.ABI_VERSION:
            raise UlpError(f"process {process.pid} has an incompatible ulp runtime "
                           f"(ABI {header.abi_version})", ExitCode.NO_RUNTIME)

    def header(self) -> MailboxHeader:
        self._header = MailboxHeader.unpack(self.process.read(self.mailbox,
                                                              agent_abi.MAILBOX_HEADER_SIZE))
        return self._header

    @property
    def features(self) -> int:
        """What the runtime takes beyond its ABI version (agent_abi.FEATURE_*)."""
        return self._header.features

    def deadline(self) -> float:
        return time.monotonic() + self.timeout

    def attach(self) -> None:
        """Stop the agent in its idle loop; only one trigger can hold it."""
        deadline = self.deadline()
        header = self.header()
        if header.state == AgentState.OFF:
            raise UlpError(f"process {self.process.pid} runs the ulp runtime without its agent "
                           "(ULP_AGENT=off, or a rule of /etc/ulp/agent.conf: `ulp messages "
                           f"{self.process.pid}` says which): it cannot be patched",
                           ExitCode.NO_RUNTIME)
        if header.state == AgentState.ENDED:
            raise self._agent_gone()
        if header.state == AgentState.DEMAND:
            self._start_on_demand(deadline)
            header = self._started(deadline)
        if header.state == AgentState.STARTING or header.agent_tid <= 0:
            header = self._started(deadline)
        if header.state != AgentState.IDLE:
            raise UlpError(f"the ulp agent of process {self.process.pid} is busy", ExitCode.RETRY)
        # which also checks that the agent is a thread of this process:
        # /proc/PID/task/TID names only the process's own threads
        self._wait_not_job_stopped(header.agent_tid, deadline)
        # raised before the stop: entering it needs the CPU as much as the work
        # does (ulp.trigger.priority)
        self._saved_priority = raise_priority(header.agent_tid, reset_on_fork=True)
        try:
            self._take_idle_agent(header, deadline)
        except BaseException:
            restore_priority(self._saved_priority, header.agent_tid)
            self._saved_priority = None
            raise

    def _take_idle_agent(self, header: MailboxHeader, deadline: float) -> None:
        for _ in range(IDLE_ATTEMPTS):
            tracee = self._stop_agent(header.agent_tid, deadline)
            if tracee.group_stop or tracee.pending_signal:
                tracee.detach()  # the process is being stopped: leave it to that
                raise UlpError(f"process {self.process.pid} is being stopped (job control); "
                               "nothing done", ExitCode.RETRY)
            if _waiting(tracee, header):
                self.tracee = tracee
                tracee.save_registers(tracee.registers_when_stopped)
                self.header()  # as it is now that nothing else can change it
                return
            # stopped between two pauses of its loop, or still running a request
            tracee.detach()
            time.sleep(0.001)
        raise UlpError(f"the ulp agent of process {self.process.pid} is busy", ExitCode.RETRY)

    def _start_on_demand(self, deadline: float) -> None:
        """ULP_AGENT=demand: no agent yet; a thread at a safe point starts it
        (ulp.trigger.demand)."""
        from ulp.trigger import demand

        entry = runtime_symbol(self.process, "ulp_demand_start")
        if entry is None:
            raise UlpError(f"process {self.process.pid}: the ulp runtime has no "
                           "ulp_demand_start", ExitCode.NO_RUNTIME)
        demand.start_agent(self.process, entry, deadline)

    def _started(self, deadline: float) -> MailboxHeader:
        """The header once the agent has started: a process just launched runs
        its constructors first (the runtime's starts the agent thread), so the
        trigger waits for it within its timeout instead of failing at once.  A
        process stopped meanwhile (SIGSTOP) is reported as such."""
        while True:
            header = self.header()
            if header.state != AgentState.STARTING and header.agent_tid > 0:
                return header
            if time.monotonic() > deadline:
                if self.process.state() == "T":
                    raise self._still_stopped()
                raise UlpError(f"the ulp agent of process {self.process.pid} did not start "
                               f"within {self.timeout:g}s", ExitCode.RETRY)
            if not self.process.alive():
                raise self.process.gone()
            time.sleep(0.005)

    def _wait_not_job_stopped(self, agent_tid: int, deadline: float) -> None:
        """A process stopped by SIGSTOP must stay stopped: wait for SIGCONT, or give up."""
        while True:
            fields = stat_fields(self.process.pid, agent_tid)
            if fields is None:
                raise self._agent_gone()
            if fields[0] != "T":
                return
            if time.monotonic() > deadline:
                raise self._still_stopped()
            time.sleep(0.01)

    def _still_stopped(self) -> UlpError:
        return UlpError(f"process {self.process.pid} is stopped (SIGSTOP or similar) and was "
                        f"not continued within {self.timeout:g}s; nothing done", ExitCode.RETRY)

    def _stop_agent(self, agent_tid: int, deadline: float) -> Tracee:
        tracee = Tracee(agent_tid)
        try:
            tracee.stop(deadline)
        except ThreadGone:
            raise self._agent_gone() from None
        except UlpError as error:
            tracee.let_go(time.monotonic() + 1.0)
            if thread_is_exiting(self.process.pid, agent_tid):
                raise self._agent_gone() from None  # the kernel refuses to seize it (EPERM)
            if error.exit_code == ExitCode.PERMISSION and self.process.alive():
                raise UlpError(f"{error}; is another ulp-trigger or a debugger working on "
                               f"process {self.process.pid}?", ExitCode.PERMISSION) from None
            raise
        return tracee

    def _release_exec_survivor(self) -> None:
        """An agent that called execve (a patch object's constructor can) goes
        on as the process's main thread, with the PID as its thread ID, and
        stays traced by this process: let it go."""
        pid = self.process.pid
        try:
            with open(f"/proc/{pid}/status") as stream:
                traced_by_us = any(line.split()[1:] == [str(os.getpid())]
                                   for line in stream if line.startswith("TracerPid:"))
        except OSError:
            return
        if traced_by_us:
            survivor = Tracee(pid)
            survivor.seized = True
            survivor.let_go(time.monotonic() + 1.0)

    def _agent_gone(self) -> UlpError:
        # the agent ends on its own only as the last thread, when the process
        # ends; the other threads of a killed process may take a moment to follow
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            if not self.process.known():
                return self.process.gone()
            time.sleep(0.005)
        return UlpError(f"the ulp agent of process {self.process.pid} is gone",
                        ExitCode.NO_RUNTIME)

    def call(self, request: Request, collect: bool = True) -> tuple[int, str]:
        """Run one request on the agent; return the runtime's status and message.

        ``collect=False``: return as soon as the answer is there, the agent
        still on its way back to its wait; ``collect()`` stops it there.  A
        COMMIT sent with every other thread stopped lets them go first: the
        agent's wait after such a request is long (runtime/agent.c,
        COLLECT_WAIT_SECONDS), it ticks only once stopped and let go."""
        self.collect()
        if self.tracee is None or not self.tracee.stopped:
            raise self._agent_gone()  # reaped meanwhile (an execve killed it)
        # the agent was stopped in its wait since the mailbox was last read:
        # nothing has changed it meanwhile
        header = self._header
        self._start(request, header)
        self.running_request = True
        self.tracee.resume()
        raw = self._wait_answer(header.serial, request.op)
        if collect:
            self._stop_in_wait(header)
        else:
            self._to_collect = header
        self._header = answer = MailboxHeader.unpack(raw)
        message = raw[agent_abi.MESSAGE_OFFSET:].split(b"\0", 1)[0].decode(errors="replace")
        return answer.status, message

    def _start(self, request: Request, header: MailboxHeader) -> None:
        """Write ``request`` and point the stopped agent at the dispatcher."""
        payload = request.pack()
        self.process.write(self.mailbox + agent_abi.REQUEST_OFFSET, payload)
        self.process.write(self.mailbox + agent_abi.REQUEST_SIZE_OFFSET,
                           len(payload).to_bytes(4, "little"))
        regs = self.tracee.registers_when_stopped or self.tracee.get_registers()
        stack = header.call_stack_top - 8  # as if called: 16-byte aligned before the call
        if not self._return_slot_written:
            # a return address of 0 ends a backtrace; the dispatcher never
            # returns, so nothing writes there again while this trigger holds it
            self.process.write(stack, bytes(8))
            self._return_slot_written = True
        regs.rip = header.dispatch
        regs.rsp = stack
        regs.rbp = 0
        regs.orig_rax = -1 & 0xFFFFFFFFFFFFFFFF  # not in a system call: no restart
        self.tracee.set_registers(regs)

    def fill_staged(self, data: bytes) -> int:
        """After a STAGE request: fill the agent's empty memfd with ``data``
        through /proc/PID/fd/N; return N.  The agent seals and hashes it in
        PREPARE; until then nothing in the process uses it."""
        fd = self._header.staged_fd  # as STAGE answered (the agent is held since)
        path = f"/proc/{self.process.pid}/fd/{fd}"
        try:
            # O_NONBLOCK and the checks below: whatever N turned out to be,
            # only the agent's fresh, unlinked memfd is written
            target = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as error:
            raise UlpError(f"process {self.process.pid}: cannot open the staged patch object "
                           f"({error.strerror})", ExitCode.PERMISSION) from None
        try:
            info = os.fstat(target)
            name = os.readlink(path)
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 0 or info.st_size != 0 \
                    or not name.startswith(agent_abi.STAGED_OBJECT_PATH):
                raise UlpError(f"process {self.process.pid}: descriptor {fd} is not the agent's "
                               "staging memfd", ExitCode.FAILURE)
            view = memoryview(data)
            while view:
                view = view[os.write(target, view):]
        except OSError as error:
            raise UlpError(f"process {self.process.pid}: cannot write the staged patch object "
                           f"({error.strerror})", ExitCode.FAILURE) from None
        finally:
            os.close(target)
        return fd

    def collect(self) -> None:
        """After ``call(..., collect=False)``: stop the agent in its wait."""
        header, self._to_collect = self._to_collect, None
        if header is not None and self.tracee is not None:
            self._stop_in_wait(header)

    def _stop_in_wait(self, header: MailboxHeader) -> None:
        """Stop the agent once it waits again after answering.  Between two
        waits it runs its tick, which may hold ld.so's lock or be halfway
        through the library table: a request started there, and the
        registers restored afterwards, would abandon the tick where it stood
        (a deadlock or a crash later).  The tick is short; let it finish."""
        deadline = self.deadline()
        while True:
            self.tracee.interrupt()
            self.tracee.wait_stop(deadline)
            if _waiting(self.tracee, header):
                return
            if time.monotonic() > deadline:
                raise UlpError(f"the ulp agent of process {self.process.pid} did not come back "
                               f"to its wait in {self.timeout:g}s", ExitCode.RETRY)
            self.tracee.resume()
            time.sleep(POLL_FIRST)

    def _answer(self) -> tuple[int, bytes]:
        """The mailbox's serial, and its header and message as they are.

        One read, in address order: the serial (in the header) is read
        before the message after it, and the agent writes its message and
        status before it moves the serial, so a moved serial comes with the
        whole answer (x86 keeps stores in order, and loads)."""
        raw = self.process.read(self.mailbox, agent_abi.MESSAGE_OFFSET + agent_abi.MESSAGE_MAX)
        serial = int.from_bytes(raw[agent_abi.SERIAL_OFFSET:agent_abi.SERIAL_OFFSET + 4],
                                "little")
        return serial, raw

    def _wait_answer(self, old_serial: int, op: int) -> bytes:
        """The mailbox's header and message once the agent has answered."""
        start = time.monotonic()
        deadline = start + self.timeout
        interval = _answer_times.first_look(op)
        looks = 0
        while True:
            time.sleep(interval)
            serial, raw = self._answer()
            looks += 1
            if serial != old_serial:
                self.running_request = False
                _answer_times.answered(op, looks == 1, time.monotonic() - start)
                return raw
            now = time.monotonic()
            if now - start < POLL_STEADY:
                interval = POLL_STEP
                continue
            interval = min(interval * 2, POLL_MAX)
            try:
                # an agent killed meanwhile (by an execve of another thread)
                # must be reaped: the kernel waits for it to finish the exec.
                # A process that exits or calls execve ends its agent that
                # way too; looking at the process itself is left to long waits
                self.tracee.poll_stop()
            except ThreadGone:
                raise self._agent_gone() from None
            if interval >= POLL_MAX and not self.process.known():
                raise self.process.gone()
            if now > deadline:
                raise UlpError(f"the ulp agent of process {self.process.pid} did not answer in "
                               f"{self.timeout:g}s; it finishes on its own", ExitCode.RETRY)

    def release(self) -> None:
        """Put the agent back exactly as it was and let it go; never raises.

        An agent still running a request is let go as it is: it finishes the
        request and idles again on its own.
        """
        try:
            self.collect()
        except UlpError:
            pass  # not back in its wait in time: let go below as it is
        tracee, self.tracee = self.tracee, None
        if tracee is None:
            return
        restore_priority(self._saved_priority, tracee.tid)
        self._saved_priority = None
        if self.process.image_changed():
            tracee.let_go(time.monotonic() + 0.2)
            self._release_exec_survivor()
            return
        if not tracee.stopped:
            tracee.let_go(self.deadline())
            return
        if not self.running_request:
            try:
                tracee.restore_registers()
            except UlpError:
                pass
        tracee.detach()
