"""Which processes a ulp-trigger run works on.

Given PIDs are taken as they are.  A name (``-p NAME``, shell wildcards)
matches a process whose command name (/proc/PID/comm), program file name
(/proc/PID/exe) or first argument's file name matches it.  With neither, the
candidates are every process that maps the ulp runtime and one of the
patches' target libraries (or, for ``--revert-all LIB``, a prepared library
LIB names): found by reading /proc/PID/maps only, each mapped
file looked at once per (device, inode) however many processes map it.
With many processes the workers do it (ulp.trigger.workers), each for the
processes it works on, and an apply starts from the maps read here.
What this finds is only a candidate: the apply checks everything again in
the process's memory.
"""

from __future__ import annotations

import fnmatch
import functools
import os
from collections.abc import Iterable

from ulp import agent_abi
from ulp.errors import UlpError
from ulp.process import Mapping, object_mappings, read_proc
from ulp.trigger.elfscan import ElfScan, read_prepared


def all_pids() -> list[int]:
    """Every process on the host but this one."""
    me = os.getpid()
    return sorted(int(name) for name in os.listdir("/proc") if name.isdigit() and int(name) != me)


def process_names(pid: int) -> set[str]:
    """The names ``-p`` matches for ``pid`` (empty if it is gone or unreadable)."""
    names = set()
    try:
        with open(f"/proc/{pid}/comm") as stream:
            names.add(stream.read().rstrip("\n"))
    except OSError:
        return names
    try:
        names.add(os.path.basename(os.readlink(f"/proc/{pid}/exe")).removesuffix(" (deleted)"))
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as stream:
            first = stream.read(4096).split(b"\0", 1)[0]
        if first:
            names.add(os.path.basename(first.decode(errors="replace")))
    except OSError:
        pass
    return names


def matching(pids: Iterable[int], patterns: list[str]) -> list[int]:
    """The processes among ``pids`` one of whose names matches a pattern."""
    return [pid for pid in pids
            if any(fnmatch.fnmatchcase(name, pattern) for name in process_names(pid)
                   for pattern in patterns)]


def read_maps(pid: int) -> dict[str, Mapping] | None:
    """The files ``pid`` maps (ulp.process.object_mappings of
    /proc/PID/maps), None if it cannot be read."""
    try:
        text = read_proc(f"/proc/{pid}/maps").decode(errors="surrogateescape")
    except OSError:
        return None
    return object_mappings(text.splitlines())


def mapped_files(objects: dict[str, Mapping]) -> dict[tuple[int, int], str]:
    """(device, inode) -> path of every file in ``objects`` (read_maps)
    but the staged patch objects."""
    files: dict[tuple[int, int], str] = {}
    for path, mapping in objects.items():
        if not path.startswith(agent_abi.STAGED_OBJECT_PATH):
            files.setdefault((mapping.device, mapping.inode), path)
    return files


@functools.lru_cache(maxsize=4096)
def _is_runtime(key: tuple[int, int], path: str) -> bool:
    try:
        with ElfScan(path) as elf:
            return elf.dynamic_symbol_value(agent_abi.MAILBOX_SYMBOL) is not None
    except (UlpError, OSError):
        return False


@functools.lru_cache(maxsize=4096)
def _identity(key: tuple[int, int], path: str) -> bytes | None:
    try:
        return read_prepared(path).identity
    except (UlpError, OSError):
        return None


def runs_targets(maps: dict[str, Mapping], identities: set[bytes]) -> bool:
    """Does the process whose files are ``maps`` (read_maps) map the ulp
    runtime and a library with one of ``identities``?

    Files are named by the path in maps; one replaced on disk since it was
    mapped is judged by its new content here, and by what is mapped later.
    """
    files = mapped_files(maps)
    has_runtime = has_target = False
    for key, path in files.items():
        # the runtime is usually named libulp.so: no need to open libc for it
        if not has_runtime and "ulp" in os.path.basename(path):
            has_runtime = _is_runtime(key, path)
        if not has_target:
            has_target = _identity(key, path) in identities
    if has_target and not has_runtime:
        has_runtime = any(_is_runtime(key, path) for key, path in files.items())
    return has_runtime and has_target


def names_library(path: str, library: str) -> bool:
    """Does ``library`` (``--revert-all LIB``) name the object mapped at ``path``?
    A path names the same file (symbolic links resolved), a file name is
    matched against the mapped file's name, with shell wildcards."""
    if "/" in library:
        return os.path.realpath(library) == path
    return fnmatch.fnmatchcase(os.path.basename(path), library)


def runs_library(maps: dict[str, Mapping], library: str) -> bool:
    """Does the process whose files are ``maps`` (read_maps) map the ulp
    runtime and a prepared library ``library`` names?"""
    files = mapped_files(maps)
    return (any(names_library(path, library) and _identity(key, path) is not None
                for key, path in files.items())
            and any(_is_runtime(key, path) for key, path in files.items()))


def runs_runtime(pid: int) -> bool:
    """Does ``pid`` map the ulp runtime (judged from /proc/PID/maps)?"""
    maps = read_maps(pid)
    return maps is not None and any(_is_runtime(key, path)
                                    for key, path in mapped_files(maps).items())
