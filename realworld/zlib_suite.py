"""zlib from Debian's source package: build, prepare, its own tests three
ways, the inflateSync() fix under load, timings."""

from __future__ import annotations

import hashlib
from pathlib import Path

import rwlib
from rwlib import Failure, log, sh

PACKAGE, VERSION = "zlib", "1:1.2.13.dfsg-1"
SONAME, REAL = "libz.so.1", "libz.so.1.2.13"
WORK = rwlib.WORK / "zlib"
# A sample of functions for the gdb check: exported ones (which get a
# trampoline) and static ones (which keep their place).
GDB_SAMPLE = ["deflate", "deflateBound", "inflate", "inflateSync", "crc32", "adler32",
              "compress2", "uncompress", "gzread", "gzwrite", "deflate_stored",
              "deflate_slow", "longest_match", "syncsearch", "inflate_fast", "gz_look",
              "deflateStateCheck", "updatewindow", "send_tree", "build_tree"]
CORPUS_BYTES = 8 << 20


def build() -> Path:
    """Debian's zlib build (debian/rules: dpkg-buildflags, -O3, -D_REENTRANT,
    -DUNALIGNED_OK on amd64, ./configure --shared) plus ulp's flags."""
    tree = WORK / "build"
    if (tree / REAL).exists() and (tree / "minigzipsh").exists():
        return tree
    source = rwlib.debian_source(PACKAGE, VERSION)
    rwlib.fresh_tree(source, tree)
    cflags, cppflags, ldflags = rwlib.debian_flags()
    flags = [*cflags, *cppflags, "-Wall", "-D_REENTRANT", "-O3", "-DUNALIGNED_OK",
             *rwlib.ulp_flags()]
    log(f"building zlib with {' '.join(flags)}")
    env = {"CFLAGS": " ".join(flags), "LDFLAGS": " ".join(ldflags)}
    sh(["./configure", "--shared", "--prefix=/usr"], cwd=tree, env=env)
    sh(["nice", "make", "-j2", REAL, "examplesh", "minigzipsh"], cwd=tree, env=env)
    return tree



def corpus(tree: Path) -> Path:
    """8 MiB of zlib's own sources, repeated: a deterministic input."""
    path = WORK / "corpus"
    if path.exists():
        return path
    parts = [p.read_bytes() for p in sorted(tree.glob("*.[ch]"))]
    data = b"".join(parts)
    path.write_bytes((data * (CORPUS_BYTES // len(data) + 1))[:CORPUS_BYTES])
    return path


def own_tests(tree: Path, way: rwlib.Way, data: Path) -> dict:
    """zlib's `make testshared` (minigzip round trip, example), and minigzip
    on the corpus: what each printed, as hashes."""
    env = way.env()
    rt = sh(["sh", "-c", "echo hello world | ./minigzipsh | ./minigzipsh -d"], cwd=tree, env=env)
    example = sh(["./examplesh", WORK / f"example-{way.name}.gz"], cwd=tree, env=env)
    packed = sh([tree / "minigzipsh", "-c", data], env=env).stdout
    gz = WORK / f"corpus-{way.name}.gz"
    gz.write_bytes(packed)
    unpacked = sh([tree / "minigzipsh", "-d", "-c", gz], env=env).stdout
    if unpacked != data.read_bytes():
        raise Failure(f"minigzip round trip of the corpus differs ({way.name})")
    return {"roundtrip": rt.stdout.decode(), "example": example.stdout.decode(),
            "corpus_gz_sha256": hashlib.sha256(packed).hexdigest()}



def build_fix(tree: Path, prepared: Path) -> Path:
    """The fix .so (against the library's own headers) and its patch."""
    so, desc = WORK / "zlib_fix.so", WORK / "zlib_fix.desc"
    src = rwlib.HERE / "zlib_fix.c"
    sh(["gcc", *rwlib.debian_flags()[0], "-O2", "-fPIC", "-shared", "-Wall", "-Wextra", "-Werror",
        "-I", tree, "-o", so, src, "-L", prepared, "-l:" + SONAME])
    desc.write_text(
        "# zlib 1.3.1: Fix bug in inflateSync() for data held in bit buffer,\n"
        "# for Debian zlib 1:1.2.13.dfsg-1 (realworld/zlib_fix.c)\n"
        f"{so.name}\n@{prepared / SONAME}\n"
        "!zlib-5af7cef inflateSync() searches the wrong bytes of the bit buffer"
        " (madler/zlib 5af7cef45eeef86d, zlib 1.3.1)\n"
        "inflateSync:inflateSync_fixed\n")
    return rwlib.pack(desc)


WORKLOAD = "minigzip -c corpus (8 MiB); minigzip -d"


def workload_timing(tree: Path, data: Path, ways: list[rwlib.Way], rounds: int) -> dict:
    """minigzip compressing and decompressing the corpus (WORKLOAD): prepared
    with the runtime vs unprepared, interleaved."""
    script = f"./minigzipsh -c {data} > {WORK}/t.gz && ./minigzipsh -d -c {WORK}/t.gz > /dev/null"
    timing = rwlib.interleaved_ratio(["sh", "-c", script], ways[0], ways[2], rounds, cwd=tree)
    timing["instructions"] = rwlib.instructions([tree / "minigzipsh", "-c", small_corpus(data)],
                                                ways)
    return timing


def small_corpus(data: Path) -> Path:
    """The first MiB of the corpus: for counting instructions (callgrind
    runs about 50 times slower)."""
    path = WORK / "corpus-1m"
    if not path.exists():
        path.write_bytes(data.read_bytes()[:1 << 20])
    return path


def run(cycles: int, rounds: int, threads: int) -> dict:
    tree = build()
    plain, prepared = rwlib.install(tree / REAL, WORK, SONAME)
    result: dict = {"package": f"{PACKAGE} {VERSION}"}
    result["gdb_info_line"] = rwlib.check_gdb_lines(plain / SONAME, prepared / SONAME, GDB_SAMPLE)
    log("zlib: gdb info line identical before and after ulp-prepare")
    ways = rwlib.three_ways(plain, prepared)
    data = corpus(tree)
    outputs = {}
    for way in ways:
        rwlib.check_loaded(way, tree / "examplesh", SONAME)
        outputs[way.name] = own_tests(tree, way, data)
    rwlib.same_results(outputs, "zlib's tests")
    result["own_tests"] = {"ways": list(outputs), "identical": True,
                           "corpus_gz_sha256": outputs["unprepared"]["corpus_gz_sha256"]}
    log("zlib: its tests give identical results unprepared, prepared, prepared+runtime")
    patch = build_fix(tree, prepared)
    program = rwlib.load_program(rwlib.HERE / "zlib_load.c", WORK / "zlib_load", tree,
                                 plain, SONAME)
    rwlib.record_load(result, "zlib", [program, threads], ways[2], patch, cycles)
    if rounds:
        rwlib.record_workload(result, "zlib", WORKLOAD,
                              workload_timing(tree, data, ways, rounds))
    return result
