"""What a process with the ulp runtime runs, read without stopping it.

`ulp patches` reads everything through /proc/PID/mem (and /proc/PID/maps,
/proc/PID/task): no thread is stopped and the agent is not used, so it works
on a process a debugger holds, and while a trigger works on it.  What is
read is a snapshot of memory the process keeps changing; each value is one
aligned 8-byte word the runtime stores whole, so every number shown is one
the process really held, not necessarily all at the same instant.

- the global universe G: ``ulp_mailbox.universe_address``;
- per prepared library (a mapped object with ``.ulp.data`` whose descriptor
  in memory has the library magic): each function's version list (newest
  first, ending at the original body), hence the patched functions with
  the universes at which each version was applied and reverted;
- per thread, its record (runtime/registry.c, in the runtime's static TLS
  at %fs-relative ``tls_offset``, as every function descriptor of a
  registered library says), shown per library: a thread pending in a
  transition may still be inside an activation and runs its universe in
  every library; any other runs the global one (docs/consistency.md).  The
  thread pointer comes from get_robust_list(TID) minus the offset the
  runtime publishes in ``ulp_thread_layout`` (runtime/agent.c).  A pending
  thread with a universe older than a library's last change may still run
  old code there: that is what an operator looks for when a thread never
  leaves a library.

- the applied patches (id, label, library, universe and time of the
  commit, the patch object's path when packed): the table the agent keeps
  for readers outside the process (``ulp_mailbox.applied_table``,
  runtime/applied.c), read again while its generation says the agent was
  rewriting it.  A runtime without the table shows the changes of the
  functions only.
"""

from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass, field

from ulp import agent_abi, layout
from ulp.agent_abi import MAILBOX_HEADER_SIZE, MAILBOX_SYMBOL, AppliedPatch, MailboxHeader
from ulp.errors import ExitCode, UlpError
from ulp.process import Process
from ulp.trigger.agent import runtime_symbol
from ulp.trigger.elfscan import file_version, read_prepared

THREAD_LAYOUT_SYMBOL = "ulp_thread_layout"
#: the runtime's tracker code: a descriptor pointing there is in a transition
TRACKER_START_SYMBOL = "__start_ulp_tracker_text"
TRACKER_STOP_SYMBOL = "__stop_ulp_tracker_text"
THREAD_LAYOUT_FORMAT = "<8sIIq"
THREAD_LAYOUT_MAGIC = b"ULPTHRD\0"
THREAD_LAYOUT_VERSION = 1
SYS_GET_ROBUST_LIST = 274
MAX_VERSIONS = 4096  # a version list longer than this is read as damaged
APPLIED_READS = 100  # reads of the applied table before it is given up as always changing


@dataclass
class FunctionChanges:
    name: str
    versions: list[tuple[int, int | None]]  # (applied at, reverted at or None), newest first


@dataclass
class LibraryView:
    path: str
    identity: str
    registered: bool  # entered at least once since it was loaded: it has thread records
    desc: int = 0  # the address of its library descriptor
    functions: list[FunctionChanges] = field(default_factory=list)
    tls_offset: int = 0
    #: a transition is under way: its calls go through the tracker until no
    #: thread is pending (docs/consistency.md)
    in_transition: bool = False

    @property
    def last_change(self) -> int:
        """The newest universe at which one of its functions changed (0: never)."""
        return max((universe for function in self.functions
                    for applied, reverted in function.versions
                    for universe in (applied, reverted or 0)), default=0)


@dataclass
class ThreadRecord:
    library: str
    universe: int
    inside: bool  # it may still have an activation in the library
    old_code: bool  # inside, with a universe older than the library's last change


@dataclass
class ThreadView:
    tid: int
    name: str
    records: list[ThreadRecord] = field(default_factory=list)
    error: str = ""


@dataclass
class PatchView:
    """An applied patch, in one of its target libraries."""

    patch_id: str
    label: str
    library: str  # its path, or the descriptor's address if no mapped library has it
    universe: int  # the universe its commit published
    time_ns: int  # when (CLOCK_REALTIME)
    object_path: str  # the patch object's path when it was packed
    part: int
    nparts: int


@dataclass
class ProcessView:
    pid: int
    name: str
    global_universe: int
    libraries: list[LibraryView]
    threads: list[ThreadView]
    #: None: the runtime keeps no table of them (only the functions' changes show)
    patches: list[PatchView] | None = None


def read_process(pid: int) -> ProcessView:
    process = Process(pid)
    try:
        return _read(process)
    finally:
        process.close()


def _read(process: Process) -> ProcessView:
    mailbox = runtime_symbol(process, MAILBOX_SYMBOL)
    if mailbox is None:
        if not process.known():
            raise process.gone()
        raise UlpError(f"process {process.pid} does not have the ulp runtime loaded",
                       ExitCode.NO_RUNTIME)
    header = MailboxHeader.unpack(process.read(mailbox, MAILBOX_HEADER_SIZE))
    universe_address = header.universe_address
    global_universe = _word(process, universe_address) if universe_address else 0
    tracker = (runtime_symbol(process, TRACKER_START_SYMBOL),
               runtime_symbol(process, TRACKER_STOP_SYMBOL))
    libraries = [library for library in _libraries(process, tracker)]
    offset = _robust_head_offset(process)
    threads = [_thread(process, tid, libraries, offset, global_universe)
               for tid in process.threads()]
    patches = None
    if header.applied_table:
        paths = {library.desc: library.path for library in libraries}
        patches = [PatchView(entry.patch_id.hex(), entry.label,
                             paths.get(entry.lib_desc, f"{entry.lib_desc:#x}"), entry.universe,
                             entry.time_ns, entry.object_path, entry.part, entry.nparts)
                   for entry in applied_patches(process, header.applied_table)]
    return ProcessView(process.pid, _comm(process.pid), global_universe, libraries, threads,
                       patches)


def applied_patches(process: Process, table: int) -> list[AppliedPatch]:
    """The runtime's table of applied patches at ``table``, newest first,
    read whole between two writes of the agent (its sequence lock)."""
    size = struct.calcsize(agent_abi.APPLIED_TABLE_FORMAT)
    entry = struct.calcsize(agent_abi.APPLIED_PATCH_FORMAT)
    for _ in range(APPLIED_READS):
        data = process.read(table, size + agent_abi.APPLIED_MAX * entry)
        magic, generation, count, _more, _ = struct.unpack_from(agent_abi.APPLIED_TABLE_FORMAT,
                                                                data)
        if magic != agent_abi.APPLIED_MAGIC or count > agent_abi.APPLIED_MAX:
            raise UlpError(f"process {process.pid}: the runtime's table of applied patches is "
                           "damaged", ExitCode.FAILURE)
        if generation % 2 == 0 and _word(process, table + 8) & 0xFFFF_FFFF == generation:
            return [AppliedPatch.unpack(data, size + index * entry) for index in range(count)]
    raise UlpError(f"process {process.pid}: its table of applied patches changed at every "
                   f"read ({APPLIED_READS} reads)", ExitCode.RETRY)


def _word(process: Process, address: int) -> int:
    return int.from_bytes(process.read(address, 8), "little")


def _comm(pid: int, tid: int | None = None) -> str:
    path = f"/proc/{pid}/comm" if tid is None else f"/proc/{pid}/task/{tid}/comm"
    try:
        with open(path) as stream:
            return stream.read().rstrip("\n")
    except OSError:
        return ""


def _libraries(process: Process, tracker: tuple[int | None, int | None]):
    for path, base in process.mapped_objects().items():
        source = process.object_file(path, base)
        try:
            file_version(source)
            library = read_prepared(source)
        except (UlpError, OSError):
            continue
        address = base + library.lib_desc_vaddr
        try:
            desc = layout.LibDesc.unpack(process.read(address, layout.LIB_DESC_SIZE))
        except (ValueError, UlpError):
            continue
        view = LibraryView(path, desc.identity.hex(), registered=False, desc=address)
        table = process.read(address + desc.funcs_delta, desc.nfuncs * layout.FUNC_DESC_SIZE)
        for index, function in enumerate(library.functions[:desc.nfuncs]):
            fd_address = address + desc.funcs_delta + index * layout.FUNC_DESC_SIZE
            tls_offset, head = struct.unpack_from("<qQ", table, index * layout.FUNC_DESC_SIZE)
            if tls_offset:
                view.registered, view.tls_offset = True, tls_offset
            (current,) = struct.unpack_from("<q", table,
                                            index * layout.FUNC_DESC_SIZE + layout.FD_CURRENT)
            if None not in tracker and tracker[0] <= fd_address + current < tracker[1]:
                view.in_transition = True
            versions = _versions(process, head, fd_address + layout.FD_ORIGINAL)
            if versions:
                view.functions.append(FunctionChanges(function.name, versions))
        yield view


def _versions(process: Process, head: int, original: int) -> list[tuple[int, int | None]]:
    """(applied at, reverted at) of every version before the original body."""
    versions = []
    node = head
    while node and node != original and len(versions) < MAX_VERSIONS:
        applied, reverted, _target, node = struct.unpack(
            "<QQQQ", process.read(node, layout.V_NEXT + 8))
        versions.append((applied, None if reverted == layout.UNIVERSE_NEVER else reverted))
    return versions


def _robust_head_offset(process: Process) -> int:
    address = runtime_symbol(process, THREAD_LAYOUT_SYMBOL)
    if address is None:
        return 0
    magic, version, _, offset = struct.unpack(
        THREAD_LAYOUT_FORMAT, process.read(address, struct.calcsize(THREAD_LAYOUT_FORMAT)))
    if magic != THREAD_LAYOUT_MAGIC or version != THREAD_LAYOUT_VERSION:
        return 0
    return offset


_libc = ctypes.CDLL(None, use_errno=True)


def robust_list_head(tid: int) -> int:
    """get_robust_list(tid): the address of the thread's robust-list head."""
    head, length = ctypes.c_void_p(), ctypes.c_size_t()
    if _libc.syscall(SYS_GET_ROBUST_LIST, ctypes.c_long(tid), ctypes.byref(head),
                     ctypes.byref(length)) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))
    return head.value or 0


def _thread(process: Process, tid: int, libraries: list[LibraryView],
            offset: int, global_universe: int) -> ThreadView:
    view = ThreadView(tid, _comm(process.pid, tid))
    if not offset:
        view.error = "the runtime does not publish its thread layout"
        return view
    try:
        thread_pointer = robust_list_head(tid) - offset
        for library in libraries:
            if not library.registered:
                continue
            universe, pending = struct.unpack(
                "<QQ", process.read(thread_pointer + library.tls_offset,
                                    layout.REC_PENDING + 8))
            if not pending:  # it runs every activation in G
                view.records.append(ThreadRecord(library.path, global_universe, False, False))
                continue
            view.records.append(ThreadRecord(library.path, universe, True,
                                             universe < library.last_change))
    except (OSError, UlpError) as error:
        view.error = f"cannot read its records ({error})"
    return view
