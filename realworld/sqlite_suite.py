"""SQLite from Debian's source package: build, prepare, speedtest1 three
ways, the CVE-2025-6965 fix under load, timings."""

from __future__ import annotations

import re
from pathlib import Path

import rwlib
from rwlib import Failure, log, sh

PACKAGE, VERSION = "sqlite3", "3.40.1-2+deb12u2"
# The fix this suite ships live is this Debian patch: the library is built
# as Debian shipped it before (3.40.1-2+deb12u1), i.e. without the patch.
CVE_PATCH = "debian/patches/42-CVE-2025-6965.patch"
SONAME, REAL = "libsqlite3.so.0", "libsqlite3.so.0.8.6"
WORK = rwlib.WORK / "sqlite"
# debian/rules: the -D options of every Debian build of SQLite.
DEBIAN_DEFS = """-O2 -fno-strict-aliasing -DSQLITE_SECURE_DELETE -DSQLITE_ENABLE_COLUMN_METADATA
 -DSQLITE_ENABLE_FTS3 -DSQLITE_ENABLE_FTS3_PARENTHESIS -DSQLITE_ENABLE_RTREE=1
 -DSQLITE_SOUNDEX=1 -DSQLITE_ENABLE_UNLOCK_NOTIFY -DSQLITE_OMIT_LOOKASIDE=1
 -DSQLITE_ENABLE_DBSTAT_VTAB -DSQLITE_ALLOW_ROWID_IN_VIEW -DSQLITE_ENABLE_UPDATE_DELETE_LIMIT=1
 -DSQLITE_ENABLE_LOAD_EXTENSION -DSQLITE_ENABLE_JSON1 -DSQLITE_LIKE_DOESNT_MATCH_BLOBS
 -DSQLITE_THREADSAFE=1 -DSQLITE_ENABLE_FTS3_TOKENIZER=1 -DSQLITE_USE_URI=1
 -DSQLITE_MAX_SCHEMA_RETRY=25 -DSQLITE_ENABLE_PREUPDATE_HOOK -DSQLITE_ENABLE_SESSION
 -DSQLITE_ENABLE_STMTVTAB -DSQLITE_MAX_VARIABLE_NUMBER=250000""".split()
CONFIGURE = ["--prefix=/usr", "--enable-threadsafe", "--enable-load-extension", "--enable-json",
             "--enable-fts4", "--enable-fts5", "--disable-amalgamation",
             # not Debian's: no Tcl extension and no static library, which
             # this suite does not use (half the build time)
             "--disable-tcl", "--disable-static"]
GDB_SAMPLE = ["sqlite3_prepare_v2", "sqlite3_step", "sqlite3_exec", "sqlite3_open_v2",
              "sqlite3ExprAnalyzeAggregates", "analyzeAggregate", "sqlite3ErrorMsg",
              "sqlite3VdbeExec", "sqlite3BtreeInsert", "balance_nonroot", "pager_write",
              "sqlite3WhereBegin", "yy_reduce", "sqlite3Select", "sqlite3FindFunction",
              "sqlite3Fts5Init", "rtreeInit", "jsonParse", "vdbeSorterSort", "unixRead"]
SPEEDTEST_SETS = ["main", "cte", "rtree", "orm", "fp"]


def build() -> Path:
    """Debian's build (debian/rules: dpkg-buildflags, its -D list, configure
    --disable-amalgamation) plus ulp's flags."""
    tree = WORK / "build"
    lib = tree / ".libs" / REAL
    if lib.exists() and (tree / "speedtest1").exists():
        return tree
    source = rwlib.debian_source(PACKAGE, VERSION)
    rwlib.fresh_tree(source, tree)
    sh(["patch", "-R", "-p1", "-i", CVE_PATCH], cwd=tree)
    cflags, cppflags, ldflags = rwlib.debian_flags()
    flags = [*cflags, *cppflags, *DEBIAN_DEFS, *rwlib.ulp_flags()]
    log(f"building SQLite with {' '.join(flags)} (several minutes)")
    sh(["./configure", *CONFIGURE, f"CFLAGS={' '.join(flags)}", f"LDFLAGS={' '.join(ldflags)}"],
       cwd=tree)
    sh(["nice", "make", "-j3", "libsqlite3.la"], cwd=tree)
    # speedtest1 runs its R-Tree tests only when told the library has them.
    sh(["gcc", *cflags, *cppflags, "-DSQLITE_ENABLE_RTREE", "-I", tree, "-o", tree / "speedtest1",
        tree / "test" / "speedtest1.c", "-L", tree / ".libs", "-l:" + SONAME], cwd=tree)
    return tree


def compile_flags(tree: Path) -> list[str]:
    """The exact command line the library's own objects were compiled with
    (the Makefile's TCC, with the feature flags; relative to TREE): a fix
    must see the same struct layouts."""
    out = sh(["make", "-s", "--no-print-directory", "--eval",
              "ulp-print-flags: ; @echo $(TCC)", "ulp-print-flags"],
             cwd=tree).stdout.decode().split()
    return [f for f in out[1:] if not f.startswith("-fpatchable-function-entry")]



TIMING = re.compile(rb"\s+\d+\.\d+s$", re.M)


def speedtest(tree: Path, way: rwlib.Way, testset: str, size: int) -> str:
    """speedtest1 --verify on one test set: its report without the times
    (test names, and the hash of every result row)."""
    out = sh([tree / "speedtest1", "--verify", "--memdb", "--testset", testset,
              "--size", str(size)], env=way.env()).stdout
    if b"Verification Hash" not in out:
        raise Failure(f"speedtest1 --testset {testset} printed no verification hash")
    return TIMING.sub(b"", out).decode()


def own_tests(tree: Path, way: rwlib.Way, size: int) -> dict:
    return {testset: speedtest(tree, way, testset, size) for testset in SPEEDTEST_SETS}



def fix_description(so_name: str, target: Path) -> str:
    """The patch description of the fix (docs/realworld.md shows it)."""
    return ("# SQLite CVE-2025-6965: more aggregate terms than columns (check-in\n"
            "# 5508b56fd24016c1; Debian 3.40.1-2+deb12u2, 42-CVE-2025-6965.patch)\n"
            f"{so_name}\n@{target}\n"
            "!CVE-2025-6965 more aggregate terms than columns (SQLite 5508b56fd24016c1,"
            " Debian 3.40.1-2+deb12u2)\n"
            "analyzeAggregate:analyzeAggregate_fixed\n")


def build_fix(tree: Path, prepared: Path) -> Path:
    """The fix .so, compiled like the library's objects, and its patch."""
    so, desc = WORK / "sqlite_fix.so", WORK / "sqlite_fix.desc"
    sh(["gcc", *compile_flags(tree), "-fPIC", "-shared", "-Wall", "-Werror", "-o", so,
        rwlib.HERE / "sqlite_fix.c", "-L", prepared, "-l:" + SONAME], cwd=tree)
    desc.write_text(fix_description(so.name, prepared / SONAME))
    return rwlib.pack(desc)


def speedtest_timing(tree: Path, ways: list[rwlib.Way], rounds: int, size: int) -> dict:
    argv = [tree / "speedtest1", "--memdb", "--size", str(size)]
    return rwlib.interleaved_ratio(argv, ways[0], ways[2], rounds)


def speedtest_summary(workload: dict) -> dict:
    """What speedtest1.json holds for the benchmark report: the workload
    record (rwlib.record_workload) without the per-run times."""
    return {key: workload[key] for key in ("ratio_median", "min", "max", "runs", "loadavg",
                                           "command", "ratio", "instructions")}


def run(cycles: int, rounds: int, threads: int) -> dict:
    tree = build()
    plain, prepared = rwlib.install(tree / ".libs" / REAL, WORK, SONAME)
    result: dict = {"package": f"{PACKAGE} {VERSION} without {CVE_PATCH}"}
    result["gdb_info_line"] = rwlib.check_gdb_lines(plain / SONAME, prepared / SONAME, GDB_SAMPLE)
    log("sqlite: gdb info line identical before and after ulp-prepare")
    ways = rwlib.three_ways(plain, prepared)
    outputs = {}
    for way in ways:
        rwlib.check_loaded(way, tree / "speedtest1", SONAME)
        outputs[way.name] = own_tests(tree, way, 10)
    rwlib.same_results(outputs, "speedtest1 --verify")
    result["own_tests"] = {"ways": list(outputs), "identical": True, "testsets": SPEEDTEST_SETS,
                           "verification": {t: outputs["unprepared"][t].splitlines()[-1]
                                            for t in SPEEDTEST_SETS}}
    log("sqlite: speedtest1 --verify identical unprepared, prepared, prepared+runtime")
    patch = build_fix(tree, prepared)
    program = rwlib.load_program(rwlib.HERE / "sqlite_load.c", WORK / "sqlite_load", tree,
                                 plain, SONAME)
    rwlib.record_load(result, "sqlite", [program, threads, WORK / "load.db"], ways[2], patch,
                      cycles)
    if rounds:
        timing = speedtest_timing(tree, ways, rounds, 25)
        timing["instructions"] = rwlib.instructions(
            [tree / "speedtest1", "--memdb", "--size", "2"], ways)
        rwlib.record_workload(result, "sqlite", "speedtest1 --memdb --size 25", timing)
        rwlib.write_json(rwlib.SPEEDTEST, speedtest_summary(result["workload"]))
    return result
