"""The patch file (ulp/patchfile.py, format version 3): one artifact carrying
its metadata record and its patch .so; round trips and hostile input."""

from __future__ import annotations

import hashlib
import os
import random
import struct

import pytest
from test_metadata import rejected as rejected_by_parser
from test_metadata import sample

from support import rechecksummed_patch
from ulp import metadata as md
from ulp import patchfile as pf
from ulp.errors import ExitCode, UlpError

OBJECT = b"\x7fELF" + bytes(range(256)) * 4  # stands for a patch .so: only its hash matters here


def forward() -> pf.PatchFile:
    return pf.PatchFile(sample(patch_so_sha256=hashlib.sha256(OBJECT).digest()), OBJECT)


def rejected(data: bytes) -> str:
    return rejected_by_parser(data, pf.parse_patch_file)


def test_round_trip_carries_the_object_and_the_reverse_carries_none():
    patch = forward()
    data = patch.pack()
    assert data[:8] == b"ULPPATCH" and struct.unpack_from("<H", data, 8)[0] == 3
    assert data.endswith(OBJECT)
    assert pf.parse_patch_file(data) == patch
    reverse = patch.reversed()
    assert reverse.patch_object == b"" and reverse.metadata == patch.metadata.reversed()
    assert pf.parse_patch_file(reverse.pack()) == reverse


def test_packing_is_a_function_of_the_content():
    assert forward().pack() == forward().pack()


def test_write_and_read(tmp_path):
    path = tmp_path / "p.ulp"
    path.write_bytes(b"old contents")
    os.umask(0o077)
    try:
        pf.write_patch_file(str(path), forward())
    finally:
        os.umask(0o022)
    assert pf.read_patch_file(str(path)) == forward()
    assert pf.read_patch(str(path)) == forward().metadata
    assert os.listdir(tmp_path) == ["p.ulp"]  # no temporary file left behind
    assert path.stat().st_mode & 0o777 == 0o644  # whatever the umask


def test_read_missing_file_or_directory(tmp_path):
    for path, words in ((tmp_path / "absent.ulp", "absent.ulp: no such file"),
                        (tmp_path, "is a directory")):
        with pytest.raises(UlpError) as caught:
            pf.read_patch_file(str(path))
        assert caught.value.exit_code == ExitCode.FILE_MISSING
        assert words in str(caught.value)


def test_write_into_missing_directory(tmp_path):
    with pytest.raises(UlpError) as caught:
        pf.write_patch_file(str(tmp_path / "no" / "p.ulp"), forward())
    assert caught.value.exit_code == ExitCode.FILE_MISSING


def test_a_file_of_an_earlier_format_gets_one_line_saying_so():
    for version in (1, 2):
        old = bytearray(forward().metadata.pack())  # version 2 was the bare record
        struct.pack_into("<H", old, 8, version)
        message = rejected(bytes(old))
        assert f"patch format version {version}" in message
        assert "does not carry its patch object: pack it again" in message


@pytest.mark.parametrize("kind, words", [
    ("empty", "empty file"),
    ("magic", "bad magic"),
    ("version", "unsupported format version 4"),
    ("truncated header", "truncated"),
    ("truncated object", "truncated"),
    ("trailing", "trailing garbage"),
    ("checksum", "checksum mismatch"),
    ("flags", "unknown flags"),
    ("record length", "exceeds the limit"),
    ("object length", "exceeds the limit"),
])
def test_damaged_files(kind, words):
    data = bytearray(forward().pack())
    if kind == "empty":
        data = bytearray()
    elif kind == "magic":
        data[0:8] = b"ULPLIB\0\1"
    elif kind == "version":
        struct.pack_into("<H", data, 8, 4)
    elif kind == "truncated header":
        del data[30:]
    elif kind == "truncated object":
        del data[-1:]
    elif kind == "trailing":
        data += b"\0"
    elif kind == "checksum":
        data[pf.HEADER_SIZE + md.HEADER_SIZE] ^= 1  # the record's first payload byte
    elif kind == "flags":
        struct.pack_into("<H", data, 10, 0x8000)
        data = bytearray(rechecksummed_patch(bytes(data)))
    elif kind == "record length":
        struct.pack_into("<I", data, 12, pf.MAX_RECORD + 1)
    elif kind == "object length":
        struct.pack_into("<Q", data, 16, pf.MAX_OBJECT + 1)
    assert words in rejected(bytes(data))


def test_the_object_must_be_the_one_the_metadata_names():
    data = bytearray(forward().pack())
    data[-1] ^= 1  # the header's checksum does not cover the object: its hash does
    assert "not the one the metadata names (SHA-256 mismatch)" in rejected(bytes(data))


def test_a_forward_patch_without_object_and_a_reverse_one_with_one_are_refused():
    record = forward().metadata.pack()
    reverse_record = forward().metadata.reversed().pack()
    for record_bytes, patch_object, words in ((record, b"", "the patch object is missing"),
                                              (reverse_record, OBJECT, "carries no patch object")):
        header = struct.pack("<8sHHIQ", pf.MAGIC, pf.FORMAT_VERSION, 0, len(record_bytes),
                             len(patch_object))
        data = rechecksummed_patch(header + bytes(32) + record_bytes + patch_object)
        assert words in rejected(data)
    with pytest.raises(ValueError):
        pf.PatchFile(forward().metadata, b"").pack()


def test_mutated_files_never_raise_anything_but_a_one_line_bad_input():
    rng = random.Random(9)
    data = forward().pack()
    outcomes = {"refused": 0, "accepted": 0}
    for _ in range(4000):
        mutated = bytearray(data)
        kind = rng.randrange(4)
        if kind == 0:
            del mutated[rng.randrange(len(mutated)):]
        elif kind == 1:
            position = rng.choice([8, 10, 12, 16, 56 + 8, 56 + 12])
            mutated[position] = rng.getrandbits(8)
        else:
            for _ in range(rng.randint(1, 3)):
                mutated[rng.randrange(len(mutated))] ^= 1 << rng.randrange(8)
        candidate = bytes(mutated)
        if rng.random() < 0.5:
            candidate = rechecksummed_patch(candidate)
        try:
            pf.parse_patch_file(candidate, "x.ulp")
            outcomes["accepted"] += 1
        except UlpError as error:
            assert error.exit_code == ExitCode.BAD_INPUT
            assert "\n" not in str(error)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 3500, outcomes
