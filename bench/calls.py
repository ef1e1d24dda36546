"""The call figures: build the libraries and loops, count instructions
(callgrind; the single-stepping counter where ulp-trigger has patched the
process), and time the variants interleaved.

Process kinds (the runtime is either preloaded or not for a whole process):
  absent   no runtime; variants nat (unflagged library) and prep (prepared)
  loaded   runtime preloaded, no patch; nat and prep
  patched  runtime preloaded, fix.ulp applied; nat, prep (every call
           patched) and direct (the replacements called through a PLT)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from support import RUNTIME, LiveProcess, cc, shared_library, tool

HERE = Path(__file__).resolve().parent
BODY_FIGURES = ("loop", "depth", "nested", "callback", "signal")
KINDS = {"absent": ("nat", "prep"), "loaded": ("nat", "prep"),
         "patched": ("nat", "prep", "direct")}
#: two run lengths per figure: (long - short) calls, setup cancels
COUNT_LENGTHS = (2000, 12000)
STEP_LENGTHS = (100, 600)
FIB_STEP = (8, 12)  # fib(n) makes 2 fib(n+1) - 1 calls
TIMEOUT = 300.0


def fib_calls(n: int) -> int:
    a, b = 0, 1
    for _ in range(n + 1):
        a, b = b, a + b
    return 2 * a - 1


#: without it gcc turns one of fib's two self-calls into a loop in the library
#: (tail recursion with an accumulator) but not in the patch, whose calls go to
#: another function: fib would make half the calls natively that it makes patched
SAME_CALLS = "-fno-optimize-sibling-calls"


def build(work: Path) -> None:
    """Every library, loop and program of the call figures, into WORK."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    lib, fix, driver = HERE / "libbench.c", HERE / "bench_fix.c", HERE / "driver.c"
    shared_library(work / "libbench_nat.so", [lib], SAME_CALLS, "-Wl,-soname,libbench_nat.so",
                   patchable=False)
    shared_library(work / "libbench_prep.so", [lib], SAME_CALLS,
                   "-Wl,-soname,libbench_prep.so")
    checked(tool("ulp-prepare", work / "libbench_prep.so"))
    shared_library(work / "libbench_fix.so", [fix], SAME_CALLS, f"-L{work}", "-lbench_prep",
                   "-Wl,-soname,libbench_fix.so", patchable=False)
    loops = {"nat": ["-lbench_nat"], "prep": ["-lbench_prep"],
             "direct": ["-lbench_fix", "-DONLY_CALLS", "-Dbench_inc=bench_inc_v2",
                        "-Dbench_fib=bench_fib_v2"]}
    for variant, flags in loops.items():
        shared_library(work / f"drv_{variant}.so", [driver], f"-L{work}", *flags,
                       "-Wl,-rpath,$ORIGIN", patchable=False)
    cc(work / "callbench", [HERE / "callbench.c"], "-ldl")
    cc(work / "stepcount", [HERE / "stepcount.c"], "-Wextra", "-Werror")
    (work / "fix.desc").write_text(f"{work}/libbench_fix.so\n@{work}/libbench_prep.so\n"
                                   "bench_inc:bench_inc_v2\nbench_fib:bench_fib_v2\n")
    checked(tool("ulp-packer", work / "fix.desc", "-o", work / "fix.ulp"))


def checked(done: subprocess.CompletedProcess) -> None:
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, done.args))}: {done.stderr.strip()}")


def environment(kind: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    if kind != "absent":
        env["LD_PRELOAD"] = str(RUNTIME)
    return env


def callgrind_instructions(work: Path, kind: str, variant: str, figure: str,
                           calls: int) -> int:
    """Instructions of one whole run of callbench count on its main thread
    (callgrind's total for thread 1: the runtime's agent, which ticks
    while it runs, is another thread and not a cost of the calls)."""
    out = work / "callgrind.out"
    for stale in work.glob("callgrind.out*"):
        stale.unlink()
    done = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                           "--separate-threads=yes",
                           str(work / "callbench"), "count", str(work / f"drv_{variant}.so"),
                           figure, str(calls)],
                          env=environment(kind), capture_output=True, text=True,
                          timeout=TIMEOUT)
    checked(done)
    main_thread = work / "callgrind.out-01"
    match = re.search(r"^totals:\s*(\d+)", main_thread.read_text(), re.MULTILINE)
    if not match:
        raise RuntimeError(f"no totals in {main_thread}")
    return int(match.group(1))


def callgrind_counts(work: Path) -> dict[str, dict[str, dict[str, float]]]:
    """kind -> variant -> figure -> instructions per call (callgrind)."""
    short, long = COUNT_LENGTHS
    counts: dict[str, dict[str, dict[str, float]]] = {}
    for kind in ("absent", "loaded"):
        for variant in KINDS[kind]:
            for figure in BODY_FIGURES:
                low = callgrind_instructions(work, kind, variant, figure, short)
                high = callgrind_instructions(work, kind, variant, figure, long)
                counts.setdefault(kind, {}).setdefault(variant, {})[figure] = \
                    (high - low) / (long - short)
    return counts


class Target(LiveProcess):
    """callbench serve with every variant of its kind, patched if the kind says so."""

    def __init__(self, work: Path, kind: str) -> None:
        self.work = work
        variants = [f"{name}={work}/drv_{name}.so" for name in KINDS[kind]]
        super().__init__([work / "callbench", "serve", *variants], env=environment(kind),
                         preload_runtime=kind != "absent", cwd=work)
        try:
            self.wait_for(lambda line: line == "ready", TIMEOUT)
            if kind == "patched":
                checked(tool("ulp-trigger", self.pid, work / "fix.ulp", timeout=TIMEOUT))
                self.wait_for_the_transition()
        except BaseException:
            self.stop()
            raise

    def wait_for_the_transition(self) -> None:
        """Measure the steady state: until every thread has left the universe
        it ran in at the commit, calls go through the tracker."""
        from ulp.trigger.snapshot import read_process

        deadline = time.monotonic() + TIMEOUT
        while any(library.in_transition for library in read_process(self.pid).libraries):
            if time.monotonic() > deadline:
                raise RuntimeError(f"process {self.pid}: the transition did not end")
            time.sleep(0.05)

    def command(self, line: str) -> list[str]:
        """Send one command; the lines it printed before its "done"."""
        self.send(line + "\n")
        lines = []
        while (printed := self.next_line(TIMEOUT)) != "done":
            lines.append(printed)
        return lines


def timed_rounds(target: Target, rounds: int) -> list[tuple[int, str, str, float]]:
    """(round, variant, figure, ns per call; fib: ns per fib(32))."""
    samples = []
    for line in target.command(f"time {rounds}"):
        _, round_, variant, figure, ns = line.split()
        samples.append((int(round_), variant, figure, float(ns)))
    return samples


def step_counts(work: Path, kind: str) -> dict[str, dict[str, float]]:
    """variant -> figure -> instructions per call, by single-stepping a process
    of KIND (fib: instructions per fib call)."""
    regions = []
    for variant in KINDS[kind]:
        regions.append((variant, "loop", STEP_LENGTHS, STEP_LENGTHS[1] - STEP_LENGTHS[0]))
        if variant != "direct":
            regions.append((variant, "fib", FIB_STEP,
                            fib_calls(FIB_STEP[1]) - fib_calls(FIB_STEP[0])))
    result: dict[str, dict[str, float]] = {}
    with Target(work, kind) as target:
        stepper = LiveProcess([work / "stepcount", str(target.pid)], preload_runtime=False)
        with stepper:
            stepper.wait_for(lambda line: line == "attached", TIMEOUT)
            for variant, figure, lengths, calls in regions:
                # a first run, not counted, leaves the tracker in the state every
                # later run starts from (its first entry may cost more)
                steps = []
                for length in (lengths[0], *lengths):
                    target.command(f"step {len(steps)} {variant} {figure} {length}")
                    steps.append(int(stepper.next_line(TIMEOUT).split()[2]))
                steps.pop(0)
                result.setdefault(variant, {})[figure] = (steps[1] - steps[0]) / calls
            target.proc.stdin.close()
            target.proc.wait(timeout=TIMEOUT)
    return result


def same_loops(work: Path) -> dict[str, bool]:
    """Per figure: do the loops of every variant execute the same instructions
    (mnemonics and register operands; call targets differ only in the PLT
    slot's address and name)?"""
    import capstone
    from elftools.elf.elffile import ELFFile

    disassembler = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    listings: dict[str, list[list[str]]] = {}
    for variant in KINDS["patched"]:
        with open(work / f"drv_{variant}.so", "rb") as stream:
            elf = ELFFile(stream)
            symbols = elf.get_section_by_name(".symtab") or elf.get_section_by_name(".dynsym")
            for symbol in symbols.iter_symbols():
                if not symbol.name.startswith("drv_") or symbol["st_size"] == 0:
                    continue
                offset = next(elf.address_offsets(symbol["st_value"]))
                stream.seek(offset)
                code = stream.read(symbol["st_size"])
                listings.setdefault(symbol.name[4:], []).append(
                    [f"{i.mnemonic} {i.op_str if i.mnemonic not in ('call', 'jmp') else ''}"
                     for i in disassembler.disasm(code, 0)])
    return {figure: all(listing == found[0] for listing in found)
            for figure, found in listings.items()}


def interleaved_times(work: Path, processes: int, rounds: int) \
        -> dict[str, list[tuple[int, int, str, str, float]]]:
    """kind -> (process, round, variant, figure, ns); the kinds' processes
    run one after the other, process after process."""
    times: dict[str, list[tuple[int, int, str, str, float]]] = {kind: [] for kind in KINDS}
    for process in range(processes):
        for kind in KINDS:
            with Target(work, kind) as target:
                times[kind] += [(process, *sample) for sample in timed_rounds(target, rounds)]
    return times
