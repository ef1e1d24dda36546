"""ulp-prepare on libraries of every size, and on libraries as they are installed (issue 9 item 7).

Generated libraries of N functions (``bench/prepare_speed.py``) are prepared
and then called, function by function through ``dlsym``, by a real process
with and without the runtime.  LIEF's program-header relocation used to
refuse some sizes (100-110 and 1,000 functions, while 120 and 1,500 worked):
``toolchain/elfedit.widen_address_gap`` explains why and what changed.  The
suite runs a slice of sizes around the ones that failed; ``make fuzz``
sweeps 1..2000 (``ULP_PREPARE_SIZES=start:stop:step``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path

import lief
import pytest
from test_prepare import MOVED_SECTIONS, gdb, one_line_refusal, sections

from support import ROOT, RUNTIME, cc, tool
from ulp.errors import ExitCode
from ulp.prepared import PreparedLibrary

_SPEC = importlib.util.spec_from_file_location("prepare_speed",
                                               ROOT / "bench" / "prepare_speed.py")
prepare_speed = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(prepare_speed)

#: sizes that were refused (100-110, 1000), sizes that worked, and the edges
SLICE = (1, 2, 99, 100, 105, 110, 120, 1000, 1500)


def _sizes() -> tuple[int, ...]:
    sweep = os.environ.get("ULP_PREPARE_SIZES")
    if not sweep:
        return SLICE
    start, stop, step = (int(part) for part in sweep.split(":"))
    return tuple(sorted(set(range(start, stop + 1, step)) | set(SLICE)))


LOADER_SOURCE = r"""
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

/* dlopen argv[1] and call f0 .. f(argv[2]-1) with 3 each through dlsym. */
int main(int argc, char **argv) {
    if (argc != 3) return 64;
    void *library = dlopen(argv[1], RTLD_NOW);
    if (!library) { fprintf(stderr, "%s\n", dlerror()); return 1; }
    long count = atol(argv[2]), sum = 0;
    for (long i = 0; i < count; i++) {
        char name[32];
        snprintf(name, sizeof name, "f%ld", i);
        int (*function)(int) = (int (*)(int))dlsym(library, name);
        if (!function) { fprintf(stderr, "no %s\n", name); return 2; }
        sum += function(3);
    }
    printf("%ld\n", sum);
    return 0;
}
"""


def expected_sum(count: int) -> int:
    """What the loader prints for a generated library (f{i}(x) = x * i + i % 7)."""
    return sum(3 * i + i % 7 for i in range(count))


@pytest.fixture(scope="module")
def loader(build_dir: Path) -> Path:
    source = build_dir / "prep_loader.c"
    source.write_text(LOADER_SOURCE)
    return cc(build_dir / "prep_loader", [source], "-ldl")


def call_every_function(loader: Path, library: Path, count: int, runtime: bool) -> int:
    env = {key: value for key, value in os.environ.items() if key != "LD_PRELOAD"}
    if runtime:
        env["LD_PRELOAD"] = str(RUNTIME)
    result = subprocess.run([str(loader), str(library.resolve()), str(count)], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def lief_finds_a_gap(library: Path) -> bool:
    binary = lief.ELF.parse(str(library))
    return binary.relocate_phdr_table(lief.ELF.Binary.PHDR_RELOC.SEGMENT_GAP) != 0


@pytest.mark.parametrize("count", _sizes())
def test_a_library_of_every_size_prepares_and_runs(count, loader, tmp_path):
    original = prepare_speed.generate_library(tmp_path, count)
    prepared = tmp_path / "prepared.so"
    result = tool("ulp-prepare", original, "-o", prepared)
    assert result.returncode == 0, result.stderr
    assert len(PreparedLibrary.open(str(prepared)).functions) == count
    before, after = sections(original), sections(prepared)
    for name, (address, _type) in before.items():
        if name not in MOVED_SECTIONS:
            assert after[name][0] == address, name
    for runtime in (False, True):
        assert call_every_function(loader, prepared, count, runtime) == expected_sum(count)


@pytest.mark.parametrize("flags", [(), ("-fcf-protection",)], ids=["plain", "cet"])
def test_a_library_lief_finds_no_gap_in_keeps_its_addresses_and_lines(flags, loader, tmp_path):
    count = 105
    original = prepare_speed.generate_library(tmp_path, count, *flags)
    # The case this test is about: LIEF alone refuses this file.
    assert not lief_finds_a_gap(original)
    prepared = tmp_path / "prepared.so"
    result = tool("ulp-prepare", original, "-o", prepared)
    assert result.returncode == 0, result.stderr
    for function in ("f0", f"f{count - 1}"):
        command = f"info line {function}"
        assert gdb(prepared, command) == gdb(original, command).replace(str(original),
                                                                        str(prepared))
    assert call_every_function(loader, prepared, count, runtime=True) == expected_sum(count)


def test_a_library_without_any_usable_gap_is_refused_with_advice(tmp_path):
    original = prepare_speed.generate_library(
        tmp_path, 3, "-Wl,-z,max-page-size=0x10,-z,common-page-size=0x10")
    before = original.read_bytes()
    line = one_line_refusal(tool("ulp-prepare", original), ExitCode.NOT_PATCHABLE)
    assert "no gap between its segments" in line and "relink it" in line
    assert original.read_bytes() == before


# -- installed libraries: symbolic link chains ---------------------------------------------


@pytest.fixture
def installed(tmp_path: Path) -> dict[str, Path]:
    """libgen.so -> libgen.so.1 -> libgen.so.1.2.3, as a package installs a library."""
    real = prepare_speed.generate_library(tmp_path, 4, name="gen")
    real = real.rename(tmp_path / "libgen.so.1.2.3")
    (tmp_path / "libgen.so.1").symlink_to("libgen.so.1.2.3")
    (tmp_path / "libgen.so").symlink_to("libgen.so.1")
    return {"dev": tmp_path / "libgen.so", "soname": tmp_path / "libgen.so.1", "real": real}


def _links_unchanged(installed: dict[str, Path]) -> None:
    assert os.readlink(installed["dev"]) == "libgen.so.1"
    assert os.readlink(installed["soname"]) == "libgen.so.1.2.3"
    assert not installed["real"].is_symlink()


def test_in_place_through_links_prepares_the_real_file_and_keeps_the_links(installed, loader):
    result = tool("ulp-prepare", installed["dev"])
    assert result.returncode == 0, result.stderr
    assert str(installed["real"]) in result.stdout
    _links_unchanged(installed)
    assert len(PreparedLibrary.open(str(installed["real"])).functions) == 4
    assert call_every_function(loader, installed["soname"], 4, runtime=True) == expected_sum(4)
    again = tool("ulp-prepare", installed["soname"])
    assert again.returncode == 0 and "already prepared" in again.stdout
    _links_unchanged(installed)


def test_output_through_a_link_writes_the_file_it_leads_to(installed, tmp_path):
    elsewhere = tmp_path / "build"
    elsewhere.mkdir()
    fresh = prepare_speed.generate_library(elsewhere, 4, name="gen")
    before = installed["real"].read_bytes()
    result = tool("ulp-prepare", fresh, "-o", installed["soname"])
    assert result.returncode == 0, result.stderr
    _links_unchanged(installed)
    assert installed["real"].read_bytes() != before
    assert PreparedLibrary.open(str(installed["real"])).functions
    assert b".ulp.data" not in fresh.read_bytes()  # the input is left alone


def test_output_to_a_new_name_from_a_link_reads_through_it(installed, tmp_path):
    out = tmp_path / "prepared.so"
    result = tool("ulp-prepare", installed["dev"], "-o", out)
    assert result.returncode == 0, result.stderr
    assert not out.is_symlink()
    assert len(PreparedLibrary.open(str(out)).functions) == 4
    _links_unchanged(installed)
    assert b".ulp.data" not in installed["real"].read_bytes()
