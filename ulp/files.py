"""Reading the files every ulp command takes as input.

Only regular files are read: a path is opened with ``O_NONBLOCK`` (opening a
FIFO with no writer, or a device, must not block) and the *descriptor* is
checked with ``fstat`` before a byte is read, so a FIFO, device, socket or
directory is refused with one line instead of hanging the command.

What ``ulp-trigger`` loads into a process (the .ulp file and the patch .so)
must moreover be safe from other users, as ssh and sudo require of their
files: the file must be owned by root or by the user running the trigger and
not be writable by group or others, and so must every directory on its real
path.  A sticky directory (``/tmp``) owned by root or that user is accepted
although others may write into it: they can add entries but not rename or
remove ours.
"""

from __future__ import annotations

import os
import stat
from io import BufferedReader

from ulp.errors import ExitCode, UlpError

_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket",
          stat.S_IFDIR: "a directory"}


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def open_input(path: str, trusted: bool = False) -> BufferedReader:
    """Open the regular file ``path`` for reading in binary, never blocking.

    FILE_MISSING names why it cannot be read (missing, permission, not a
    regular file); with ``trusted``, UNSAFE_FILE if another user could change
    it (see the module's docstring).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise UlpError(f"{path}: no such file", ExitCode.FILE_MISSING) from None
    except PermissionError:
        raise UlpError(f"{path}: permission denied", ExitCode.FILE_MISSING) from None
    except OSError as error:
        raise UlpError(f"{path}: cannot read ({error.strerror})", ExitCode.FILE_MISSING) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            what = "is a directory" if stat.S_ISDIR(info.st_mode) else \
                f"not a regular file ({_kind(info.st_mode)})"
            raise UlpError(f"{path}: {what}", ExitCode.FILE_MISSING)
        if trusted:
            check_trusted(path, info)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_input(path: str, limit: int, trusted: bool = False) -> bytes:
    """The contents of the regular file ``path``, at most ``limit`` + 1 bytes."""
    with open_input(path, trusted) as stream:
        try:
            return stream.read(limit + 1)
        except OSError as error:
            raise UlpError(f"{path}: cannot read ({error.strerror})",
                           ExitCode.FILE_MISSING) from None


def _trusted_owner(uid: int) -> bool:
    return uid in (0, os.geteuid())


def _unsafe(path: str, info: os.stat_result, directory: bool) -> str | None:
    """Why another user could change ``path`` (stat ``info``), or None."""
    if not _trusted_owner(info.st_uid):
        return f"owned by uid {info.st_uid}, neither root nor the user running ulp " \
               f"(uid {os.geteuid()})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        if directory and info.st_mode & stat.S_ISVTX:
            return None  # sticky: others cannot rename or remove what they do not own
        return "writable by group or others"
    return None


def check_trusted(path: str, info: os.stat_result) -> None:
    """UNSAFE_FILE unless ``path`` (opened, ``info`` from its descriptor) and
    every directory of its real path are safe from other users."""
    reason = _unsafe(path, info, directory=False)
    if reason is not None:
        raise UlpError(f"refusing {path}: {reason}", ExitCode.UNSAFE_FILE)
    real = os.path.realpath(path)
    try:
        named = os.stat(real)
    except OSError as error:
        raise UlpError(f"{path}: cannot check ({error.strerror})", ExitCode.FILE_MISSING) from None
    if (named.st_dev, named.st_ino) != (info.st_dev, info.st_ino):
        raise UlpError(f"refusing {path}: it was replaced while being opened",
                       ExitCode.UNSAFE_FILE)
    directory = os.path.dirname(real)
    while True:
        try:
            dir_info = os.stat(directory)
        except OSError as error:
            raise UlpError(f"{path}: cannot check {directory} ({error.strerror})",
                           ExitCode.FILE_MISSING) from None
        reason = _unsafe(directory, dir_info, directory=True)
        if reason is not None:
                raise UlpError(f"refusing {path}: its directory {directory} is {reason}",
                           ExitCode.UNSAFE_FILE)
        parent = os.path.dirname(directory)
        if parent == directory:
            return
        directory = parent
