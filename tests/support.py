"""Building test programs and driving the ulp commands and live targets."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
C_DIR = ROOT / "tests" / "c"
RUNTIME = ROOT / "runtime" / "libulp.so"
BIN_DIR = Path(sys.executable).parent
PATCHABLE = "-fpatchable-function-entry=16,14"
TIMEOUT = 30.0


def cc(out: Path, sources: list[Path | str], *flags: str, compiler: str = "gcc") -> Path:
    """Compile with gcc (or ``compiler``); fail the test with its message if it fails."""
    command = [compiler, "-g", "-O2", "-Wall", "-o", str(out), *map(str, sources), *flags]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(command)}\n{result.stderr}")
    return out


def shared_library(out: Path, sources: list[Path | str], *flags: str,
                   patchable: bool = True) -> Path:
    extra = [PATCHABLE] if patchable else []
    return cc(out, sources, "-shared", "-fPIC", *extra, *flags)


def tool(name: str, *args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run one of the ulp console scripts as a user would."""
    return subprocess.run([str(BIN_DIR / name), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def trigger_here(*args: str | Path | int) -> tuple[int, str, str]:
    """ulp-trigger's main() in this process: exit code, stdout, stderr (a
    Python process per call would take 0.1 s to start)."""
    from ulp.trigger import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(arg) for arg in args])
    return code, out.getvalue(), err.getvalue()


def wait_unmapped(pid: int, name: str) -> None:
    """Until no file named ``name`` is mapped in ``pid`` any more, at most
    20 s: a library the program dlcloses while the agent has it pinned
    (for a COMMIT or REVERT, until the agent's first tick after it) is
    unmapped when the agent lets go."""
    deadline = time.monotonic() + 20
    while f"/{name}\n" in Path(f"/proc/{pid}/maps").read_text():
        assert time.monotonic() < deadline, f"{name} stays mapped in process {pid}"
        time.sleep(0.01)


def thread_states(pid: int) -> str:
    """Each thread of process PID: name, state, tracer and where in the kernel
    it waits; what a test says when the process printed nothing (stopped,
    traced, or waiting for something that never comes)."""
    try:
        tids = sorted(os.listdir(f"/proc/{pid}/task"), key=int)
    except OSError:
        return "none (the process is gone)"
    states = []
    for tid in tids:
        task = Path(f"/proc/{pid}/task/{tid}")
        try:  # neither file waits for an execve in progress (/proc/PID/stack would)
            status = dict(line.split(":", 1) for line in (task / "status").read_text()
                          .splitlines() if ":" in line)
            wchan = (task / "wchan").read_text().strip() or "-"
        except OSError:
            continue
        states.append(f"{tid} {status['Name'].strip()} {status['State'].strip()} traced by "
                      f"{status['TracerPid'].strip()} in {wchan}")
    return "; ".join(states) or "none"


class LiveProcess:
    """A spawned program whose stdout lines are read with a timeout."""

    def __init__(self, argv: list[str | Path], env: dict[str, str] | None = None,
                 preload_runtime: bool = True, cwd: Path | None = None) -> None:
        full_env = dict(os.environ)
        full_env.pop("LD_PRELOAD", None)
        if preload_runtime:
            full_env["LD_PRELOAD"] = str(RUNTIME)
        full_env.update(env or {})
        self.proc = subprocess.Popen(list(map(str, argv)), stdout=subprocess.PIPE,
                                     stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=full_env, cwd=cwd, bufsize=1)
        self.pid = self.proc.pid
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next_line(self, timeout: float = TIMEOUT) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"process {self.pid} printed nothing for {timeout}s; its "
                                 f"threads: {thread_states(self.pid)}") from None
        if line is None:
            stderr = self.proc.stderr.read() if self.proc.poll() is not None else ""
            raise AssertionError(f"process {self.pid} ended ({self.proc.poll()}): {stderr}")
        return line

    def wait_for(self, predicate, timeout: float = TIMEOUT) -> str:
        """Read lines until one satisfies ``predicate``; return it."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"process {self.pid}: expected line not seen")
            line = self.next_line(remaining)
            if predicate(line):
                return line

    def send(self, text: str) -> None:
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=TIMEOUT)
        for stream in (self.proc.stdout, self.proc.stdin, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass

    def __enter__(self) -> LiveProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def hand_made_patch(source: Path, path: Path, patch_object: bytes | None = None,
                    **changes) -> Path:
    """The patch file ``source`` with metadata fields changed (and, given, another
    patch object and its hash), written to ``path`` with valid checksums and the
    id its new content gives: what a hostile or buggy packer could write."""
    import dataclasses

    from ulp import metadata, patchfile

    original = patchfile.read_patch_file(str(source))
    if patch_object is None:
        patch_object = original.patch_object
    else:
        changes.setdefault("patch_so_sha256", hashlib.sha256(patch_object).digest())
    changed = dataclasses.replace(original.metadata, **changes)
    changed = dataclasses.replace(changed, patch_id=metadata.make_patch_id(
        changed.patch_so_sha256, changed.target_identity, changed.units, changed.requires))
    patchfile.write_patch_file(str(path), patchfile.PatchFile(changed, patch_object))
    return path


def rechecksummed_patch(data: bytes) -> bytes:
    """The patch file ``data`` with the checksums a packer would have written
    for its bytes: the metadata record's (when its header is whole), then the
    file's."""
    from ulp import metadata, patchfile

    if len(data) < patchfile.HEADER_SIZE:
        return data
    size = struct.unpack_from("<I", data, 12)[0]
    start = patchfile.HEADER_SIZE
    record = data[start:start + size]
    if len(record) >= metadata.HEADER_SIZE:
        checked, payload = record[:metadata.CHECKED_HEADER_SIZE], record[metadata.HEADER_SIZE:]
        record = checked + hashlib.sha256(checked + payload).digest() + payload
    checked = data[:patchfile.CHECKED_HEADER_SIZE]
    return (checked + hashlib.sha256(checked + record).digest() + record
            + data[start + size:])
