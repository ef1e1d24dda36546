"""The patch metadata record that ulp-packer writes and ulp-trigger reads.

docs/patch-format.md describes the binary format (record versions 3 and 4)
field by field.  A patch file (``ulp.patchfile``, format version 3) carries one record
and the patch .so; this module knows only the record.
In short: a 48-byte header (magic, format version, flags, payload length,
SHA-256 checksum), then a payload of fixed-size fields and u16-length-prefixed
UTF-8 strings.  ``parse_patch`` treats its input as hostile: whatever the
bytes, it returns a valid ``PatchMetadata`` or raises ``UlpError`` with
``ExitCode.BAD_INPUT`` and a one-line reason; no other exception escapes.

The patch id is derived from the content (``make_patch_id``) and checked on
every read and write: a file whose id is not the one its content gives is
malformed, so an id always names one patch .so, target, set of units and set
of requirements.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

from ulp.digest import sha256
from ulp.errors import ExitCode, UlpError

MAGIC = b"ULPPATCH"
FORMAT_VERSION = 3  # a patch of one target library
MULTI_TARGET_VERSION = 4  # a patch of several: version 3 and TARGET records
VERSIONS = (FORMAT_VERSION, MULTI_TARGET_VERSION)

FLAG_REVERSE = 0x0001
KNOWN_FLAGS = FLAG_REVERSE

# magic, format version, flags, payload length, SHA-256 checksum
HEADER_FORMAT = "<8sHHI32s"
HEADER_SIZE = struct.calcsize(HEADER_FORMAT)
CHECKED_HEADER_SIZE = HEADER_SIZE - 32  # the checksum covers these header bytes

PATCH_ID_SIZE = 16
IDENTITY_SIZE = 32
SHA256_SIZE = 32
MAX_BUILD_ID = 20
MAX_UNITS = 65536
MAX_REQUIRES = 256
MAX_STRING = 4096
MAX_PAYLOAD = 64 * 1024 * 1024

PATCH_ID_DOMAIN = b"ulp patch id v3\0"
GROUP_ID_DOMAIN = b"ulp patch id v4\0"  # a patch of several targets, over its parts' ids

# records after the requirements (format 3): u16 kind, u32 length, body
RECORD_PRIVATE = 1  # a function without a descriptor in the target
RECORD_REFERENCE = 2  # a variable of the patch the runtime fills
RECORD_LABEL = 3  # a label (!text in libpulp's .dsc), shown by the tools
RECORD_TARGET = 4  # another target library and its functions (record version 4)
MAX_TARGETS = 16  # target libraries of one patch
MAX_RECORDS = 2 * MAX_UNITS + 256 + MAX_TARGETS
MAX_LABELS = 256
REF_ADDRESS = 1  # the patch's pointer := the target symbol's address (#sym:ref)
REF_TLS = 2  # the patch's tls_index := {module, offset} (#%sym:ref)
FLAG_ENDBR64 = 1

assert HEADER_SIZE == 48, HEADER_SIZE


@dataclass(frozen=True)
class Unit:
    """One replaced function."""

    index: int  # function index in the prepared target (PreparedFunction.index)
    old_name: str  # the function of the target
    new_name: str  # its replacement, a function of the patch .so


@dataclass(frozen=True)
class PrivateUnit:
    """One replaced function the target has no descriptor for (static,
    hidden, or in an executable): found by its symbol, named by its entry."""

    entry_delta: int  # its entry minus the target's library descriptor (link-time addresses)
    flags: int  # FLAG_ENDBR64 when the entry starts with endbr64
    old_name: str
    new_name: str


@dataclass(frozen=True)
class Reference:
    """A variable of the patch .so that the runtime fills at apply time."""

    kind: int  # REF_ADDRESS or REF_TLS
    delta: int  # ADDRESS: symbol - library descriptor; TLS: offset in the TLS block
    target_name: str  # the symbol of the target
    ref_name: str  # the variable of the patch .so


@dataclass(frozen=True)
class Target:
    """One target library of a patch, and what the patch changes in it."""

    path: str  # absolute path of the prepared library at pack time
    identity: bytes  # 32 bytes, PreparedLibrary.identity
    build_id: bytes  # 0..20 bytes
    layout_version: int
    units: tuple[Unit, ...]
    private_units: tuple[PrivateUnit, ...] = ()
    references: tuple[Reference, ...] = ()

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class PatchMetadata:
    """A patch.  Its first target library is in the ``target_*``, ``units``,
    ``private_units`` and ``references`` fields (all a version 3 record
    holds); a patch of several libraries has the others in ``more_targets``
    (record version 4).  ``parts()`` gives one single-target view per
    library, which is what the trigger checks and prepares library by
    library."""

    patch_id: bytes  # 16 bytes
    reverse: bool  # True in the reverse patch file
    target_path: str  # absolute path of the prepared target library at pack time
    target_identity: bytes  # 32 bytes, PreparedLibrary.identity
    target_build_id: bytes  # 0..20 bytes, PreparedLibrary.build_id
    layout_version: int  # PreparedLibrary.desc.layout_version
    patch_so_path: str  # absolute path of the patch .so
    patch_so_sha256: bytes  # 32 bytes, SHA-256 of the patch .so file
    units: tuple[Unit, ...]
    requires: tuple[bytes, ...]  # patch ids (16 bytes each)
    private_units: tuple[PrivateUnit, ...] = ()
    references: tuple[Reference, ...] = ()
    labels: tuple[str, ...] = ()
    more_targets: tuple[Target, ...] = ()  # the target libraries after the first

    @property
    def targets(self) -> tuple[Target, ...]:
        """Every target library, the first one first."""
        first = Target(self.target_path, self.target_identity, self.target_build_id,
                       self.layout_version, self.units, self.private_units, self.references)
        return (first,) + self.more_targets

    def parts(self) -> tuple[PatchMetadata, ...]:
        """One view per target library, in order: the patch as if it had
        only that target, with this patch's id (not a patch of its own).
        Made once: the trigger asks for them in every process of a fleet."""
        parts = self.__dict__.get("_parts")
        if parts is None:
            parts = tuple(replace(self, target_path=target.path,
                                  target_identity=target.identity,
                                  target_build_id=target.build_id,
                                  layout_version=target.layout_version, units=target.units,
                                  private_units=target.private_units,
                                  references=target.references, more_targets=())
                          for target in self.targets)
            object.__setattr__(self, "_parts", parts)  # frozen: a cache, not a field
        return parts

    @property
    def replaced_names(self) -> list[str]:
        """The target's functions this patch replaces, exported ones first;
        each named with its library's file name when there are several."""
        many = len(self.targets) > 1
        return [f"{target.name}:{name}" if many else name for target in self.targets
                for name in ([unit.old_name for unit in target.units]
                             + [unit.old_name for unit in target.private_units])]

    @property
    def function_count(self) -> int:
        return sum(len(target.units) + len(target.private_units) for target in self.targets)

    @property
    def label(self) -> str | None:
        """The labels as one line, None without any."""
        return "; ".join(self.labels) if self.labels else None

    def pack(self) -> bytes:
        """The file contents; ValueError if a field is out of range."""
        problem = _problem(self)
        if problem is not None:
            raise ValueError(f"cannot pack patch metadata: {problem}")
        payload = _pack_payload(self)
        flags = FLAG_REVERSE if self.reverse else 0
        version = MULTI_TARGET_VERSION if self.more_targets else FORMAT_VERSION
        checked = struct.pack("<8sHHI", MAGIC, version, flags, len(payload))
        return checked + _checksum(checked, payload) + payload

    def reversed(self) -> PatchMetadata:
        """The same patch as the reverse patch file describes it."""
        return replace(self, reverse=True)

    @property
    def patch_id_hex(self) -> str:
        return self.patch_id.hex()


def make_patch_id(patch_so_sha256: bytes, target_identity: bytes,
                  units: tuple[Unit, ...] | list[Unit],
                  requires: tuple[bytes, ...] | list[bytes] = (),
                  private_units: tuple[PrivateUnit, ...] | list[PrivateUnit] = (),
                  references: tuple[Reference, ...] | list[Reference] = ()) -> bytes:
    """The id a patch's content gives (docs/patch-format.md, "Patch id").

    The runtime recomputes it from its request (runtime/patch.c,
    ``patch_id_of``): only what the request carries enters, so a unit counts
    by its function index and replacement name; the old name is fixed by the
    index once the target identity is.  A private unit counts by its entry,
    flags and replacement, a reference by kind, offset and variable; labels
    do not enter (they describe, they do not change what runs).
    """
    digest = sha256(PATCH_ID_DOMAIN)
    digest.update(patch_so_sha256)
    digest.update(target_identity)
    digest.update(struct.pack("<I", len(units)))
    for unit in units:
        digest.update(struct.pack("<I", unit.index))
        digest.update(_pack_string(unit.new_name))
    digest.update(struct.pack("<I", len(requires)))
    for required in requires:
        digest.update(required)
    digest.update(struct.pack("<I", len(private_units)))
    for private in private_units:
        digest.update(struct.pack("<qI", private.entry_delta, private.flags))
        digest.update(_pack_string(private.new_name))
    digest.update(struct.pack("<I", len(references)))
    for reference in references:
        digest.update(struct.pack("<Iq", reference.kind, reference.delta))
        digest.update(_pack_string(reference.ref_name))
    return digest.digest()[:PATCH_ID_SIZE]


def part_id(part: PatchMetadata) -> bytes:
    """The id ``make_patch_id`` gives one single-target view (``parts()``):
    a patch of one library has this id; the runtime computes it from each
    PREPARE request."""
    return make_patch_id(part.patch_so_sha256, part.target_identity, part.units, part.requires,
                         part.private_units, part.references)


def make_group_id(part_ids: list[bytes]) -> bytes:
    """The id of a patch of several libraries (docs/patch-format.md, "Patch
    id"): over its parts' ids, in the order of its targets.  The runtime
    recomputes it once it has prepared every part."""
    digest = sha256(GROUP_ID_DOMAIN)
    digest.update(struct.pack("<I", len(part_ids)))
    for part in part_ids:
        digest.update(part)
    return digest.digest()[:PATCH_ID_SIZE]


def content_id(metadata: PatchMetadata) -> bytes:
    """The id ``metadata``'s content gives: one library's, or the group's."""
    if not metadata.more_targets:
        return part_id(metadata)
    return make_group_id([part_id(part) for part in metadata.parts()])


def parse_patch(data: bytes, source: str = "<patch>") -> PatchMetadata:
    """Parse a patch file; UlpError(BAD_INPUT) with a precise reason if it is bad."""
    try:
        return _parse(bytes(data))
    except _Malformed as error:
        raise UlpError(f"{source}: {error}", ExitCode.BAD_INPUT) from None


# --- writing -----------------------------------------------------------------


def _checksum(checked_header: bytes, payload: bytes) -> bytes:
    return sha256(checked_header + payload).digest()


def _pack_string(text: str) -> bytes:
    encoded = text.encode("utf-8")
    return struct.pack("<H", len(encoded)) + encoded


def _pack_payload(metadata: PatchMetadata) -> bytes:
    parts = [
        metadata.patch_id,
        metadata.target_identity,
        struct.pack("<B", len(metadata.target_build_id)),
        metadata.target_build_id.ljust(MAX_BUILD_ID, b"\0"),
        struct.pack("<I", metadata.layout_version),
        metadata.patch_so_sha256,
        _pack_string(metadata.target_path),
        _pack_string(metadata.patch_so_path),
        struct.pack("<I", len(metadata.units)),
    ]
    for unit in metadata.units:
        parts.append(struct.pack("<I", unit.index))
        parts.append(_pack_string(unit.old_name))
        parts.append(_pack_string(unit.new_name))
    parts.append(struct.pack("<I", len(metadata.requires)))
    parts.extend(metadata.requires)
    parts.append(_pack_records(metadata))
    return b"".join(parts)


def _record(kind: int, body: bytes) -> bytes:
    return struct.pack("<HI", kind, len(body)) + body


def _pack_private(unit: PrivateUnit) -> bytes:
    return (struct.pack("<qI", unit.entry_delta, unit.flags) + _pack_string(unit.old_name)
            + _pack_string(unit.new_name))


def _pack_reference(ref: Reference) -> bytes:
    return (struct.pack("<Iq", ref.kind, ref.delta) + _pack_string(ref.target_name)
            + _pack_string(ref.ref_name))


def _pack_target(target: Target) -> bytes:
    """A TARGET record's body: the library's fields as the payload has the
    first one's, then its units, private units and references, each counted."""
    parts = [target.identity, struct.pack("<B", len(target.build_id)),
             target.build_id.ljust(MAX_BUILD_ID, b"\0"),
             struct.pack("<I", target.layout_version), _pack_string(target.path),
             struct.pack("<I", len(target.units))]
    for unit in target.units:
        parts += [struct.pack("<I", unit.index), _pack_string(unit.old_name),
                  _pack_string(unit.new_name)]
    parts.append(struct.pack("<I", len(target.private_units)))
    parts += [_pack_private(unit) for unit in target.private_units]
    parts.append(struct.pack("<I", len(target.references)))
    parts += [_pack_reference(ref) for ref in target.references]
    return b"".join(parts)


def _pack_records(metadata: PatchMetadata) -> bytes:
    """The records of format 3, in canonical order: private units,
    references, labels; then (version 4) the targets after the first."""
    records = [_record(RECORD_PRIVATE, _pack_private(unit)) for unit in metadata.private_units]
    records += [_record(RECORD_REFERENCE, _pack_reference(ref)) for ref in metadata.references]
    records += [_record(RECORD_LABEL, _pack_string(label)) for label in metadata.labels]
    records += [_record(RECORD_TARGET, _pack_target(target)) for target in metadata.more_targets]
    return struct.pack("<I", len(records)) + b"".join(records)


# --- validation shared by pack() and parse_patch() ---------------------------


def _problem(metadata: PatchMetadata) -> str | None:
    """What is wrong with ``metadata``, or None if it can be written and read."""
    checks = [
        (len(metadata.patch_id) == PATCH_ID_SIZE, "patch id is not 16 bytes"),
        (len(metadata.patch_so_sha256) == SHA256_SIZE, "patch .so hash is not 32 bytes"),
        (len(metadata.more_targets) < MAX_TARGETS, f"more than {MAX_TARGETS} target libraries"),
        (len(metadata.labels) <= MAX_LABELS, f"more than {MAX_LABELS} labels"),
        (len(metadata.requires) <= MAX_REQUIRES, f"more than {MAX_REQUIRES} requires"),
    ]
    for ok, message in checks:
        if not ok:
            return message
    problems = (_target_problem(target, f"target {number} " if number else "")
                for number, target in enumerate(metadata.targets))
    return (next((problem for problem in problems if problem), None)
            or _path_problem("patch .so path", metadata.patch_so_path)
            or _targets_problem(metadata.targets)
            or _labels_problem(metadata.labels)
            or _requires_problem(metadata.patch_id, metadata.requires)
            or _id_problem(metadata))


def _target_problem(target: Target, prefix: str) -> str | None:
    """What is wrong with one target library's fields; ``prefix`` names it
    in the message (empty for the first: the messages of version 3)."""
    checks = [
        (len(target.identity) == IDENTITY_SIZE, "target identity is not 32 bytes"),
        (len(target.build_id) <= MAX_BUILD_ID, "target build-id longer than 20 bytes"),
        (0 <= target.layout_version <= 0xFFFF_FFFF, "layout version out of range"),
        (len(target.units) <= MAX_UNITS, f"more than {MAX_UNITS} units"),
        (len(target.private_units) <= MAX_UNITS, f"more than {MAX_UNITS} private units"),
        (len(target.units) + len(target.private_units) >= 1, "the patch replaces nothing"),
        (len(target.references) <= MAX_UNITS, f"more than {MAX_UNITS} references"),
    ]
    problem = next((message for ok, message in checks if not ok), None)
    problem = (problem or _path_problem("target path", target.path)
               or _units_problem(target.units)
               or _private_problem(target.units, target.private_units))
    return prefix + problem if problem else None


def _targets_problem(targets: tuple[Target, ...]) -> str | None:
    """Across the targets: each library once, each patch variable filled once."""
    identities = [target.identity for target in targets]
    if len(set(identities)) != len(identities):
        return "a target library is named twice (the same identity)"
    return _references_problem(tuple(ref for target in targets for ref in target.references))


def _id_problem(metadata: PatchMetadata) -> str | None:
    expected = content_id(metadata)
    if metadata.patch_id != expected:
        return (f"patch id {metadata.patch_id.hex()} does not match its content "
                f"(which gives {expected.hex()})")
    return None


def _string_problem(what: str, text: str) -> str | None:
    if not text:
        return f"{what} is empty"
    if "\0" in text:
        return f"{what} contains a NUL character"
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return f"{what} is not valid UTF-8"
    if size > MAX_STRING:
        return f"{what} is longer than {MAX_STRING} bytes"
    return None


def _path_problem(what: str, path: str) -> str | None:
    problem = _string_problem(what, path)
    if problem is None and not path.startswith("/"):
        problem = f"{what} is not absolute: {path!r}"
    return problem


def _units_problem(units: tuple[Unit, ...]) -> str | None:
    seen_indexes: set[int] = set()
    seen_names: set[str] = set()
    for number, unit in enumerate(units):
        problem = (_string_problem(f"unit {number} old name", unit.old_name)
                   or _string_problem(f"unit {number} new name", unit.new_name))
        if problem is not None:
            return problem
        if not 0 <= unit.index <= 0xFFFF_FFFF:
            return f"unit {number} function index out of range"
        if unit.index in seen_indexes or unit.old_name in seen_names:
            return f"unit {number} replaces function {unit.old_name} a second time"
        seen_indexes.add(unit.index)
        seen_names.add(unit.old_name)
    return None


INT64 = range(-(1 << 63), 1 << 63)


def _private_problem(units: tuple[Unit, ...],
                     private_units: tuple[PrivateUnit, ...]) -> str | None:
    seen_entries: set[int] = set()
    seen_names = {unit.old_name for unit in units}
    for number, unit in enumerate(private_units):
        problem = (_string_problem(f"private unit {number} old name", unit.old_name)
                   or _string_problem(f"private unit {number} new name", unit.new_name))
        if problem is not None:
            return problem
        if unit.entry_delta not in INT64 or unit.flags not in (0, FLAG_ENDBR64):
            return f"private unit {number} entry or flags out of range"
        if unit.entry_delta in seen_entries or unit.old_name in seen_names:
            return f"private unit {number} replaces function {unit.old_name} a second time"
        seen_entries.add(unit.entry_delta)
        seen_names.add(unit.old_name)
    return None


def _references_problem(references: tuple[Reference, ...]) -> str | None:
    seen: set[str] = set()
    for number, ref in enumerate(references):
        problem = (_string_problem(f"reference {number} target name", ref.target_name)
                   or _string_problem(f"reference {number} variable name", ref.ref_name))
        if problem is not None:
            return problem
        if ref.kind not in (REF_ADDRESS, REF_TLS) or ref.delta not in INT64 \
                or (ref.kind == REF_TLS and ref.delta < 0):
            return f"reference {number} kind or offset out of range"
        if ref.ref_name in seen:
            return f"reference {number} fills {ref.ref_name} a second time"
        seen.add(ref.ref_name)
    return None


def _labels_problem(labels: tuple[str, ...]) -> str | None:
    for number, label in enumerate(labels):
        problem = _string_problem(f"label {number}", label)
        if problem is not None:
            return problem
        if not label.isprintable():
            return f"label {number} has an unprintable character"
    return None


def _requires_problem(patch_id: bytes, requires: tuple[bytes, ...]) -> str | None:
    if any(len(required) != PATCH_ID_SIZE for required in requires):
        return "a required patch id is not 16 bytes"
    if len(set(requires)) != len(requires):
        return "a required patch is listed twice"
    if patch_id in requires:
        return "the patch requires itself"
    return None


# --- parsing -----------------------------------------------------------------


class _Malformed(Exception):
    """Internal: why the bytes are not a valid patch file."""


class _Reader:
    """Bounds-checked reads from the payload, with a cursor."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, size: int, what: str) -> bytes:
        end = self.offset + size
        if size < 0 or end > len(self.data):
            raise _Malformed(f"payload truncated in {what} (offset {self.offset})")
        chunk = self.data[self.offset:end]
        self.offset = end
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return struct.unpack("<H", self.take(2, what))[0]

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def i64(self, what: str) -> int:
        return struct.unpack("<q", self.take(8, what))[0]

    def count(self, what: str, limit: int) -> int:
        value = self.u32(what)
        if value > limit:
            raise _Malformed(f"{what} {value} exceeds the limit of {limit}")
        return value

    def string(self, what: str) -> str:
        size = self.u16(f"length of {what}")
        if size > MAX_STRING:
            raise _Malformed(f"{what} is longer than {MAX_STRING} bytes")
        raw = self.take(size, what)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Malformed(f"{what} is not valid UTF-8") from None
        if "\0" in text:
            raise _Malformed(f"{what} contains a NUL character")
        return text

    def finish(self) -> None:
        if self.offset != len(self.data):
            extra = len(self.data) - self.offset
            raise _Malformed(f"payload has {extra} unexpected trailing bytes")


def _parse(data: bytes) -> PatchMetadata:
    payload, flags, version = _check_header(data)
    reader = _Reader(payload)
    patch_id = reader.take(PATCH_ID_SIZE, "patch id")
    target_identity = reader.take(IDENTITY_SIZE, "target identity")
    build_id = _read_build_id(reader, "")
    layout_version = reader.u32("layout version")
    patch_so_sha256 = reader.take(SHA256_SIZE, "patch .so hash")
    target_path = reader.string("target path")
    patch_so_path = reader.string("patch .so path")
    units = _read_units(reader, "")
    requires = tuple(reader.take(PATCH_ID_SIZE, f"required patch id {number}")
                     for number in range(reader.count("requires count", MAX_REQUIRES)))
    records = _read_records(reader)
    reader.finish()
    more_targets = tuple(records[RECORD_TARGET])
    if bool(more_targets) != (version == MULTI_TARGET_VERSION):
        count = 1 + len(more_targets)
        raise _Malformed(f"record version {version} with {count} target "
                         f"{'library' if count == 1 else 'libraries'} (version "
                         f"{FORMAT_VERSION} has one, {MULTI_TARGET_VERSION} several)")
    metadata = PatchMetadata(
        patch_id=patch_id,
        reverse=bool(flags & FLAG_REVERSE),
        target_path=target_path,
        target_identity=target_identity,
        target_build_id=build_id,
        layout_version=layout_version,
        patch_so_path=patch_so_path,
        patch_so_sha256=patch_so_sha256,
        units=units,
        requires=requires,
        private_units=tuple(records[RECORD_PRIVATE]),
        references=tuple(records[RECORD_REFERENCE]),
        labels=tuple(records[RECORD_LABEL]),
        more_targets=more_targets,
    )
    problem = _problem(metadata)
    if problem is not None:
        raise _Malformed(problem)
    return metadata


def _read_build_id(reader: _Reader, prefix: str) -> bytes:
    size = reader.u8(f"{prefix}build-id length")
    field = reader.take(MAX_BUILD_ID, f"{prefix}build-id")
    if size > MAX_BUILD_ID:
        raise _Malformed(f"{prefix}build-id length {size} exceeds {MAX_BUILD_ID}")
    if any(field[size:]):
        raise _Malformed(f"{prefix}build-id padding is not zero")
    return field[:size]


def _read_units(reader: _Reader, prefix: str) -> tuple[Unit, ...]:
    return tuple(_read_unit(reader, f"{prefix}unit {number}")
                 for number in range(reader.count(f"{prefix}unit count", MAX_UNITS)))


def _read_unit(reader: _Reader, what: str) -> Unit:
    index = reader.u32(f"{what} function index")
    old_name = reader.string(f"{what} old name")
    new_name = reader.string(f"{what} new name")
    return Unit(index, old_name, new_name)


def _read_private(body: _Reader, what: str) -> PrivateUnit:
    delta, flags = body.i64(f"{what} entry"), body.u32(f"{what} flags")
    return PrivateUnit(delta, flags, body.string(f"{what} old name"),
                       body.string(f"{what} new name"))


def _read_reference(body: _Reader, what: str) -> Reference:
    ref_kind, delta = body.u32(f"{what} reference kind"), body.i64(f"{what} offset")
    return Reference(ref_kind, delta, body.string(f"{what} target name"),
                     body.string(f"{what} variable name"))


def _read_target(body: _Reader, what: str) -> Target:
    identity = body.take(IDENTITY_SIZE, f"{what} identity")
    build_id = _read_build_id(body, f"{what} ")
    layout_version = body.u32(f"{what} layout version")
    path = body.string(f"{what} path")
    units = _read_units(body, f"{what} ")
    privates = tuple(_read_private(body, f"{what} private unit {number}") for number in
                     range(body.count(f"{what} private unit count", MAX_UNITS)))
    references = tuple(_read_reference(body, f"{what} reference {number}") for number in
                       range(body.count(f"{what} reference count", MAX_UNITS)))
    return Target(path, identity, build_id, layout_version, units, privates, references)


def _read_records(reader: _Reader) -> dict[int, list]:
    """The records of format 3 (and TARGET, version 4), by kind; each must
    fill its length exactly, and kinds come in canonical order (so a file
    packs back to its bytes)."""
    records: dict[int, list] = {RECORD_PRIVATE: [], RECORD_REFERENCE: [], RECORD_LABEL: [],
                                RECORD_TARGET: []}
    last_kind = 0
    for number in range(reader.count("record count", MAX_RECORDS)):
        kind = reader.u16(f"record {number} kind")
        body = _Reader(reader.take(reader.u32(f"record {number} length"), f"record {number}"))
        if kind not in records:
            raise _Malformed(f"record {number} has unknown kind {kind}")
        if kind < last_kind:
            raise _Malformed(f"record {number} (kind {kind}) is out of order")
        last_kind = kind
        what = f"record {number}"
        if kind == RECORD_PRIVATE:
            item: object = _read_private(body, what)
        elif kind == RECORD_REFERENCE:
            item = _read_reference(body, what)
        elif kind == RECORD_TARGET:
            item = _read_target(body, f"{what} target")
        else:
            item = body.string(f"{what} label")
        body.finish()
        records[kind].append(item)
    return records


def _check_header(data: bytes) -> tuple[bytes, int, int]:
    """Validate the header; return the payload, the flags and the version."""
    if not data:
        raise _Malformed("empty file, not a ulp patch file")
    if len(data) < HEADER_SIZE:
        if not data.startswith(MAGIC[: len(data)]):
            raise _Malformed("not a ulp patch file (bad magic)")
        raise _Malformed(f"truncated: {len(data)} bytes, the header alone is {HEADER_SIZE}")
    magic, version, flags, payload_size, checksum = struct.unpack_from(HEADER_FORMAT, data)
    if magic != MAGIC:
        raise _Malformed("not a ulp patch file (bad magic)")
    if version not in VERSIONS:
        raise _Malformed(f"unsupported format version {version} (this ulp reads "
                         f"{' and '.join(map(str, VERSIONS))})")
    if payload_size > MAX_PAYLOAD:
        raise _Malformed(f"payload length {payload_size} exceeds the limit of {MAX_PAYLOAD}")
    actual = len(data) - HEADER_SIZE
    if actual < payload_size:
        raise _Malformed(f"truncated: payload is {actual} bytes, the header says {payload_size}")
    if actual > payload_size:
        raise _Malformed(f"trailing garbage: {actual - payload_size} bytes after the payload")
    payload = data[HEADER_SIZE:]
    if _checksum(data[:CHECKED_HEADER_SIZE], payload) != checksum:
        raise _Malformed("corrupted: checksum mismatch")
    if flags & ~KNOWN_FLAGS:
        raise _Malformed(f"unknown flags {flags:#06x}")
    return payload, flags, version
