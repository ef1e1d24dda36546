"""Applying and reverting a patch in a live process.

Apply is three steps, the agent held by this trigger throughout:
1. the agent prepares the patch: checks the target and the patch object,
   loads it and links versions that no universe can see yet;
2. with every thread stopped, the tracer turns the entry NOP of each patched
   function into a short jump to its tracker stub (harmless by itself: the
   tracker picks the original body until a patch is visible);
3. the agent commits: it stamps the versions and publishes G+1.
In step 1 the PREPARE request carries the patch .so's bytes (carried by the
patch file, hash-checked when it was read) after its strings; the agent
copies them into a memfd of its own and seals it.  A patch object too large
for the mailbox (or a runtime that does not announce FEATURE_INLINE_OBJECT)
takes a request more: STAGE makes the agent create an empty memfd, which the
trigger fills through /proc/PID/fd/N.  PREPARE then checks size and hash on
the sealed bytes, recomputes the patch id from the request and loads the
memfd.  No file the patch was packed from is opened, here or in the process.
If this trigger dies before step 3, the next request drops the prepared
patch: the process is never half-patched.  Revert is one agent request,
after a LIST that pins the libraries for it.
The libraries kept pinned for the COMMIT or REVERT (which runs with every
thread stopped, so it cannot take the loader's lock to let them go) are
let go by the agent itself at its first tick after it, about 1 ms after
the trigger lets it go: no request of their own (a library the program
dlcloses meanwhile is unmapped then, on the agent).

A patch of several target libraries (record version 4) is found and checked
in every library before anything changes (one missing refuses it whole),
then prepared with one PREPARE per library, part by part (the first loads
the patch object, the others share it); its entry jumps are written in one
stop, and one COMMIT, like one REVERT, covers every library with a single
G := G+1 (docs/trigger.md, "Several libraries").

Everything that can be checked without changing the process is checked
first: the target in memory (identity, build-id, layout), the functions the
patch names, the code at their entries.  docs/trigger.md has the details.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from ulp import agent_abi, layout
from ulp.agent_abi import STAGED_OBJECT_PATH, Op, Request, RequestThread, Status
from ulp.errors import ExitCode, UlpError
from ulp.metadata import PatchMetadata
from ulp.patchfile import PatchFile
from ulp.process import Process
from ulp.trigger import private
from ulp.trigger.agent import Agent
from ulp.trigger.codewrite import CodeWrite, check_code, write_code
from ulp.trigger.elfscan import TargetLibrary, for_path, mapped_version, prepared_or_error
from ulp.trigger.threadtable import leaves_stacks_to_runtime, thread_table
from ulp.trigger.tracee import Tracee

#: ``ulp-trigger --trust-stacks``: the operator vouches that the target runs
#: library code only on its threads' stacks, makecontext's and the ones it
#: notes, and the runtime need not search its memory for activations
#: waiting elsewhere (runtime/foreign.c).  Set once, before any work.
trust_stacks = False

STATUS_EXIT_CODES = {
    Status.BAD_REQUEST: ExitCode.FAILURE,
    Status.NOT_ULP_LIBRARY: ExitCode.TARGET_MISMATCH,
    Status.TARGET_MISMATCH: ExitCode.TARGET_MISMATCH,
    Status.PATCH_OPEN: ExitCode.PATCH_OBJECT,
    Status.PATCH_HASH: ExitCode.PATCH_OBJECT,
    Status.PATCH_LOAD: ExitCode.PATCH_OBJECT,
    Status.PATCH_SYMBOL: ExitCode.PATCH_OBJECT,
    Status.ALREADY_APPLIED: ExitCode.ALREADY_APPLIED,
    Status.NOT_APPLIED: ExitCode.NOT_APPLIED,
    Status.DEPENDENCY: ExitCode.DEPENDENCY,
    Status.DEPENDENT: ExitCode.DEPENDENCY,
    Status.NO_MEMORY: ExitCode.FAILURE,
    Status.TOO_MANY_LIBS: ExitCode.FAILURE,
    Status.NOT_PENDING: ExitCode.FAILURE,
    Status.STAGE: ExitCode.PATCH_OBJECT,
    Status.PATCH_ID: ExitCode.BAD_INPUT,
    Status.UNLOADED: ExitCode.LIBRARY_NOT_LOADED,
    Status.PRIVATE: ExitCode.TARGET_MISMATCH,
    Status.REFERENCE: ExitCode.PATCH_OBJECT,
    Status.PINS_RELEASED: ExitCode.RETRY,
    Status.COROUTINES: ExitCode.RETRY,
}

@dataclass
class LoadedTarget:
    """A target library as the process has it loaded."""

    library: TargetLibrary
    base: int  # load bias of the library in the process

    @property
    def lib_desc(self) -> int:
        return self.base + self.library.lib_desc_vaddr


def open_prepared(process: Process, path: str, base: int) -> TargetLibrary:
    """The prepared library mapped at ``base``, read from the mapped file itself."""
    found = _prepared_or_error(process, path, base)
    if isinstance(found, UlpError):
        raise for_path(found, path)
    return found


def _prepared_or_error(process: Process, path: str, base: int) -> TargetLibrary | UlpError:
    """open_prepared, a content error (not prepared, malformed) given back
    instead of raised (UlpError.first_path names another process's copy)."""
    try:
        source, version = mapped_version(process, path, base)
        return prepared_or_error(source, version)
    except OSError:
        return UlpError(f"{path}: cannot read", ExitCode.FILE_MISSING)
    except UlpError as error:
        # unmapped between the look at its version and the read (a library
        # the program dlcloses meanwhile): not a candidate any more
        if error.exit_code == ExitCode.FILE_MISSING:
            return error
        raise


@functools.lru_cache(maxsize=1024)
def _realpath(path: str) -> str:
    """os.path.realpath, once per path in a run: it only orders the
    candidates of find_target, and costs a system call per path component."""
    return os.path.realpath(path)


def _loaded_desc(process: Process, target: LoadedTarget) -> layout.LibDesc | None:
    try:
        return layout.LibDesc.unpack(process.read(target.lib_desc, layout.LIB_DESC_SIZE))
    except ValueError:
        return None


def _fits(loaded: layout.LibDesc | None, metadata: PatchMetadata) -> bool:
    return (loaded is not None and loaded.identity == metadata.target_identity
            and loaded.build_id == metadata.target_build_id
            and loaded.layout_version == metadata.layout_version)


def find_target(process: Process, metadata: PatchMetadata) -> LoadedTarget:
    """The patch's target library in ``process``, checked in memory.

    Two copies of the target (the same library loaded from two paths) are
    refused: patching one would leave calls into the other unpatched.
    """
    objects = process.mapped_objects(reuse=True)
    wanted = os.path.basename(metadata.target_path)
    target_path = _realpath(metadata.target_path)
    candidates = sorted(objects, key=lambda path: (
        _realpath(path) != target_path, os.path.basename(path) != wanted))
    mismatch = unprepared = None
    fitting: list[tuple[str, LoadedTarget]] = []
    for path in candidates:
        if path.startswith(STAGED_OBJECT_PATH):
            continue
        library = _prepared_or_error(process, path, objects[path])
        if isinstance(library, UlpError):
            if library.exit_code == ExitCode.NOT_PATCHABLE and os.path.basename(path) == wanted:
                unprepared = unprepared or path
            continue
        target = LoadedTarget(library, objects[path])
        if _fits(_loaded_desc(process, target), metadata):
            fitting.append((path, target))
            continue
        # another build of the target, by its name; other prepared libraries are just others
        if os.path.basename(path) == wanted:
            mismatch = mismatch or path
    if len(fitting) > 1:
        paths = ", ".join(path for path, _ in fitting)
        raise UlpError(f"the patch's target is loaded {len(fitting)} times in process "
                       f"{process.pid} ({paths}): patching one copy would leave the other "
                       "unpatched; nothing done", ExitCode.TARGET_MISMATCH)
    if fitting:
        return fitting[0][1]
    if mismatch:
        raise UlpError(f"{mismatch} in process {process.pid} is not the library the patch was "
                       "packed for (identity, build-id or layout differs)",
                       ExitCode.TARGET_MISMATCH)
    if unprepared:
        raise UlpError(f"{unprepared} is loaded in process {process.pid} but not prepared for "
                       "live patching (a copy ulp-prepare was not run on, such as the "
                       "distribution's)", ExitCode.NOT_PATCHABLE)
    raise UlpError(f"{wanted} (or any library the patch fits) is not loaded in process "
                   f"{process.pid}", ExitCode.LIBRARY_NOT_LOADED)


def check_units(target: LoadedTarget, metadata: PatchMetadata, source: str) -> None:
    """Every unit names a function of the target by index and by name.

    The target's identity matched, so a unit that does not fit comes from a
    damaged or hand-made patch file.
    """
    functions = target.library.functions
    for unit in metadata.units:
        if unit.index >= len(functions):
            raise UlpError(f"{source}: function #{unit.index} ({unit.old_name}) is not in the "
                           f"target, which has {len(functions)}", ExitCode.BAD_INPUT)
        if unit.old_name not in functions[unit.index].names:
            raise UlpError(f"{source}: function #{unit.index} of the target is "
                           f"{functions[unit.index].name}, not {unit.old_name}",
                           ExitCode.BAD_INPUT)


def check_status(status: int, message: str, process: Process) -> None:
    if status == Status.OK:
        return
    try:
        code = STATUS_EXIT_CODES[Status(status)]
    except ValueError:
        code = ExitCode.FAILURE
    raise UlpError(f"process {process.pid}: {message or f'runtime error {status}'}", code)


def _request(op: Op, metadata: PatchMetadata, target: LoadedTarget | None = None,
             staged_fd: int = -1, so_size: int = 0, part: int = 0, nparts: int = 1,
             threads: tuple[RequestThread, ...] = ()) -> Request:
    request = Request(op, patch_id=metadata.patch_id, identity=metadata.target_identity,
                      part=part, nparts=nparts, threads=threads)
    if op == Op.PREPARE:
        request.lib_desc = target.lib_desc
        request.so_sha256 = metadata.patch_so_sha256
        request.so_path = metadata.patch_so_path
        request.so_fd = staged_fd
        request.so_size = so_size
        request.requires = tuple(metadata.requires)
        request.units = tuple((unit.index, unit.new_name) for unit in metadata.units)
        sizes = private.code_sizes(target.library, metadata)
        request.privates = tuple((unit.entry_delta, unit.flags, unit.new_name,
                                  sizes.get(unit.entry_delta, 0))
                                 for unit in metadata.private_units)
        request.refs = tuple((ref.kind, ref.delta, ref.ref_name) for ref in metadata.references)
        request.label = metadata.label
    return request


def entry_detours(target: LoadedTarget, metadata: PatchMetadata) -> list[CodeWrite]:
    """For each patched function: its entry NOP becomes a short jump to its stub."""
    writes = []
    for unit in metadata.units:
        function = target.library.functions[unit.index]
        nop_address = target.base + function.entry + (len(layout.ENDBR64)
                                                       if function.has_endbr64 else 0)
        stub = target.base + function.entry - layout.PADDING_SIZE
        displacement = stub - (nop_address + 2)
        writes.append(CodeWrite(nop_address, layout.TWO_BYTE_NOP,
                                bytes([0xEB, displacement & 0xFF]),
                                f"the entry of {unit.old_name}"))
    return writes


def apply(process: Process, patch_file: PatchFile, timeout: float,
          source: str = "the patch file") -> str:
    """Apply ``patch_file``: its metadata and the patch object it carries,
    whose hash was checked when the file was read (ulp.patchfile)."""
    metadata = patch_file.metadata
    so_bytes = patch_file.patch_object
    if not so_bytes:
        raise UlpError(f"{source}: a reverse patch carries no patch object and cannot be "
                       "applied", ExitCode.BAD_INPUT)
    parts = metadata.parts()
    targets = find_targets(process, metadata, source)
    writes = [write for part, target in zip(parts, targets, strict=True)
              for write in entry_detours(target, part)]
    check_code(process, writes)
    for part, target in zip(parts, targets, strict=True):
        private.check_entries(process, target.lib_desc, part)
    agent = Agent(process, timeout)
    agent.attach()
    try:
        try:
            private_writes, avoid = _prepare_parts(agent, parts, targets, so_bytes)
        except UlpError:
            _abort(agent, metadata)  # closes a staged memfd now
            raise
        try:
            # checked again: only now does this trigger hold the agent
            status, message = write_code(process, check_code(process, writes + private_writes),
                                         {agent.tracee.tid: agent.tracee}, timeout, avoid,
                                         then=_committing(agent, metadata, Op.COMMIT))
        except UlpError:
            _abort(agent, metadata)
            raise
        check_status(status, message, process)
        return message
    finally:
        agent.release()


def find_targets(process: Process, metadata: PatchMetadata,
                 source: str) -> list[LoadedTarget]:
    """Every target library of the patch in ``process``, each checked, in
    the order of ``metadata.parts()``; one missing or not fitting refuses
    the whole patch, before anything changes."""
    parts = metadata.parts()
    targets = []
    for part in parts:
        try:
            target = find_target(process, part)
            check_units(target, part, source)
        except UlpError as error:
            if len(parts) == 1:
                raise
            raise UlpError(f"{error}; the patch's {len(parts)} target libraries are patched "
                           "together or not at all: nothing done", error.exit_code) from None
        targets.append(target)
    return targets


def _prepare_parts(agent: Agent, parts: tuple[PatchMetadata, ...], targets: list[LoadedTarget],
                   so_bytes: bytes) -> tuple[list[CodeWrite], dict[int, str]]:
    """One PREPARE per target library, the first with the patch object; the
    code each part's private functions need (its descriptors are read back
    from the mailbox before the next request overwrites them)."""
    process = agent.process
    code: list[CodeWrite] = []
    avoid: dict[int, str] = {}
    for number, (part, target) in enumerate(zip(parts, targets, strict=True)):
        prepare = _request(Op.PREPARE, part, target, -1, len(so_bytes), number, len(parts))
        if number == 0:
            _give_object(agent, prepare, so_bytes)
        # the last keeps every library pinned for the COMMIT, which runs with
        # every thread stopped and must not wait for the loader's lock
        prepare.keep_pins = number == len(parts) - 1
        status, message = agent.call(prepare)
        check_status(status, message, process)
        descs = private.descriptors(process, agent.mailbox, prepare.privates_offset(),
                                    len(part.private_units))
        part_code, part_avoid = private.writes(process, target.lib_desc, part, descs)
        code += part_code
        avoid |= part_avoid
    return code, avoid


def _give_object(agent: Agent, prepare: Request, so_bytes: bytes) -> None:
    """Make the first PREPARE carry the patch object: appended to it where
    the runtime takes that and it fits in the mailbox (one request and a
    file write fewer per process), else staged in a memfd the agent makes
    (STAGE) and this process fills."""
    if agent.features & agent_abi.FEATURE_INLINE_OBJECT and \
            len(prepare.pack()) + len(so_bytes) <= agent_abi.REQUEST_MAX:
        prepare.so_fd, prepare.inline_object = agent_abi.SO_INLINE, so_bytes
        return
    status, message = agent.call(Request(Op.STAGE))
    check_status(status, message, agent.process)
    prepare.so_fd = agent.fill_staged(so_bytes)


def _abort(agent: Agent, metadata: PatchMetadata) -> None:
    """Drop the prepared patch (or staged memfd) now rather than at the next
    request; best effort."""
    if not agent.process.known() or agent.tracee is None or not agent.tracee.stopped:
        return
    try:
        agent.call(_request(Op.ABORT, metadata))
    except UlpError:
        pass


def _committing(agent: Agent, metadata: PatchMetadata, op: Op):
    """COMMIT or REVERT, sent while every other thread is stopped: the
    runtime starts the transition from where each thread stopped."""
    def send(stopped: dict[int, Tracee]) -> tuple[int, str]:
        runtime_finds = bool(agent.features & agent_abi.FEATURE_THREAD_BOUNDS)
        threads = tuple(thread_table(agent.process, stopped, runtime_finds))
        request = _request(op, metadata, threads=threads)
        request.trust_stacks = trust_stacks
        request.fill_bounds = leaves_stacks_to_runtime(len(threads), runtime_finds)
        # the threads go as soon as the answer is there; the agent is
        # stopped in its wait afterwards (Agent.collect; from the pause
        # helper's branch, session 8)
        return agent.call(request, collect=False)
    return send


def revert(process: Process, metadata: PatchMetadata, timeout: float) -> str:
    agent = Agent(process, timeout)
    agent.attach()
    try:
        # pins every library for the REVERT, as the last PREPARE does for COMMIT
        hold = Request(Op.LIST, patch_id=metadata.patch_id, keep_pins=True)
        status, message = agent.call(hold)
        check_status(status, message, process)
        status, message = write_code(process, [], {agent.tracee.tid: agent.tracee}, timeout,
                                     then=_committing(agent, metadata, Op.REVERT))
        check_status(status, message, process)
        return message
    finally:
        agent.release()
