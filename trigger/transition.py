"""Applying and reverting a patch in a live process.

Apply is three steps, the agent held by this trigger throughout:
1. the agent prepares the patch: checks the target and the patch object,
   loads it and links versions that no universe can see yet;
2. with every thread stopped, the tracer turns the entry NOP of each patched
   function into a short jump to its tracker stub (harmless by itself: the
   tracker picks the original body until a patch is visible);
3. the agent commits: it stamps the versions and publishes G+1.
If this trigger dies before step 3, the next request drops the prepared
patch: the process is never half-patched.  Revert is one agent request.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ulp import layout
from ulp.agent_abi import Op, Request, Status
from ulp.errors import ExitCode, UlpError
from ulp.metadata import PatchMetadata
from ulp.prepared import PreparedLibrary
from ulp.process import Process
from ulp.trigger.agent import Agent
from ulp.trigger.codewrite import all_threads_stopped, write_code

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
}


@dataclass
class LoadedTarget:
    library: PreparedLibrary
    base: int  # load bias of the library in the process

    @property
    def lib_desc(self) -> int:
        return self.base + self.library.lib_desc_vaddr


def find_target(process: Process, metadata: PatchMetadata) -> LoadedTarget:
    """The patch's target library in ``process``, checked in memory."""
    objects = process.mapped_objects()
    wanted = os.path.basename(metadata.target_path)
    candidates = sorted(objects, key=lambda path: (
        os.path.realpath(path) != os.path.realpath(metadata.target_path),
        os.path.basename(path) != wanted))
    mismatch = None
    for path in candidates:
        try:
            library = PreparedLibrary.open(path)
        except UlpError:
            continue
        target = LoadedTarget(library, objects[path])
        try:
            loaded = layout.LibDesc.unpack(process.read(target.lib_desc, layout.LIB_DESC_SIZE))
        except ValueError:
            loaded = None
        if loaded and loaded.identity == metadata.target_identity \
                and loaded.layout_version == metadata.layout_version:
            return target
        mismatch = mismatch or path
    if mismatch:
        raise UlpError(f"{mismatch} in process {process.pid} is not the library the patch was "
                       "packed for (identity or layout differs)", ExitCode.TARGET_MISMATCH)
    raise UlpError(f"{wanted} (or any library the patch fits) is not loaded in process "
                   f"{process.pid}", ExitCode.LIBRARY_NOT_LOADED)


def check_status(status: int, message: str, process: Process) -> None:
    if status == Status.OK:
        return
    try:
        code = STATUS_EXIT_CODES[Status(status)]
    except ValueError:
        code = ExitCode.FAILURE
    raise UlpError(f"process {process.pid}: {message or f'runtime error {status}'}", code)


def _request(op: Op, metadata: PatchMetadata, target: LoadedTarget | None = None) -> Request:
    request = Request(op, patch_id=metadata.patch_id, identity=metadata.target_identity)
    if op == Op.PREPARE:
        request.lib_desc = target.lib_desc
        request.so_sha256 = metadata.patch_so_sha256
        request.so_path = metadata.patch_so_path
        request.requires = tuple(metadata.requires)
        request.units = tuple((unit.index, unit.new_name) for unit in metadata.units)
    return request


def _entry_detour(target: LoadedTarget, index: int) -> tuple[int, bytes]:
    """Where the entry NOP of function ``index`` is, and the jump replacing it."""
    function = target.library.functions[index]
    nop_address = target.base + function.entry + (len(layout.ENDBR64)
                                                   if function.has_endbr64 else 0)
    stub = target.base + function.entry - layout.PADDING_SIZE
    displacement = stub - (nop_address + 2)
    return nop_address, bytes([0xEB, displacement & 0xFF])


def write_entry_detours(process: Process, target: LoadedTarget, metadata: PatchMetadata) -> None:
    for unit in metadata.units:
        address, jump = _entry_detour(target, unit.index)
        write_code(process, address, layout.TWO_BYTE_NOP, jump,
                   f"the entry of {unit.old_name}")


def apply(process: Process, metadata: PatchMetadata, timeout: float) -> str:
    target = find_target(process, metadata)
    if not os.path.isfile(metadata.patch_so_path):
        raise UlpError(f"patch object {metadata.patch_so_path} is missing",
                       ExitCode.PATCH_OBJECT)
    agent = Agent(process, timeout)
    agent.attach()
    try:
        status, message = agent.call(_request(Op.PREPARE, metadata, target))
        check_status(status, message, process)
        try:
            with all_threads_stopped(process, {agent.tracee.tid: agent.tracee}, timeout):
                write_entry_detours(process, target, metadata)
        except UlpError:
            if process.alive():
                agent.call(_request(Op.ABORT, metadata))
            raise
        status, message = agent.call(_request(Op.COMMIT, metadata))
        check_status(status, message, process)
        return message
    finally:
        agent.release()


def revert(process: Process, metadata: PatchMetadata, timeout: float) -> str:
    agent = Agent(process, timeout)
    agent.attach()
    try:
        status, message = agent.call(_request(Op.REVERT, metadata))
        check_status(status, message, process)
        return message
    finally:
        agent.release()
