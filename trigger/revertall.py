"""``ulp-trigger --revert-all LIB``: revert every applied patch of a library.

No patch file is needed: the runtime's LIST request (runtime-abi.md, ABI 4)
names the applied patches of one library by the address of its descriptor,
with the universe each was applied in, newest first; REVERT needs only a
patch id.  Newest first is also the order dependencies need: a patch
requiring another was applied after it, and its requirement could not be
reverted meanwhile (the runtime refuses that, DEPENDENT).  A patch of
another library requiring one of LIB's stays applied, and so does that
one: the runtime refuses, the outcome says why.

LIB is a path (the library as the process maps it, symbolic links
resolved) or a file name, shell wildcards allowed (``libssl.so*``); every
loaded prepared library it names is handled.  The agent is held once per
process for every request.
"""

from __future__ import annotations

import re

from ulp.agent_abi import Op, Request
from ulp.errors import ExitCode, UlpError, one_line
from ulp.process import Process
from ulp.trigger import batch, select
from ulp.trigger.agent import Agent
from ulp.trigger.transition import check_status, open_prepared

#: LIST answers whole lines within the message: more rounds when there are
#: more patches than fit; a bound against a runtime that never empties it
MAX_ROUNDS = 1000


def run_one(pid: int, library: str, timeout: float, retries: int) -> list[batch.Outcome]:
    """Every applied patch of ``library`` in ``pid`` reverted; one outcome per
    patch, or one for the process when there was none or it failed."""
    return batch.retrying(lambda: _revert_all(pid, library, timeout), retries,
                          lambda error: batch.Outcome(pid, "", error.exit_code,
                                                      one_line(str(error)), True))


def _revert_all(pid: int, library: str, timeout: float) -> list[batch.Outcome]:
    process = Process(pid)
    pid = process.pid  # a thread's ID names its process
    try:
        descriptors = _descriptors(process, library)
        agent = Agent(process, timeout)
        agent.attach()
        try:
            outcomes = [outcome for path, desc in descriptors
                        for outcome in _revert_library(agent, path, desc)]
        finally:
            agent.release()
    except (UlpError, OSError) as error:
        raise batch.explained(error, process) from None
    finally:
        process.close()
    if not outcomes:
        return [batch.Outcome(pid, "", ExitCode.NOT_APPLIED,
                              f"no patch of {library} is applied in process {pid}", True)]
    return outcomes


def _descriptors(process: Process, library: str) -> list[tuple[str, int]]:
    """(path, descriptor address) of each prepared library ``library`` names."""
    found, unprepared = [], []
    for path, base in process.mapped_objects().items():
        if not select.names_library(path, library):
            continue
        try:
            prepared = open_prepared(process, path, base)
        except UlpError as error:
            if error.exit_code != ExitCode.NOT_PATCHABLE:
                raise
            unprepared.append(path)
            continue
        found.append((path, base + prepared.lib_desc_vaddr))
    if not found and unprepared:
        raise UlpError(f"no patch of {library} is applied in process {process.pid}: "
                       f"{unprepared[0]} is not prepared for live patching",
                       ExitCode.NOT_APPLIED)
    if not found:
        raise UlpError(f"{library} is not loaded in process {process.pid}",
                       ExitCode.LIBRARY_NOT_LOADED)
    return found


def _revert_library(agent: Agent, path: str, desc: int) -> list[batch.Outcome]:
    pid = agent.process.pid
    outcomes: list[batch.Outcome] = []
    for _ in range(MAX_ROUNDS):
        status, message = agent.call(Request(Op.LIST, lib_desc=desc))
        check_status(status, message, agent.process)
        applied = _listed(message, agent.process)
        if not applied:
            break
        failures = 0
        for patch_id, universe, label in applied:
            named = f"patch {patch_id.hex()}" + (f" ({label})" if label else "")
            status, message = agent.call(Request(Op.REVERT, patch_id=patch_id))
            try:
                check_status(status, message, agent.process)
            except UlpError as error:
                failures += 1
                outcomes.append(batch.Outcome(pid, patch_id.hex(), error.exit_code, one_line(
                    f"cannot revert {named} of {path} in process {pid}: {message}"), True))
                continue
            # a patch of several libraries is reverted in all of them at once
            several = re.search(r" in \d+ libraries$", message)
            outcomes.append(batch.Outcome(pid, patch_id.hex(), ExitCode.OK, one_line(
                f"reverted {named} (applied in universe {universe}) in process {pid}"
                f"{several.group(0) if several else ''}"), True))
        if failures:
            break  # what is left stays applied, for the reasons given
    return outcomes


def _listed(message: str, process: Process) -> list[tuple[bytes, int, str]]:
    """(id, universe applied at, label) of each line of a LIST answer, the
    newest first (the runtime's order already; sorted to depend on less)."""
    patches = []
    for line in message.splitlines():
        fields = line.split(" ", 3)
        try:
            patch_id = bytes.fromhex(fields[0])
            if len(patch_id) != 16:
                raise ValueError("not a patch id")
            patches.append((patch_id, int(fields[1]), fields[3] if len(fields) > 3 else ""))
        except (ValueError, IndexError):
            raise UlpError(f"process {process.pid}: the runtime's list of patches is not "
                           f"understood: {line!r}", ExitCode.FAILURE) from None
    return sorted(patches, key=lambda patch: -patch[1])
