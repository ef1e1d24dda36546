"""The patch metadata format (ulp/metadata.py): round trips and hostile input."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
import struct

import pytest

from ulp import metadata as md
from ulp.errors import ExitCode, UlpError


def sample(**changes) -> md.PatchMetadata:
    """A valid patch; its id derived from its content unless ``patch_id`` is given."""
    fields = dict(
        reverse=False,
        target_path="/opt/lib/libfoo.so",
        target_identity=hashlib.sha256(b"libfoo").digest(),
        target_build_id=bytes.fromhex("0123456789abcdef0123456789abcdef01234567"),
        layout_version=1,
        patch_so_path="/opt/patches/libfoo_fix.so",
        patch_so_sha256=hashlib.sha256(b"libfoo_fix").digest(),
        units=(md.Unit(3, "foo", "foo_fixed"), md.Unit(0, "bar", "bar_fixed")),
        requires=(b"\xaa" * 16,),
    )
    fields.update(changes)
    if "patch_id" not in fields:
        try:
            fields["patch_id"] = md.make_patch_id(fields["patch_so_sha256"],
                                                  fields["target_identity"], fields["units"],
                                                  fields["requires"])
        except (struct.error, UnicodeEncodeError):
            fields["patch_id"] = bytes(16)  # fields pack() refuses anyway
    return md.PatchMetadata(**fields)


def seal(payload: bytes, version: int = md.FORMAT_VERSION, flags: int = 0,
         length: int | None = None) -> bytes:
    """A file around ``payload`` with a correct checksum."""
    checked = struct.pack("<8sHHI", md.MAGIC, version, flags,
                          len(payload) if length is None else length)
    return checked + hashlib.sha256(checked + payload).digest() + payload


def payload_of(data: bytes) -> bytes:
    return data[md.HEADER_SIZE:]


def rejected(data: bytes, parse=md.parse_patch) -> str:
    """The one-line BAD_INPUT message ``parse`` refuses ``data`` with."""
    with pytest.raises(UlpError) as caught:
        parse(data, "x.ulp")
    assert caught.value.exit_code == ExitCode.BAD_INPUT
    message = str(caught.value)
    assert message.startswith("x.ulp: ") and "\n" not in message
    return message


# --- round trips --------------------------------------------------------------


def test_round_trip():
    metadata = sample()
    data = metadata.pack()
    assert data.startswith(b"ULPPATCH")
    assert md.parse_patch(data) == metadata


def test_round_trip_edge_values():
    metadata = sample(target_build_id=b"", requires=(), layout_version=0xFFFF_FFFF,
                      target_path="/" + "é" * 2047,
                      units=tuple(md.Unit(i, f"f{i}", f"g{i}") for i in range(300)))
    assert md.parse_patch(metadata.pack()) == metadata


def test_reversed_differs_only_in_direction():
    metadata = sample()
    reverse = metadata.reversed()
    assert reverse.reverse and not metadata.reverse
    assert reverse.patch_id == metadata.patch_id and reverse.units == metadata.units
    parsed = md.parse_patch(reverse.pack())
    assert parsed == reverse
    assert parsed.reverse


def test_patch_id_hex():
    metadata = sample()
    assert metadata.patch_id_hex == metadata.patch_id.hex() and len(metadata.patch_id_hex) == 32


def test_make_patch_id_is_deterministic_and_covers_its_inputs():
    so_hash, identity = b"\x01" * 32, b"\x02" * 32
    units = (md.Unit(1, "foo", "foo_fixed"),)
    first = md.make_patch_id(so_hash, identity, units)
    assert len(first) == 16
    assert md.make_patch_id(so_hash, identity, list(units)) == first
    others = {
        md.make_patch_id(b"\x03" * 32, identity, units),
        md.make_patch_id(so_hash, b"\x03" * 32, units),
        md.make_patch_id(so_hash, identity, (md.Unit(2, "foo", "foo_fixed"),)),
        md.make_patch_id(so_hash, identity, (md.Unit(1, "foo", "foo_fixed2"),)),
        md.make_patch_id(so_hash, identity, units + (md.Unit(2, "bar", "bar_fixed"),)),
        md.make_patch_id(so_hash, identity, units, (b"\x04" * 16,)),
        md.make_patch_id(so_hash, identity, units, (b"\x04" * 16, b"\x05" * 16)),
    }
    assert first not in others and len(others) == 7


def test_id_that_does_not_match_the_content_is_refused():
    """Issue 7: a re-checksummed file with a new id, or with the id of another
    patch, does not parse; neither does a file whose content changed under
    its id."""
    metadata = sample()
    other_id = sample(units=(md.Unit(0, "bar", "bar_fixed"),)).patch_id
    for forged in (b"\x42" * 16, other_id):
        payload = bytearray(payload_of(metadata.pack()))
        payload[:16] = forged
        assert "does not match its content" in rejected(seal(bytes(payload)))
    changed = sample(patch_id=metadata.patch_id, requires=())
    assert "does not match its content" in rejected(seal(md._pack_payload(changed)))
    with pytest.raises(ValueError, match="does not match its content"):
        sample(patch_id=b"\x42" * 16).pack()


@pytest.mark.parametrize("changes", [
    dict(patch_id=b"short"),
    dict(target_identity=b"\0" * 31),
    dict(target_build_id=b"\0" * 21),
    dict(patch_so_sha256=b""),
    dict(units=()),
    dict(units=(md.Unit(1, "foo", "a"), md.Unit(1, "bar", "b"))),
    dict(units=(md.Unit(1, "foo", "a"), md.Unit(2, "foo", "b"))),
    dict(units=(md.Unit(1, "fo\0o", "a"),)),
    dict(units=(md.Unit(-1, "foo", "a"),)),
    dict(target_path="relative/libfoo.so"),
    dict(patch_so_path="/" + "x" * 4096),
    dict(requires=(b"\1" * 16, b"\1" * 16)),
    dict(patch_id=bytes(range(16))),
    dict(requires=tuple(i.to_bytes(16, "little") for i in range(100, 357))),
])
def test_pack_refuses_what_parse_would_refuse(changes):
    with pytest.raises(ValueError):
        sample(**changes).pack()


# --- specific rejections ------------------------------------------------------


def test_empty_file():
    assert "empty file" in rejected(b"")


def test_truncated_header():
    data = sample().pack()
    assert "truncated" in rejected(data[:20])


def test_short_garbage_is_not_a_patch():
    assert "not a ulp patch file" in rejected(b"\x7fELF")


def test_wrong_magic():
    data = bytearray(sample().pack())
    data[0:8] = b"ULPLIB\0\1"
    assert "not a ulp patch file (bad magic)" in rejected(bytes(data))


def test_wrong_version():
    payload = payload_of(sample().pack())
    version = max(md.VERSIONS) + 1
    assert f"unsupported format version {version}" in rejected(seal(payload, version=version))


def test_truncated_payload():
    data = sample().pack()
    message = rejected(data[:-1])
    assert "truncated" in message and "the header says" in message


def test_trailing_garbage():
    assert "trailing garbage: 3 bytes" in rejected(sample().pack() + b"xyz")


def test_corrupted_payload():
    data = bytearray(sample().pack())
    data[-20] ^= 0x10
    assert "corrupted: checksum mismatch" in rejected(bytes(data))


def test_flipped_reverse_flag_is_detected():
    data = bytearray(sample().pack())
    data[10] ^= md.FLAG_REVERSE  # the flags are covered by the checksum too
    assert "checksum mismatch" in rejected(bytes(data))


def test_unknown_flags():
    assert "unknown flags 0x0002" in rejected(seal(payload_of(sample().pack()), flags=2))


def test_huge_payload_length():
    assert "exceeds the limit" in rejected(seal(b"", length=0xFFFF_FFFF))


def test_payload_truncated_inside_a_field():
    assert "payload truncated in target identity" in rejected(seal(b"\0" * 20))


def test_trailing_bytes_inside_payload():
    assert "unexpected trailing bytes" in rejected(seal(payload_of(sample().pack()) + b"\0"))


def fields_before_strings(build_id_size: int = 0, build_id: bytes = b"") -> bytes:
    return (b"\1" * 16 + b"\2" * 32 + bytes([build_id_size]) + build_id.ljust(20, b"\0")
            + struct.pack("<I", 1) + b"\3" * 32)


def string(raw: bytes) -> bytes:
    return struct.pack("<H", len(raw)) + raw


def test_bad_build_id_length():
    assert "build-id length 21" in rejected(seal(fields_before_strings(21)))


def test_nonzero_build_id_padding():
    assert "padding" in rejected(seal(fields_before_strings(1, b"\1\1")))


def test_string_with_nul():
    payload = fields_before_strings() + string(b"/lib\0x.so")
    assert "target path contains a NUL" in rejected(seal(payload))


def test_string_not_utf8():
    payload = fields_before_strings() + string(b"/lib\xff.so")
    assert "target path is not valid UTF-8" in rejected(seal(payload))


def test_string_too_long():
    payload = fields_before_strings() + string(b"/" * 5000)
    assert "longer than 4096" in rejected(seal(payload))


def test_relative_path():
    payload = fields_before_strings() + string(b"lib.so") + string(b"/fix.so")
    payload += struct.pack("<II", 1, 0) + string(b"foo") + string(b"foo_fixed")
    payload += struct.pack("<II", 0, 0)  # no requirements, no records
    assert "target path is not absolute" in rejected(seal(payload))


def test_too_many_units():
    payload = fields_before_strings() + string(b"/lib.so") + string(b"/fix.so")
    payload += struct.pack("<I", 70000)
    assert "unit count 70000 exceeds the limit of 65536" in rejected(seal(payload))


def test_unit_count_larger_than_the_data():
    payload = fields_before_strings() + string(b"/lib.so") + string(b"/fix.so")
    payload += struct.pack("<I", 60000)
    assert "payload truncated in unit 0 function index" in rejected(seal(payload))


def test_no_units():
    payload = fields_before_strings() + string(b"/lib.so") + string(b"/fix.so")
    payload += struct.pack("<III", 0, 0, 0)
    assert "the patch replaces nothing" in rejected(seal(payload))


def test_duplicate_unit():
    metadata = sample()
    payload = bytearray(payload_of(metadata.pack()))
    # make the second unit's index equal to the first's (3)
    second = payload.index(b"\0\0\0\0\x03\0bar")
    payload[second] = 3
    assert "replaces function bar a second time" in rejected(seal(bytes(payload)))


def test_too_many_requires():
    payload = payload_of(sample(requires=()).pack())[:-8] + struct.pack("<I", 257)
    assert "requires count 257 exceeds the limit of 256" in rejected(seal(payload))


# --- fuzzing ------------------------------------------------------------------


def mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0:  # flip a few bits
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncate
        del data[rng.randrange(len(data)):]
    elif kind == 2:  # overwrite a run with random bytes
        start = rng.randrange(len(data))
        data[start:start + rng.randint(1, 8)] = rng.randbytes(rng.randint(1, 8))
    elif kind == 3:  # insert bytes
        at = rng.randrange(len(data) + 1)
        data[at:at] = rng.randbytes(rng.randint(1, 16))
    elif kind == 4:  # delete a run
        start = rng.randrange(len(data))
        del data[start:start + rng.randint(1, 16)]
    else:  # set a byte to an interesting value
        data[rng.randrange(len(data))] = rng.choice([0, 1, 0x7F, 0x80, 0xFF])
    return bytes(data)


def parses_or_is_rejected(data: bytes) -> md.PatchMetadata | None:
    try:
        return md.parse_patch(data, "fuzz.ulp")
    except UlpError as error:
        assert error.exit_code == ExitCode.BAD_INPUT, error
        return None


def test_fuzz_mutated_files():
    rng = random.Random(0x55AA)
    originals = [sample().pack(), sample().reversed().pack(),
                 sample(requires=(), target_build_id=b"").pack(), sample_v3().pack()]
    for round_number in range(3000):
        original = originals[round_number % len(originals)]
        data = mutate(original, rng)
        parsed = parses_or_is_rejected(data)
        if parsed is not None:
            assert data == original  # any change is caught by length, checksum or a field


def test_fuzz_mutated_payloads_with_valid_checksums():
    """Get past the checksum so that every field check is exercised."""
    rng = random.Random(0xC0FFEE)
    originals = [sample(), sample().reversed(), sample(requires=(), target_build_id=b""),
                 sample_v3()]
    accepted = 0
    for round_number in range(3000):
        original = originals[round_number % len(originals)]
        flags = md.FLAG_REVERSE if original.reverse else 0
        data = seal(mutate(payload_of(original.pack()), rng), flags=flags)
        parsed = parses_or_is_rejected(data)
        if parsed is not None:
            accepted += 1
            assert parsed.pack() == data  # the encoding is canonical
    assert accepted < 3000


def test_fuzz_random_bytes():
    rng = random.Random(7)
    for _ in range(1000):
        data = rng.randbytes(rng.randrange(200))
        if rng.random() < 0.5:
            data = md.MAGIC + data
        assert parses_or_is_rejected(data) is None


def test_errors_quoting_control_characters_stay_on_one_line(tmp_path) -> None:
    """A path from a damaged or hostile file may hold any character: the
    error still prints as one line, with the character escaped."""
    import subprocess
    import sys
    from pathlib import Path

    odd = tmp_path / "odd\rname\n.ulp"
    odd.write_bytes(b"not a patch")
    tool = Path(sys.executable).parent / "ulp-trigger"
    result = subprocess.run([str(tool), str(os.getpid()), str(odd)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 4, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "odd\\rname\\n.ulp" in result.stderr


# --- format 3 records: private units, references, labels ---------------------


def sample_v3(**changes) -> md.PatchMetadata:
    privates = (md.PrivateUnit(-0x3ee2, 0, "helper", "helper_fixed"),
                md.PrivateUnit(-0x3000, md.FLAG_ENDBR64, "other", "other_fixed"))
    references = (md.Reference(md.REF_ADDRESS, -0x20, "total", "total_ref"),
                  md.Reference(md.REF_TLS, 8, "calls", "calls_ref"))
    fields = dict(private_units=privates, references=references,
                  labels=("CVE-2026-0001", "second"))
    fields.update(changes)
    base = sample()
    units = fields.get("units", base.units)
    patch_id = md.make_patch_id(base.patch_so_sha256, base.target_identity, units,
                                base.requires, fields["private_units"], fields["references"])
    return dataclasses.replace(base, patch_id=patch_id, **fields)


def test_records_round_trip():
    metadata = sample_v3()
    data = metadata.pack()
    assert md.parse_patch(data) == metadata
    assert md.parse_patch(data).pack() == data
    assert metadata.replaced_names == ["foo", "bar", "helper", "other"]
    assert metadata.label == "CVE-2026-0001; second"


def test_private_units_alone_make_a_patch():
    metadata = sample_v3(units=())
    assert md.parse_patch(metadata.pack()) == metadata


def test_labels_do_not_change_the_id_but_references_do():
    assert sample_v3(labels=()).patch_id == sample_v3().patch_id
    assert sample_v3(references=()).patch_id != sample_v3().patch_id


def records_payload(records: list[tuple[int, bytes]]) -> bytes:
    payload = payload_of(sample(requires=()).pack())[:-4]  # drop the record count
    return payload + struct.pack("<I", len(records)) + b"".join(
        struct.pack("<HI", kind, len(body)) + body for kind, body in records)


def test_unknown_and_unordered_records_are_refused():
    label = string(b"x")
    assert "record 0 has unknown kind 9" in rejected(seal(records_payload([(9, b"")])))
    out_of_order = [(md.RECORD_LABEL, label), (md.RECORD_PRIVATE, b"")]
    assert "record 1 (kind 1) is out of order" in rejected(seal(records_payload(out_of_order)))
    assert "unexpected trailing bytes" in rejected(
        seal(records_payload([(md.RECORD_LABEL, label + b"z")])))


def test_bad_record_values_are_refused():
    unprintable = sample_v3(labels=("a\nb",))
    with pytest.raises(ValueError, match="unprintable"):
        unprintable.pack()
    with pytest.raises(ValueError, match="kind or offset"):
        sample_v3(references=(md.Reference(md.REF_TLS, -1, "calls", "c"),)).pack()
    twice = (md.PrivateUnit(1, 0, "a", "x"), md.PrivateUnit(1, 0, "b", "y"))
    with pytest.raises(ValueError, match="a second time"):
        sample_v3(private_units=twice).pack()


# --- record version 4: a patch of several target libraries --------------------


def other_target(**changes) -> md.Target:
    fields = dict(path="/opt/lib/libbar.so", identity=hashlib.sha256(b"libbar").digest(),
                  build_id=b"\x42" * 8, layout_version=1,
                  units=(md.Unit(1, "foo", "foo_in_bar"),),
                  private_units=(md.PrivateUnit(-0x100, 0, "helper", "bar_helper_fixed"),),
                  references=(md.Reference(md.REF_ADDRESS, 16, "state", "bar_state_ref"),))
    fields.update(changes)
    return md.Target(**fields)


def sample_v4(*targets: md.Target, **changes) -> md.PatchMetadata:
    """A patch of sample_v3()'s library and ``targets`` (other_target() by
    default), its id derived from its content."""
    metadata = dataclasses.replace(sample_v3(**changes), more_targets=targets or (other_target(),))
    return dataclasses.replace(metadata, patch_id=md.content_id(metadata))


def test_several_targets_round_trip_as_record_version_4():
    metadata = sample_v4()
    data = metadata.pack()
    assert struct.unpack_from("<H", data, 8)[0] == md.MULTI_TARGET_VERSION
    assert struct.unpack_from("<H", sample_v3().pack(), 8)[0] == md.FORMAT_VERSION
    assert md.parse_patch(data) == metadata and md.parse_patch(data).pack() == data
    assert metadata.replaced_names == ["libfoo.so:foo", "libfoo.so:bar", "libfoo.so:helper",
                                       "libfoo.so:other", "libbar.so:foo", "libbar.so:helper"]
    parts = metadata.parts()
    assert [part.target_path for part in parts] == ["/opt/lib/libfoo.so", "/opt/lib/libbar.so"]
    assert all(part.patch_id == metadata.patch_id and not part.more_targets for part in parts)
    assert parts[0].units == sample_v3().units and parts[1].units == other_target().units
    # the id: over the ids each part would have alone, in order
    assert md.part_id(parts[0]) == sample_v3().patch_id
    assert metadata.patch_id == md.make_group_id([md.part_id(part) for part in parts])
    assert sample_v4(other_target(), other_target(path="/x/libz.so", identity=b"\1" * 32)) \
        .patch_id != metadata.patch_id


def test_the_record_version_must_match_the_number_of_targets():
    v4_payload = payload_of(sample_v4().pack())
    assert "record version 3 with 2 target libraries" in rejected(seal(v4_payload))
    v3_payload = payload_of(sample_v3().pack())
    assert "record version 4 with 1 target library" in rejected(
        seal(v3_payload, version=md.MULTI_TARGET_VERSION))


def test_bad_targets_are_refused():
    changed = dataclasses.replace(sample_v4(), more_targets=(other_target(units=(
        md.Unit(2, "foo", "foo_in_bar"),)),))
    assert "does not match its content" in rejected(
        seal(_payload_unchecked(changed), version=md.MULTI_TARGET_VERSION))
    with pytest.raises(ValueError, match="named twice"):
        sample_v4(other_target(identity=sample().target_identity)).pack()
    with pytest.raises(ValueError, match="fills total_ref a second time"):
        sample_v4(other_target(references=(md.Reference(md.REF_ADDRESS, 0, "t", "total_ref"),))
                  ).pack()
    with pytest.raises(ValueError, match="target 1 the patch replaces nothing"):
        sample_v4(other_target(units=(), private_units=())).pack()
    with pytest.raises(ValueError, match="target 1 target path is not absolute"):
        sample_v4(other_target(path="libbar.so")).pack()
    many = tuple(other_target(identity=bytes([n]) * 32) for n in range(md.MAX_TARGETS))
    with pytest.raises(ValueError, match="more than 16 target libraries"):
        sample_v4(*many).pack()


def _payload_unchecked(metadata: md.PatchMetadata) -> bytes:
    """The payload ``pack()`` would write, without its checks."""
    return md._pack_payload(metadata)


def test_fuzz_mutated_payloads_of_several_targets():
    rng = random.Random(0xB0B)
    original = sample_v4()
    accepted = 0
    for _ in range(2000):
        data = seal(mutate(payload_of(original.pack()), rng), version=md.MULTI_TARGET_VERSION)
        parsed = parses_or_is_rejected(data)
        if parsed is not None:
            accepted += 1
            assert parsed.pack() == data
    assert accepted < 2000
