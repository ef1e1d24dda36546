"""A running process seen through /proc: its mappings, threads and memory."""

from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass

from ulp.errors import ExitCode, UlpError


@dataclass(frozen=True)
class Mapping:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str
    offset: int
    inode: int
    path: str
    device: int = 0  # st_dev of the file (os.makedev of the major:minor shown)


#: /proc states of a task that will never run again
DEAD_STATES = ("Z", "X", "x")
DYING_GRACE = 0.2  # seconds a dying process takes at most to become a zombie


def read_proc(path: str) -> bytes:
    """The whole of a /proc file, read with three system calls.

    Python's ``open()`` makes nine (it looks for a terminal and seeks), and
    the trigger reads /proc files many times per process of a fleet
    (docs/trigger.md, "Speed").  OSError if it cannot be read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = [os.read(fd, 65536)]
        while chunks[-1]:
            chunks.append(os.read(fd, 65536))
    finally:
        os.close(fd)
    return b"".join(chunks)


def stat_fields(pid: int, tid: int | None = None) -> list[str] | None:
    """The fields of /proc/PID[/task/TID]/stat after the command name; None if gone."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        return read_proc(path).rsplit(b")", 1)[1].decode().split()
    except (OSError, IndexError):
        return None


def thread_group(tid: int) -> int:
    """The process (thread group) of thread ``tid``; NO_PROCESS if there is none."""
    return _group_and_state(tid)[0]


def _group_and_state(tid: int) -> tuple[int, str]:
    """The thread group of ``tid`` and the state letter of ``tid`` (as
    /proc/TID/stat has it), from one read of /proc/TID/status."""
    try:
        status = read_proc(f"/proc/{tid}/status")
        group = int(status.split(b"\nTgid:", 1)[1].split(None, 1)[0])
        state = status.split(b"\nState:", 1)[1].split(None, 1)[0].decode()
        return group, state
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        pass
    raise UlpError(f"no process with PID {tid}", ExitCode.NO_PROCESS)


class Process:
    """One process image: the PID as it runs now, until it exits or execs.

    /proc/PID/mem is opened at once: that descriptor stays bound to the
    address space it was opened on, and reads EOF once that address space is
    gone, whether the process exited or replaced its program with execve
    (same PID, new image).  Either way the process the caller knew is gone:
    ``image_changed()`` and ``gone()`` say so (PROCESS_EXITED).
    """

    def __init__(self, pid: int, objects: dict[str, Mapping] | None = None) -> None:
        """``objects``: object_mappings() of /proc/PID/maps as the caller read
        it just before (``mapped_objects(reuse=True)`` starts from them)."""
        self._mem_fd: int | None = None
        self._mem_error: UlpError | None = None
        self._objects = objects  # from the last read of maps
        # /proc/TID exists for every thread, though unlisted: a thread's ID
        # names its process (whose ID the messages then show)
        group, state = _group_and_state(pid)
        if group != pid:
            pid, state = group, self.state_of(group)
        self.pid = pid
        if state in DEAD_STATES and self._other_threads_live():
            # A process being killed loses its main thread first: its other
            # threads follow within moments.  One whose main thread called
            # pthread_exit keeps them: /proc/PID/maps and /proc/PID/mem
            # follow the main thread, so ulp cannot work on it.
            if self._threads_end_within(DYING_GRACE):
                raise UlpError(f"process {pid} exited", ExitCode.PROCESS_EXITED)
            raise UlpError(f"the main thread of process {pid} has exited (pthread_exit); "
                           "ulp cannot work on such a process", ExitCode.FAILURE)
        try:
            self._mem()
        except UlpError as error:
            self._mem_error = error  # raised again when memory is needed

    def state(self) -> str | None:
        """The state letter of /proc/PID/stat (R, S, D, T, t, Z...), None if gone."""
        return self.state_of(self.pid)

    @staticmethod
    def state_of(pid: int) -> str | None:
        fields = stat_fields(pid)
        return fields[0] if fields else None

    def alive(self) -> bool:
        return self.state() not in (None, *DEAD_STATES)

    def _other_threads_live(self) -> bool:
        try:
            tids = os.listdir(f"/proc/{self.pid}/task")
        except OSError:
            return False
        return any(int(tid) != self.pid and (stat_fields(self.pid, int(tid)) or ["Z"])[0]
                   not in DEAD_STATES for tid in tids)

    def _threads_end_within(self, seconds: float) -> bool:
        return _stops_within(self._other_threads_live, seconds)

    def image_changed(self) -> bool:
        """True if the address space this object was opened on is gone:
        the process exited or called execve since."""
        if self._mem_fd is None:
            return not self.alive()
        try:
            # an address space that exists answers EIO for address 0 (unmapped),
            # one that is gone answers EOF for every address
            return os.pread(self._mem_fd, 1, 0) == b""
        except OSError:
            return False

    def known(self) -> bool:
        """Alive and still running the image this object was opened on."""
        return self.alive() and not self.image_changed()

    def exits_within(self, seconds: float) -> bool:
        """True if the process is dead, or dies within ``seconds``.

        A process being killed tears down its memory and threads before it
        turns into a zombie: meanwhile it looks alive but its maps are empty
        and its threads vanish.  Errors seen then are its death, not theirs.
        """
        return _stops_within(self.known, seconds)

    def mappings(self) -> list[Mapping]:
        return [_parse_mapping(line) for line in self._maps_lines()]

    def _maps_lines(self) -> list[str]:
        try:
            lines = read_proc(f"/proc/{self.pid}/maps").decode(errors="surrogateescape") \
                .splitlines()
        except PermissionError:
            raise UlpError(f"cannot read the mappings of PID {self.pid}: permission denied",
                           ExitCode.PERMISSION) from None
        except OSError:
            raise self.gone() from None
        if not lines and not self.known():
            raise self.gone()
        return lines

    def threads(self) -> list[int]:
        try:
            tids = sorted(int(tid) for tid in os.listdir(f"/proc/{self.pid}/task"))
        except OSError:
            raise self.gone() from None
        if not tids:
            raise self.gone()
        return tids

    def mapped_objects(self, reuse: bool = False) -> dict[str, int]:
        """Every file mapped at offset 0, with its load address.

        ``reuse``: as the last call read them, if there was one.  For the
        checks made before anything changes (each is made again in memory
        or by the runtime): an apply looks for the runtime and its targets
        in one read of /proc/PID/maps.
        """
        objects = self._objects if reuse and self._objects is not None \
            else self._object_mappings()
        return {path: mapping.start for path, mapping in objects.items()}

    def _object_mappings(self) -> dict[str, Mapping]:
        self._objects = object_mappings(self._maps_lines())
        return self._objects

    def object_file(self, path: str, start: int) -> str:
        """A path opening the very file mapped at ``start``.

        /proc/PID/map_files names the mapped inode, so what is read is what
        runs even if the file at ``path`` was replaced or deleted since it
        was loaded.  When map_files cannot be used (it needs CAP_SYS_ADMIN),
        the path through /proc/PID/root: ``path`` as the process sees it, in
        its own mount namespace or chroot (a container).
        """
        candidate = self.map_files_path(path, start)
        if candidate is not None and os.access(candidate, os.R_OK):
            return candidate
        rooted = f"/proc/{self.pid}/root{path}"
        if path.startswith("/") and os.access(rooted, os.R_OK):
            return rooted
        return path

    def map_files_path(self, path: str, start: int) -> str | None:
        """/proc/PID/map_files/START-END of the object ``path`` mapped at
        ``start`` (usable only with CAP_SYS_ADMIN), None if it is not mapped there."""
        mapping = (self._objects or self._object_mappings()).get(path)
        if mapping is None or mapping.start != start:
            return None
        return f"/proc/{self.pid}/map_files/{mapping.start:x}-{mapping.end:x}"

    def _mem(self) -> int:
        if self._mem_error is not None:
            raise self._mem_error
        if self._mem_fd is None:
            try:
                self._mem_fd = os.open(f"/proc/{self.pid}/mem", os.O_RDWR)
            except PermissionError:
                raise UlpError(f"cannot access the memory of PID {self.pid}: permission denied",
                               ExitCode.PERMISSION) from None
            except OSError:
                raise self.gone() from None
        return self._mem_fd

    def read(self, address: int, size: int) -> bytes:
        try:
            data = os.pread(self._mem(), size, address)
        except OSError as error:
            raise self._memory_error(error, address) from None
        if not data and size and self.image_changed():
            raise self.gone()
        if len(data) != size:
            raise UlpError(f"short read at {address:#x} in PID {self.pid}", ExitCode.FAILURE)
        return data

    def write(self, address: int, data: bytes) -> None:
        """Write through /proc/PID/mem: works on read-only code pages too."""
        try:
            written = os.pwrite(self._mem(), data, address)
        except OSError as error:
            raise self._memory_error(error, address) from None
        if written == 0 and data and self.image_changed():
            raise self.gone()
        if written != len(data):
            raise UlpError(f"short write at {address:#x} in PID {self.pid}", ExitCode.FAILURE)

    def _memory_error(self, error: OSError, address: int) -> UlpError:
        if error.errno in (errno.ESRCH, errno.ENOENT) or not self.known():
            return self.gone()
        if error.errno in (errno.EPERM, errno.EACCES):
            return UlpError(f"cannot access the memory of PID {self.pid}: permission denied",
                            ExitCode.PERMISSION)
        return UlpError(f"cannot access address {address:#x} of PID {self.pid}: "
                        f"{error.strerror}", ExitCode.FAILURE)

    def gone(self) -> UlpError:
        """PROCESS_EXITED: the process exited, or execve replaced its program."""
        if self.alive():
            return UlpError(f"process {self.pid} exited (it replaced its program with execve)",
                            ExitCode.PROCESS_EXITED)
        return UlpError(f"process {self.pid} exited", ExitCode.PROCESS_EXITED)

    def close(self) -> None:
        if self._mem_fd is not None:
            os.close(self._mem_fd)
            self._mem_fd = None


def _stops_within(condition, seconds: float) -> bool:
    """True if ``condition()`` is false now or turns false within ``seconds``."""
    deadline = time.monotonic() + seconds
    while condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


def object_mappings(lines: list[str]) -> dict[str, Mapping]:
    """The first offset-0 mapping of every file mapped in ``lines`` (of
    /proc/PID/maps), by path.

    Only those lines are parsed: a process with many threads or many
    anonymous mappings has thousands of others.
    """
    objects: dict[str, Mapping] = {}
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[2].strip("0") or not fields[5].startswith("/") \
                or fields[4] == "0" or fields[5] in objects:
            continue
        try:
            objects[fields[5]] = _parse_mapping(line)
        except ValueError:
            continue
    return objects


def _parse_mapping(line: str) -> Mapping:
    fields = line.split(maxsplit=5)
    start, end = (int(part, 16) for part in fields[0].split("-"))
    path = fields[5] if len(fields) > 5 else ""
    major, _, minor = fields[3].partition(":")
    return Mapping(start, end, fields[1], int(fields[2], 16), int(fields[4]), path,
                   os.makedev(int(major, 16), int(minor, 16)))
