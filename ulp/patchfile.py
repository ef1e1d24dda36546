"""The patch file: one artifact that carries its patch object (format version 3).

docs/patch-format.md describes it.  A patch file is a container around the
patch metadata record (``ulp.metadata``, unchanged by this layer) and the
bytes of the patch .so itself, so that a patch can be copied to another
directory or host and applied there, to a process that cannot see any of the
files it was packed from:

    header (56 bytes) | metadata record | patch object

The header's SHA-256 covers the header and the metadata record; the metadata
record holds the SHA-256 of the patch object, which is checked on every read.
Every byte of the file is therefore checked before any of it is used.  A
reverse patch carries no object: reverting loads nothing.

``parse_patch_file`` treats its input as hostile, like ``parse_patch``:
whatever the bytes, it returns a valid ``PatchFile`` or raises ``UlpError``
(BAD_INPUT) with a one-line reason.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from ulp import metadata as md
from ulp.digest import sha256
from ulp.errors import ExitCode, UlpError
from ulp.files import read_input

MAGIC = md.MAGIC
FORMAT_VERSION = 3

# magic, format version, flags, metadata record length, patch object length, SHA-256
HEADER_FORMAT = "<8sHHIQ32s"
HEADER_SIZE = struct.calcsize(HEADER_FORMAT)
CHECKED_HEADER_SIZE = HEADER_SIZE - 32  # the checksum covers these header bytes
KNOWN_FLAGS = 0

MAX_RECORD = md.HEADER_SIZE + md.MAX_PAYLOAD
MAX_OBJECT = 1 << 30
MAX_FILE = HEADER_SIZE + MAX_RECORD + MAX_OBJECT

#: versions written by earlier ulp-packers: a file that only named its patch .so
OLD_VERSIONS = (1, 2)

assert HEADER_SIZE == 56, HEADER_SIZE


@dataclass(frozen=True)
class PatchFile:
    """A patch as one artifact: its metadata and its patch .so's bytes."""

    metadata: md.PatchMetadata
    patch_object: bytes  # the patch .so as packed; empty in a reverse patch

    def pack(self) -> bytes:
        """The file contents; ValueError if they could not be read back."""
        problem = _object_problem(self.metadata, self.patch_object)
        if problem is not None:
            raise ValueError(f"cannot pack patch file: {problem}")
        record = self.metadata.pack()
        checked = struct.pack("<8sHHIQ", MAGIC, FORMAT_VERSION, 0, len(record),
                              len(self.patch_object))
        return checked + _checksum(checked, record) + record + self.patch_object

    def reversed(self) -> PatchFile:
        """The reverse patch file of this patch: it reverts, so it loads nothing."""
        return PatchFile(self.metadata.reversed(), b"")


def _checksum(checked_header: bytes, record: bytes) -> bytes:
    return sha256(checked_header + record).digest()


def _object_problem(metadata: md.PatchMetadata, patch_object: bytes) -> str | None:
    if metadata.reverse:
        return None if not patch_object else "a reverse patch carries no patch object"
    if not patch_object:
        return "the patch object is missing"
    if len(patch_object) > MAX_OBJECT:
        return f"the patch object is larger than {MAX_OBJECT} bytes"
    if sha256(patch_object).digest() != metadata.patch_so_sha256:
        return "the patch object is not the one the metadata names (SHA-256 mismatch)"
    return None


class _Malformed(Exception):
    """Internal: why the bytes are not a valid patch file."""


def parse_patch_file(data: bytes, source: str = "<patch>") -> PatchFile:
    """Parse a patch file; UlpError(BAD_INPUT) with a precise reason if it is bad."""
    data = bytes(data)
    try:
        record, patch_object = _split(data)
    except _Malformed as error:
        raise UlpError(f"{source}: {error}", ExitCode.BAD_INPUT) from None
    metadata = md.parse_patch(record, f"{source}: metadata record")
    problem = _object_problem(metadata, patch_object)
    if problem is not None:
        raise UlpError(f"{source}: {problem}", ExitCode.BAD_INPUT)
    return PatchFile(metadata, patch_object)


def _split(data: bytes) -> tuple[bytes, bytes]:
    """Check the header; return the metadata record and the patch object."""
    if not data:
        raise _Malformed("empty file, not a ulp patch file")
    if not data.startswith(MAGIC[: len(data)]):
        raise _Malformed("not a ulp patch file (bad magic)")
    if len(data) >= 10:
        version = struct.unpack_from("<H", data, 8)[0]
        if version in OLD_VERSIONS:
            raise _Malformed(f"patch format version {version}, written by an earlier "
                             "ulp-packer, does not carry its patch object: pack it again")
        if version != FORMAT_VERSION:
            raise _Malformed(f"unsupported format version {version} "
                             f"(this ulp reads {FORMAT_VERSION})")
    if len(data) < HEADER_SIZE:
        raise _Malformed(f"truncated: {len(data)} bytes, the header alone is {HEADER_SIZE}")
    _, _, flags, record_size, object_size, checksum = struct.unpack_from(HEADER_FORMAT, data)
    if record_size > MAX_RECORD:
        raise _Malformed(f"metadata record length {record_size} exceeds the limit of "
                         f"{MAX_RECORD}")
    if object_size > MAX_OBJECT:
        raise _Malformed(f"patch object length {object_size} exceeds the limit of {MAX_OBJECT}")
    expected = HEADER_SIZE + record_size + object_size
    if len(data) < expected:
        raise _Malformed(f"truncated: {len(data)} bytes, the header says {expected}")
    if len(data) > expected:
        raise _Malformed(f"trailing garbage: {len(data) - expected} bytes after the patch "
                         "object")
    record = data[HEADER_SIZE:HEADER_SIZE + record_size]
    if _checksum(data[:CHECKED_HEADER_SIZE], record) != checksum:
        raise _Malformed("corrupted: checksum mismatch")
    if flags & ~KNOWN_FLAGS:
        raise _Malformed(f"unknown flags {flags:#06x}")
    return record, data[HEADER_SIZE + record_size:]


def read_patch_file(path: str, trusted: bool = False) -> PatchFile:
    """Read and parse the patch file at ``path`` (a regular file; with
    ``trusted``, one no other user can change: ulp.files).  The file is read
    once: the object returned is the object whose hash was checked."""
    return parse_patch_file(read_input(path, MAX_FILE, trusted), path)


def read_patch(path: str, trusted: bool = False) -> md.PatchMetadata:
    """The metadata of the patch file at ``path``."""
    return read_patch_file(path, trusted).metadata


def write_patch_file(path: str, patch_file: PatchFile) -> None:
    """Write ``patch_file`` to ``path`` atomically (a temporary file, then rename).

    The file's mode is 0644 whatever the umask: its bytes, not the way it
    was written, make the patch (reproducible packing).
    """
    data = patch_file.pack()
    directory = os.path.dirname(os.path.abspath(path))
    try:
        import tempfile  # writing is ulp-packer's: the trigger only reads

        fd, temp = tempfile.mkstemp(prefix=".ulp-", suffix=".tmp", dir=directory)
    except OSError as error:
        raise UlpError(f"{path}: cannot write ({error.strerror})", ExitCode.FILE_MISSING) from None
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except OSError as error:
        _remove_quietly(temp)
        raise UlpError(f"{path}: cannot write ({error.strerror})", ExitCode.FILE_MISSING) from None
    except BaseException:
        _remove_quietly(temp)
        raise


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
