"""Applying or reverting patches in many processes at once.

Each process is handled whole by one worker thread: ptrace ties a tracee to
the thread that attached it, and a process's patches go in order.  Threads
suffice: a worker spends its time waiting for the target (its agent loading
the patch, its threads stopping), not computing.  Every outcome is kept, and
the command's exit code is the worst of them (``SEVERITY``,
docs/exit-codes.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from ulp.errors import ExitCode, UlpError, one_line
from ulp.metadata import PatchMetadata
from ulp.patchfile import PatchFile
from ulp.process import DYING_GRACE, Mapping, Process
from ulp.trigger import codewrite, transition

#: exit codes from the least to the most severe: a run exits with the most
#: severe of its outcomes (docs/exit-codes.md, "Several processes")
SEVERITY = (
    ExitCode.OK, ExitCode.ALREADY_APPLIED, ExitCode.NOT_APPLIED, ExitCode.PROCESS_EXITED,
    ExitCode.NO_PROCESS, ExitCode.LIBRARY_NOT_LOADED, ExitCode.NO_RUNTIME, ExitCode.RETRY,
    ExitCode.DEPENDENCY, ExitCode.TARGET_MISMATCH, ExitCode.PATCH_OBJECT, ExitCode.BAD_INPUT,
    ExitCode.PERMISSION, ExitCode.UNSAFE_FILE, ExitCode.NOT_PATCHABLE, ExitCode.FILE_MISSING,
    ExitCode.USAGE, ExitCode.FAILURE,
)
#: a process that is not (or no longer) one the patch is for
SKIPPED = {ExitCode.PROCESS_EXITED, ExitCode.NO_PROCESS, ExitCode.LIBRARY_NOT_LOADED,
           ExitCode.NO_RUNTIME}
NOTHING_TO_DO = {ExitCode.ALREADY_APPLIED: "already applied", ExitCode.NOT_APPLIED: "not applied"}
RETRY_PAUSE = 0.1


def worst(codes) -> ExitCode:
    return max((ExitCode(code) for code in codes), key=SEVERITY.index, default=ExitCode.OK)


@dataclass(frozen=True)
class Outcome:
    """What happened to one patch in one process."""

    pid: int
    patch: str  # patch id, hex
    code: ExitCode
    message: str  # what was done, or why not
    reverting: bool = False
    pause: codewrite.Pause | None = None

    @property
    def kind(self) -> str:
        """applied, reverted, already applied, not applied, skipped or failed."""
        if self.code == ExitCode.OK:
            return "reverted" if self.reverting else "applied"
        if self.code in NOTHING_TO_DO:
            return NOTHING_TO_DO[self.code]
        return "skipped" if self.code in SKIPPED else "failed"


@dataclass(frozen=True)
class Step:
    """One patch file to apply or revert."""

    patch_file: PatchFile  # read and checked once, before any process is touched
    source: str  # the patch file, for messages
    reverting: bool

    @property
    def metadata(self) -> PatchMetadata:
        return self.patch_file.metadata


def run_one(pid: int, steps: list[Step], timeout: float, retries: int,
            maps: dict[str, Mapping] | None = None) -> list[Outcome]:
    """Every step in ``pid``, in order; a step whose target the process does
    not have is left out when another step's target is there.  ``maps``:
    the files the process maps as the caller just read them (ulp.process.Process)."""
    outcomes = []
    for step in steps:
        outcomes.append(_attempt(pid, step, timeout, retries, maps))
        maps = None  # the process has changed since
    relevant = [o for o in outcomes if o.code != ExitCode.LIBRARY_NOT_LOADED]
    return relevant or outcomes[:1]


def _attempt(pid: int, step: Step, timeout: float, retries: int,
             maps: dict[str, Mapping] | None) -> Outcome:
    def once() -> list[Outcome]:
        nonlocal maps
        process, maps = Process(pid, maps), None  # a retry reads them again
        return [_once(process, step, timeout)]

    return retrying(once, retries,
                    lambda error: Outcome(pid, step.metadata.patch_id_hex, error.exit_code,
                                          one_line(str(error)), step.reverting))[0]


def retrying(work: Callable[[], list[Outcome]], retries: int,
             failed: Callable[[UlpError], Outcome]) -> list[Outcome]:
    """``work()``, again up to ``retries`` times while it raises RETRY; an
    error it raises becomes the outcome ``failed(error)``."""
    for attempt in range(retries + 1):
        try:
            return work()
        except UlpError as error:
            if error.exit_code != ExitCode.RETRY or attempt == retries:
                return [failed(error)]
            time.sleep(RETRY_PAUSE)
    raise AssertionError("unreachable")


def _label(metadata: PatchMetadata) -> str:
    """`` (label)`` for a patch with labels (a CVE id...), else nothing."""
    return f" ({metadata.label})" if metadata.label else ""


def _once(process: Process, step: Step, timeout: float) -> Outcome:
    metadata = step.metadata
    pid = process.pid  # a thread's ID names its process
    try:
        if step.reverting:
            transition.revert(process, metadata, timeout)
            return Outcome(pid, metadata.patch_id_hex, ExitCode.OK,
                           f"reverted patch {metadata.patch_id_hex}{_label(metadata)} "
                           f"in process {pid}", True)
        transition.apply(process, step.patch_file, timeout, step.source)
        names = ", ".join(metadata.replaced_names)
        return Outcome(pid, metadata.patch_id_hex, ExitCode.OK,
                       one_line(f"applied patch {metadata.patch_id_hex}{_label(metadata)} to "
                                f"process {pid}: {names}"), False, codewrite.last_pause())
    except (UlpError, OSError) as error:
        raise explained(error, process) from None
    finally:
        process.close()


#: errors a process that is being killed can cause on its way out
DEATH_SYMPTOMS = {ExitCode.FAILURE, ExitCode.PERMISSION, ExitCode.NO_RUNTIME,
                  ExitCode.LIBRARY_NOT_LOADED, ExitCode.TARGET_MISMATCH, ExitCode.RETRY}


def explained(error: UlpError | OSError, process: Process) -> UlpError:
    """Whatever went wrong, a process that died or called execve meanwhile is
    the reason to report: the process the trigger knew is gone."""
    if isinstance(error, OSError):
        # /proc or ptrace failing in a way not foreseen: still one line
        error = UlpError(f"process {process.pid}: {error}", ExitCode.FAILURE)
    if error.exit_code == ExitCode.NO_PROCESS:
        return error
    if process.image_changed():
        return process.gone()
    grace = DYING_GRACE if error.exit_code in DEATH_SYMPTOMS else 0.0
    return process.gone() if process.exits_within(grace) else error


def run_all(pids: list[int], handle: Callable[[int], list[Outcome]], jobs: int,
            report: Callable[[list[Outcome], int], None]) -> list[Outcome]:
    """``handle(pid)`` (``run_one`` with its steps, or ``revertall.run_one``)
    for every PID, in ``jobs`` worker processes (ulp.trigger.workers) when
    there are several; ``report(outcomes, done)`` is called in this process
    as each process is finished."""
    outcomes: list[Outcome] = []

    def finished(result: list[Outcome]) -> None:
        outcomes.extend(result)
        report(result, len(done) + 1)
        done.append(result)

    done: list[list[Outcome]] = []
    jobs = max(1, min(jobs, len(pids)))
    if jobs == 1:
        for pid in pids:
            finished(handle(pid))
        return outcomes
    from ulp.trigger import workers  # not needed by a single process

    def answer(pid: int, record) -> None:
        kind, value = record
        if kind == "bug":
            raise RuntimeError(f"ulp-trigger worker, process {pid}: {value}")
        finished([_outcome(item) for item in value])

    lost = workers.run(pids, lambda pid: _work(handle, pid), jobs, answer)
    for pid in sorted(lost):
        finished([Outcome(pid, "", ExitCode.FAILURE,
                          f"process {pid}: no outcome, the trigger's worker process ended "
                          "unexpectedly (the process has the whole patch or none of it)")])
    return outcomes


def _work(handle: Callable[[int], list[Outcome]], pid: int) -> tuple:
    """``handle(pid)`` in a worker process, as marshal data; a bug (any
    other exception) as its traceback, for the parent to raise."""
    try:
        return "ok", [_record(outcome) for outcome in handle(pid)]
    except Exception:
        import traceback

        return "bug", traceback.format_exc()


def _record(outcome: Outcome) -> tuple:
    pause = outcome.pause
    return (outcome.pid, outcome.patch, int(outcome.code), outcome.message, outcome.reverting,
            None if pause is None else (pause.threads, pause.seconds, pause.span))


def _outcome(record: tuple) -> Outcome:
    pid, patch, code, message, reverting, pause = record
    return Outcome(pid, patch, ExitCode(code), message, reverting,
                   None if pause is None else codewrite.Pause(*pause))
