"""The runtime's SHA-256 (runtime/sha256.c), which checks every patch
object a process loads: both of its codes, the SHA extensions of x86 and
the portable one, against Python's hashlib, over lengths around every
block boundary and a patch object's size."""

from __future__ import annotations

import hashlib
import random
import subprocess
from pathlib import Path

import pytest

from support import C_DIR, ROOT, cc

LENGTHS = [0, 1, 3, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 1000, 4096, 15024, 65537]


def cpu_has_sha_ni() -> bool:
    return any(line.startswith("flags") and " sha_ni" in line
               for line in Path("/proc/cpuinfo").read_text().splitlines())


@pytest.fixture(scope="module")
def checker(build_dir: Path) -> Path:
    return cc(build_dir / "sha256_check", [C_DIR / "sha256_check.c", ROOT / "runtime" / "sha256.c"],
              f"-I{ROOT / 'runtime'}", "-D_GNU_SOURCE", "-Werror", "-Wextra")


@pytest.mark.parametrize("code", ["native", "portable"])
def test_the_runtime_hashes_as_hashlib_does(checker: Path, code: str) -> None:
    expected_code = "sha-ni" if code == "native" and cpu_has_sha_ni() else "portable"
    generator = random.Random(11)
    for length in LENGTHS:
        data = bytes(generator.getrandbits(8) for _ in range(length))
        done = subprocess.run([checker, *([code] if code == "portable" else [])], input=data,
                              capture_output=True, timeout=60, check=True)
        digest, ran = done.stdout.decode().split()
        assert ran == expected_code
        assert digest == hashlib.sha256(data).hexdigest(), length
