"""Mutation fuzzer for ulp-prepare (issue 7, item 15).

A few valid patchable libraries are built from tests/c, then mutated
deterministically: case ``n`` of seed ``s`` is always the same file.  Each
mutated library goes through ulp-prepare's ``main()`` inside a worker
process (spawning a Python process per case would cost 0.2 s each), with
``-o`` or in place, and the outcome must be one of:

* exit 0 and an output that passes ``verify_prepared`` (the check
  ulp-prepare runs on its own output), is a byte copy of the input when the
  input was prepared already, and loads with dlopen whenever the input does;
* exit 4 (BAD_INPUT) or 5 (NOT_PATCHABLE) with exactly one line on stderr,
  ``ulp-prepare: ...``, no output file, the input unchanged, no temporary
  file left behind.

Anything else is a failure: another exit code (1 is "internal error"), an
exception escaping ``main()`` (a traceback for the user), a worker killed
by a signal (LIEF crashing), a case taking longer than ``CASE_TIMEOUT``
(a hang) or an allocation beyond the worker's address-space limit
(MemoryError, a crafted size trusted).

``tests/test_prepare_fuzz.py`` runs a slice in the suite; ``make fuzz``
runs ``python tests/fuzz_prepare.py --count 20000``.  A failing case is
saved with ``--save DIR`` and replayed with ``ulp-prepare`` on that file.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import multiprocessing
import os
import random
import resource
import shutil
import signal
import struct
import subprocess
import sys
import time
import traceback
from collections import Counter
from multiprocessing.connection import wait
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from support import C_DIR, cc, shared_library  # noqa: E402

#: exit codes a mutated library may get
ALLOWED = {0, 4, 5}
#: seconds one case may take in a worker before it counts as a hang
CASE_TIMEOUT = 30
#: address space a worker may add to what it uses after a warm-up preparation
MEMORY_HEADROOM = 1 << 30

LOADER_SOURCE = r"""
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv)
{
    if (argc != 2) return 2;
    if (!dlopen(argv[1], RTLD_NOW | RTLD_LOCAL)) { puts(dlerror()); return 1; }
    return 0;
}
"""


# -- the corpus -------------------------------------------------------------------


def build_corpus(directory: Path) -> list[Path]:
    """The valid libraries mutations start from, and a program that dlopens one."""
    directory.mkdir(parents=True, exist_ok=True)
    corpus = [
        shared_library(directory / "libprep_plain.so", [C_DIR / "prep_lib.c"],
                       "-fcf-protection=none"),
        shared_library(directory / "libprep_cet.so", [C_DIR / "prep_lib.c"], "-fcf-protection"),
        shared_library(directory / "libsmall.so", [C_DIR / "prep_small.c"]),
    ]
    script = directory / "fuzz_extra.map"
    script.write_text("EXTRA_1 { global: extra_count; extra_ifunc; extra_versioned; "
                      "local: *; };\n")
    corpus.append(shared_library(directory / "libextra.so", [C_DIR / "fuzz_extra.c"],
                                 f"-Wl,--version-script={script}", "-Wl,--hash-style=both",
                                 "-Wl,-z,now"))
    # An already prepared library: the path that only checks and copies.
    prepared = directory / "libsmall_prepared.so"
    result = subprocess.run([str(Path(sys.executable).parent / "ulp-prepare"),
                             str(corpus[2]), "-o", str(prepared)],
                            capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise AssertionError(result.stderr)
    corpus.append(prepared)
    loader_source = directory / "fuzz_load.c"
    loader_source.write_text(LOADER_SOURCE)
    cc(directory / "fuzz_load", [loader_source], "-ldl")
    return corpus


# -- mutations --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Field:
    """A structure field of the library: where it is and how wide."""

    offset: int
    size: int
    what: str


def fields(data: bytes) -> list[Field]:
    """Every header, table entry and descriptor field worth corrupting."""
    from elftools.elf.elffile import ELFFile

    found: list[Field] = []
    ehdr = [(16, 2, "e_type"), (18, 2, "e_machine"), (20, 4, "e_version"), (24, 8, "e_entry"),
            (32, 8, "e_phoff"), (40, 8, "e_shoff"), (48, 4, "e_flags"), (52, 2, "e_ehsize"),
            (54, 2, "e_phentsize"), (56, 2, "e_phnum"), (58, 2, "e_shentsize"),
            (60, 2, "e_shnum"), (62, 2, "e_shstrndx"), (4, 1, "EI_CLASS"), (5, 1, "EI_DATA")]
    found += [Field(offset, size, name) for offset, size, name in ehdr]
    elf = ELFFile(io.BytesIO(data))
    phdr = [(0, 4, "p_type"), (4, 4, "p_flags"), (8, 8, "p_offset"), (16, 8, "p_vaddr"),
            (24, 8, "p_paddr"), (32, 8, "p_filesz"), (40, 8, "p_memsz"), (48, 8, "p_align")]
    for index in range(elf["e_phnum"]):
        base = elf["e_phoff"] + index * elf["e_phentsize"]
        found += [Field(base + offset, size, f"phdr[{index}].{name}")
                  for offset, size, name in phdr]
    shdr = [(0, 4, "sh_name"), (4, 4, "sh_type"), (8, 8, "sh_flags"), (16, 8, "sh_addr"),
            (24, 8, "sh_offset"), (32, 8, "sh_size"), (40, 4, "sh_link"), (44, 4, "sh_info"),
            (48, 8, "sh_addralign"), (56, 8, "sh_entsize")]
    entries = {
        "SHT_DYNAMIC": (16, [(0, 8, "d_tag"), (8, 8, "d_val")]),
        "SHT_DYNSYM": (24, [(0, 4, "st_name"), (4, 1, "st_info"), (5, 1, "st_other"),
                            (6, 2, "st_shndx"), (8, 8, "st_value"), (16, 8, "st_size")]),
        "SHT_SYMTAB": (24, [(0, 4, "st_name"), (4, 1, "st_info"), (6, 2, "st_shndx"),
                            (8, 8, "st_value")]),
        "SHT_RELA": (24, [(0, 8, "r_offset"), (8, 4, "r_type"), (12, 4, "r_sym"),
                          (16, 8, "r_addend")]),
        "SHT_NOTE": (4, [(0, 4, "word")]),
        "SHT_GNU_HASH": (4, [(0, 4, "word")]),
        "SHT_GNU_versym": (2, [(0, 2, "versym")]),
        "SHT_GNU_verdef": (4, [(0, 4, "word")]),
        "SHT_GNU_verneed": (4, [(0, 4, "word")]),
    }
    by_name = {
        "__patchable_function_entries": (8, [(0, 8, "slot")]),
        ".ulp.data": (8, [(0, 8, "qword")]),
        ".init_array": (8, [(0, 8, "pointer")]),
        ".fini_array": (8, [(0, 8, "pointer")]),
    }
    for index, section in enumerate(elf.iter_sections()):
        base = elf["e_shoff"] + index * elf["e_shentsize"]
        found += [Field(base + offset, size, f"shdr[{index}]({section.name}).{name}")
                  for offset, size, name in shdr]
        if section["sh_type"] == "SHT_NOBITS":
            continue
        layout = by_name.get(section.name) or entries.get(section["sh_type"])
        if layout is None:
            continue
        stride, members = layout
        start, size = section["sh_offset"], section["sh_size"]
        for entry in range(0, size - stride + 1, stride):
            found += [Field(start + entry + offset, width, f"{section.name}[{entry // stride}]"
                                                           f".{name}")
                      for offset, width, name in members if entry + offset + width <= size]
    return found


@dataclasses.dataclass(frozen=True)
class Regions:
    """Byte ranges of the library worth corrupting as a whole."""

    headers: list[tuple[int, int]]  # ELF header, program headers, section headers
    strings: list[tuple[int, int]]  # string tables
    code: list[tuple[int, int]]  # around each exported function's entry
    sections: list[tuple[int, int, str]]  # every section with file bytes


def regions(data: bytes) -> Regions:
    from elftools.elf.elffile import ELFFile

    elf = ELFFile(io.BytesIO(data))
    headers = [(0, 64), (elf["e_phoff"], elf["e_phnum"] * elf["e_phentsize"]),
               (elf["e_shoff"], elf["e_shnum"] * elf["e_shentsize"])]
    strings, sections, code = [], [], []
    for section in elf.iter_sections():
        if section["sh_type"] == "SHT_NOBITS" or not section["sh_size"]:
            continue
        span = (section["sh_offset"], section["sh_size"])
        sections.append((*span, section.name))
        if section["sh_type"] == "SHT_STRTAB":
            strings.append(span)
    dynsym = elf.get_section_by_name(".dynsym")
    for symbol in dynsym.iter_symbols():
        if symbol["st_info"]["type"] == "STT_FUNC" and symbol["st_shndx"] != "SHN_UNDEF":
            for segment in elf.iter_segments(type="PT_LOAD"):
                offset = symbol["st_value"] - segment["p_vaddr"]
                if 0 <= offset < segment["p_filesz"]:
                    code.append((segment["p_offset"] + offset - 16, 24))
    return Regions(headers, strings, code, sections)


def interesting(rng: random.Random, size: int, old: int, file_size: int) -> int:
    """A value for a field of ``size`` bytes that used to hold ``old``."""
    top = (1 << (8 * size)) - 1
    choice = rng.randrange(14)
    value = [
        0, 1, top, top >> 1, (top >> 1) + 1, file_size, file_size + 1, file_size - 1,
        old + rng.choice([-16, -8, -1, 1, 8, 16, 4096, -4096]), old * 2,
        old ^ (1 << rng.randrange(8 * size)),
        rng.getrandbits(8 * size), 1 << rng.randrange(8 * size), 0x7FFF_FFFF,
    ][choice]
    return value & top


_FORMATS = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}


def mutate(data: bytes, rng: random.Random, table: list[Field],
           spans: Regions) -> tuple[bytes, str]:
    """One to three mutations of ``data``; return the result and what was done."""
    out = bytearray(data)
    done = []
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3])):
        kind = rng.randrange(100)
        if kind < 40 and table:  # a structure field gets an interesting value
            field = rng.choice(table)
            if field.offset + field.size > len(out):
                continue
            old = struct.unpack_from(_FORMATS[field.size], out, field.offset)[0]
            new = interesting(rng, field.size, old, len(data))
            struct.pack_into(_FORMATS[field.size], out, field.offset, new)
            done.append(f"{field.what}={new:#x}")
        elif kind < 55:  # bit flips in the headers
            start, length = rng.choice(spans.headers)
            for _ in range(rng.randint(1, 4)):
                position = start + rng.randrange(max(1, length))
                if position < len(out):
                    out[position] ^= 1 << rng.randrange(8)
            done.append(f"header bit flips near {start:#x}")
        elif kind < 65:  # bit flips anywhere
            for _ in range(rng.randint(1, 8)):
                position = rng.randrange(len(out))
                out[position] ^= 1 << rng.randrange(8)
            done.append("bit flips")
        elif kind < 72 and spans.strings:  # a string table loses a NUL or gets odd bytes
            start, length = rng.choice(spans.strings)
            position = start + rng.randrange(length)
            if position < len(out):
                out[position] = rng.choice([0x41, 0xFF, 0xC3, 0x1B, 0x0A, 0x00])
                done.append(f"string byte at {position:#x}")
        elif kind < 78 and spans.code:  # an exported function's padding or entry
            start, length = rng.choice(spans.code)
            position = start + rng.randrange(length)
            if 0 <= position < len(out):
                out[position] = rng.getrandbits(8)
                done.append(f"code byte at {position:#x}")
        elif kind < 84:  # a run of bytes overwritten
            start, length, name = rng.choice(spans.sections)
            position = start + rng.randrange(length)
            count = rng.randint(1, 64)
            fill = rng.choice([b"\x00", b"\xff", None])
            chunk = bytes(rng.getrandbits(8) for _ in range(count)) if fill is None \
                else fill * count
            out[position:position + count] = chunk
            done.append(f"{count} bytes of {name} overwritten")
        elif kind < 90:  # a header copied over another one
            start, length = rng.choice(spans.headers)
            width = 56 if start == spans.headers[1][0] else 64
            count = max(1, length // width)
            a, b = rng.randrange(count), rng.randrange(count)
            out[start + a * width:start + (a + 1) * width] = \
                data[start + b * width:start + (b + 1) * width]
            done.append(f"header entry {b} copied over {a} at {start:#x}")
        elif kind < 96:  # truncated
            cut = rng.choice([rng.randrange(len(out)), rng.randrange(64),
                              len(out) - rng.randint(1, 4096)])
            out = out[:max(0, cut)]
            done.append(f"truncated to {len(out)}")
            break
        else:  # garbage appended
            out += bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 256)))
            done.append("garbage appended")
    return bytes(out), "; ".join(done) or "unchanged"


# -- running one case -------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    case: int
    base: str
    mutation: str
    code: int | None  # None: no exit code (exception, crash, hang)
    problem: str = ""  # empty: the case is fine
    message: str = ""  # the stderr line, or what went wrong
    seconds: float = 0.0
    loaded: bool | None = None  # exit 0: did the output load (None: not tried)


class _Timeout(Exception):
    pass


def _alarm(_signum, _frame):
    raise _Timeout()


class Worker:
    """State of one worker process: the corpus and a scratch directory."""

    def __init__(self, corpus: list[Path], scratch: Path, loader: Path, seed: int) -> None:
        self.corpus = [(path.name, path.read_bytes()) for path in corpus]
        self.tables = [(fields(data), regions(data)) for _name, data in self.corpus]
        self.scratch = scratch
        self.loader = loader
        self.seed = seed
        scratch.mkdir(parents=True, exist_ok=True)

    def case_input(self, case: int) -> tuple[str, bytes, str]:
        rng = random.Random(f"{self.seed}:{case}")
        which = rng.randrange(len(self.corpus))
        name, data = self.corpus[which]
        table, spans = self.tables[which]
        mutated, what = mutate(data, rng, table, spans)
        return name, mutated, what

    def run(self, case: int) -> Outcome:
        from ulp.toolchain import prepare

        name, data, what = self.case_input(case)
        for entry in self.scratch.iterdir():
            entry.unlink()
        source = self.scratch / "lib.so"
        source.write_bytes(data)
        in_place = case % 4 == 0
        output = source if in_place else self.scratch / "out.so"
        argv = [str(source)] if in_place else [str(source), "-o", str(output)]
        outcome = Outcome(case, name, what, None)
        out, err = io.StringIO(), io.StringIO()
        start = time.monotonic()
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(CASE_TIMEOUT)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                outcome.code = prepare.main(argv)
        except _Timeout:
            outcome.problem = "hang"
            outcome.message = f"more than {CASE_TIMEOUT} s"
        except MemoryError:
            outcome.problem = "memory"
            outcome.message = traceback.format_exc()
        except BaseException as error:  # noqa: BLE001 - every escape is a finding
            outcome.problem = "traceback"
            outcome.message = "".join(traceback.format_exception(error))
        finally:
            signal.alarm(0)
        outcome.seconds = time.monotonic() - start
        if outcome.problem:
            return outcome
        stderr = err.getvalue()
        outcome.message = stderr.strip()
        outcome.problem = self.check(outcome, data, source, output, out.getvalue(), stderr)
        return outcome

    def check(self, outcome: Outcome, data: bytes, source: Path, output: Path, stdout: str,
              stderr: str) -> str:
        from ulp.errors import UlpError
        from ulp.toolchain.verify import verify_prepared

        code = outcome.code
        leftovers = [p.name for p in self.scratch.iterdir() if p.name.endswith(".tmp")]
        if leftovers:
            return f"temporary files left: {leftovers}"
        if code not in ALLOWED:
            return "internal error" if code == 1 else f"exit code {code}"
        if code != 0:
            lines = stderr.splitlines()
            if len(lines) != 1 or not lines[0].startswith("ulp-prepare: "):
                return "not one error line"
            if "internal error" in stderr:
                return "internal error"
            if output != source and output.exists():
                return "output written although refused"
            if source.read_bytes() != data:
                return "input changed although refused"
            return ""
        if stderr:
            return "exit 0 with a message on stderr"
        if output != source and source.read_bytes() != data:
            return "input changed although written to another file"
        try:
            verify_prepared(str(output))
        except UlpError as error:
            return f"output does not verify: {error}"
        if "already prepared" in stdout and output.read_bytes() != data:
            return "already prepared, but the output is not a copy"
        if output != source:
            outcome.loaded = self.loads(output)
            if self.loads(source) is True and outcome.loaded is not True:
                return "the input loads, the prepared output does not"
        return ""

    def loads(self, path: Path) -> bool | None:
        """True: dlopen works; False: dlopen refuses it; None: the loader crashed."""
        env = {key: value for key, value in os.environ.items() if key != "LD_PRELOAD"}
        try:
            result = subprocess.run([str(self.loader), str(path)], capture_output=True,
                                    timeout=CASE_TIMEOUT, env=env)
        except subprocess.TimeoutExpired:
            return None
        return {0: True, 1: False}.get(result.returncode)


def _limit_memory() -> None:
    """Cap the worker's address space: a crafted size must not be allocated."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                used = int(line.split()[1]) * 1024
                resource.setrlimit(resource.RLIMIT_AS, (used + MEMORY_HEADROOM,) * 2)


def _worker_main(conn, corpus: list[Path], scratch: Path, loader: Path, seed: int) -> None:
    os.nice(5)
    worker = Worker(corpus, scratch, loader, seed)
    # Warm up (imports, keystone, capstone) before measuring the address space.
    from ulp.toolchain import prepare

    with contextlib.redirect_stdout(io.StringIO()):
        prepare.main([str(corpus[0]), "-o", str(scratch / "warm.so")])
    _limit_memory()
    while True:
        case = conn.recv()
        if case is None:
            return
        conn.send(worker.run(case))


# -- the pool ----------------------------------------------------------------------


@dataclasses.dataclass
class Report:
    outcomes: list[Outcome]
    seconds: float
    jobs: int

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.problem]

    def codes(self) -> dict[str, int]:
        counts = Counter("crash" if o.code is None else str(o.code) for o in self.outcomes)
        return dict(sorted(counts.items()))

    def summary(self) -> str:
        loaded = Counter(o.loaded for o in self.outcomes if o.code == 0)
        return (f"{len(self.outcomes)} mutated libraries in {self.seconds:.1f} s "
                f"({self.jobs} workers): exit codes {self.codes()}, "
                f"{len(self.failures)} failures; outputs loaded with dlopen: "
                f"{loaded.get(True, 0)}, refused by ld.so: {loaded.get(False, 0)}")


def fuzz(corpus: list[Path], loader: Path, scratch: Path, cases: range, seed: int,
         jobs: int = 2, progress=None) -> Report:
    """Run every case of ``cases`` over ``jobs`` worker processes."""
    context = multiprocessing.get_context("spawn")
    start = time.monotonic()
    pending = list(reversed(cases))
    outcomes: list[Outcome] = []
    workers: dict = {}  # connection -> (process, case it runs, its started time)

    def spawn(number: int):
        parent, child = context.Pipe()
        process = context.Process(target=_worker_main, daemon=True,
                                  args=(child, corpus, scratch / f"w{number}", loader, seed))
        process.start()
        child.close()
        return parent, process

    def feed(conn, process, number):
        if pending:
            case = pending.pop()
            conn.send(case)
            workers[conn] = (process, case, time.monotonic(), number)
        else:
            conn.send(None)
            process.join(10)

    described: list[Worker] = []

    def describe(outcome: Outcome) -> Outcome:
        """Name the input of a case whose worker died (the parent makes it again)."""
        if not described:
            described.append(Worker(corpus, scratch / "describe", loader, seed))
        outcome.base, _data, outcome.mutation = described[0].case_input(outcome.case)
        return outcome

    for number in range(jobs):
        conn, process = spawn(number)
        feed(conn, process, number)
    while workers:
        ready = wait(list(workers), timeout=5)
        for conn in ready:
            process, case, _started, number = workers.pop(conn)
            try:
                outcome = conn.recv()
            except EOFError:
                process.join(10)
                outcome = describe(Outcome(case, "?", "?", None, "crash",
                                           f"worker died, exit status {process.exitcode}"))
                conn, process = spawn(number)
            outcomes.append(outcome)
            if progress:
                progress(outcome, len(outcomes))
            feed(conn, process, number)
        now = time.monotonic()
        for conn, (process, case, started, number) in list(workers.items()):
            if now - started > 3 * CASE_TIMEOUT:
                process.kill()
                process.join(10)
                del workers[conn]
                outcomes.append(describe(Outcome(
                    case, "?", "?", None, "hang",
                    f"worker stuck for {now - started:.0f} s, killed")))
                conn, process = spawn(number)
                feed(conn, process, number)
    outcomes.sort(key=lambda o: o.case)
    return Report(outcomes, time.monotonic() - start, jobs)


def save_case(corpus: list[Path], loader: Path, scratch: Path, seed: int, case: int,
              directory: Path) -> Path:
    """Write the mutated input of ``case`` to ``directory`` (to replay by hand)."""
    worker = Worker(corpus, scratch / "save", loader, seed)
    _name, data, _what = worker.case_input(case)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"case-{seed}-{case}.so"
    path.write_bytes(data)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fuzz ulp-prepare with mutated libraries.")
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--first", type=int, default=0, help="first case number")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("build/fuzz"))
    parser.add_argument("--save", type=Path, help="write failing inputs to this directory")
    args = parser.parse_args(argv)
    if args.work.exists():
        shutil.rmtree(args.work)
    corpus_dir = args.work / "corpus"
    corpus = build_corpus(corpus_dir)
    loader = corpus_dir / "fuzz_load"

    def progress(outcome: Outcome, done: int) -> None:
        if outcome.problem:
            print(f"case {outcome.case} ({outcome.base}: {outcome.mutation}): "
                  f"{outcome.problem}: {outcome.message}", flush=True)
        if done % 1000 == 0:
            print(f"... {done}", flush=True)

    report = fuzz(corpus, loader, args.work, range(args.first, args.first + args.count),
                  args.seed, args.jobs, progress)
    print(report.summary())
    problems = Counter(o.problem.split(":")[0] for o in report.failures)
    if problems:
        print(f"failures by kind: {dict(problems)}")
    if args.save:
        for outcome in report.failures:
            save_case(corpus, loader, args.work, args.seed, outcome.case, args.save)
    return 1 if report.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
