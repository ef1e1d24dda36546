"""Operators' use of the commands: many processes at once, a directory of
patches, the summary and its exit code, --json, --version, one-line usage
errors, colour rules.  Real processes and real ptrace; every wait has a
timeout.

The target library gets a build-id of its own for each run of this module,
so that ``ulp-trigger PATCH`` without a PID, which looks at every process of
the machine, can only ever find this module's processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import secrets
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from consistency_support import ask

from support import BIN_DIR, C_DIR, TIMEOUT, LiveProcess, cc, shared_library, tool
from ulp.trigger.tracee import Tracee

ORIGINAL = "value=100 twice=42 plus=101 half=2.5"
VALUE_FIXED = "value=200 twice=42 plus=201 half=2.5"
BOTH_FIXED = "value=200 twice=63 plus=201 half=2.5"
TWICE_FIX = "int lib_twice_v2(int x)\n{\n    return 3 * x;\n}\n"


@pytest.fixture(scope="module")
def op(build_dir: Path) -> Path:
    """lib/libop.so (prepared, a build-id of its own), an app under a name of
    its own, value.ulp (lib_value) and twice.ulp (lib_twice, requires
    value.ulp), and patches/ holding both."""
    root = build_dir / "operators"
    (root / "lib").mkdir(parents=True)
    tag = secrets.token_hex(8)
    lib = shared_library(root / "lib" / "libop.so", [C_DIR / "e2e_lib.c"],
                         f"-Wl,--build-id=0x{tag}")
    (root / "unprepared").mkdir()
    shutil.copy(lib, root / "unprepared" / "libop.so")
    assert tool("ulp-prepare", lib).returncode == 0
    cc(root / f"opapp-{tag}", [C_DIR / "e2e_app.c"], f"-L{root / 'lib'}", "-lop", "-ldl")
    shared_library(root / "libop_value.so", [C_DIR / "e2e_fix.c"], patchable=False)
    (root / "twice_fix.c").write_text(TWICE_FIX)
    shared_library(root / "libop_twice.so", [root / "twice_fix.c"], patchable=False)
    (root / "value.desc").write_text("libop_value.so\n@lib/libop.so\nlib_value:lib_value_v2\n")
    (root / "twice.desc").write_text("libop_twice.so\n@lib/libop.so\nrequires: value.ulp\n"
                                     "lib_twice:lib_twice_v2\n")
    for name in ("value", "twice"):
        packed = tool("ulp-packer", root / f"{name}.desc", "-o", root / f"{name}.ulp")
        assert packed.returncode == 0, packed.stderr
    (root / "patches").mkdir()
    # "a-" sorts before "b-": only the requirement puts value first
    shutil.copy(root / "twice.ulp", root / "patches" / "a-twice.ulp")
    shutil.copy(root / "value.ulp", root / "patches" / "b-value.ulp")
    (root / "tag").write_text(tag)
    return root


def app_path(op: Path) -> Path:
    return op / f"opapp-{(op / 'tag').read_text()}"


def start(op: Path, preload: bool = True) -> LiveProcess:
    app = LiveProcess([app_path(op)], env={"LD_LIBRARY_PATH": str(op / "lib")},
                      preload_runtime=preload)
    assert app.next_line() == "ready"
    return app


def results(app: LiveProcess) -> str:
    return ask(app, "call")


def trigger(*args: str | Path | int, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN_DIR / "ulp-trigger"), "--timeout", "20", "--retries", "20",
                           *map(str, args)], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env)


def summary(result: subprocess.CompletedProcess) -> str:
    return next(line for line in result.stdout.splitlines() if "process(es):" in line)


def test_no_pid_applies_to_every_process_with_runtime_and_target(op: Path) -> None:
    with start(op) as first, start(op) as second, start(op) as third, \
            start(op, preload=False) as without_runtime:
        applied = trigger(op / "value.ulp")
        assert applied.returncode == 0, applied.stderr
        assert summary(applied).startswith("3 process(es): 3 applied, 0 already applied, "
                                           "0 skipped, 0 failed")
        for app in (first, second, third):
            assert f"to process {app.pid}:" in applied.stdout
            assert results(app) == VALUE_FIXED
        # not a candidate: not listed, not touched
        assert str(without_runtime.pid) not in applied.stdout + applied.stderr
        assert results(without_runtime) == ORIGINAL

        again = trigger(op / "value.ulp")
        assert again.returncode == 12, again.stderr
        assert summary(again).startswith("3 process(es): 0 applied, 3 already applied")

        reverted = trigger("--revert", op / "value.ulp")
        assert reverted.returncode == 0, reverted.stderr
        assert summary(reverted).startswith("3 process(es): 3 reverted")
        for app in (first, second, third):
            assert results(app) == ORIGINAL


def test_several_pids_and_names_select_processes(op: Path) -> None:
    with start(op) as first, start(op) as second, start(op) as third:
        chosen = trigger(first.pid, second.pid, op / "value.ulp")
        assert chosen.returncode == 0, chosen.stderr
        assert results(first) == results(second) == VALUE_FIXED
        assert results(third) == ORIGINAL
        tag = (op / "tag").read_text()
        named = trigger("-p", f"opapp-{tag[:4]}*", op / "value.ulp")
        # first and second have it already: the worst outcome is "already applied"
        assert named.returncode == 12, named.stderr
        assert summary(named).startswith("3 process(es): 1 applied, 2 already applied")
        assert results(third) == VALUE_FIXED
        nobody = trigger("-p", "no-such-program-anywhere", op / "value.ulp")
        assert nobody.returncode == 6
        assert nobody.stderr.count("\n") == 1 and "no process is named" in nobody.stderr


def test_summary_says_why_and_the_exit_code_is_the_worst(op: Path) -> None:
    with start(op) as good, start(op, preload=False) as without_runtime:
        result = trigger(good.pid, without_runtime.pid, op / "value.ulp")
        assert result.returncode == 8, result.stderr  # NO_RUNTIME is worse than OK
        assert summary(result).startswith("2 process(es): 1 applied, 0 already applied, "
                                          "1 skipped, 0 failed")
        assert "skipped (exit 8, NO_RUNTIME) x1: process N does not have the ulp runtime" \
            in result.stdout
        assert results(good) == VALUE_FIXED
        assert results(without_runtime) == ORIGINAL
        # a debugger holds one agent: FAILED (7) is worse than SKIPPED (8)
        with start(op) as held:
            holder = Tracee(agent_tid(held.pid))
            holder.stop(time.monotonic() + TIMEOUT)
            try:
                failed = trigger(good.pid, held.pid, without_runtime.pid, op / "value.ulp")
            finally:
                holder.detach()
            assert failed.returncode == 7, failed.stderr
            assert summary(failed).startswith("3 process(es): 0 applied, 1 already applied, "
                                              "1 skipped, 1 failed")
            assert "failed (exit 7, PERMISSION) x1: cannot attach to thread" in failed.stdout
            assert results(held) == ORIGINAL


def test_a_damaged_patch_object_stops_the_run_before_any_process(op: Path) -> None:
    broken = op / "broken"
    broken.mkdir(exist_ok=True)
    shutil.copy(op / "libop_twice.so", broken / "libop_twice.so")
    (broken / "twice.desc").write_text(f"libop_twice.so\n@{op}/lib/libop.so\n"
                                       "lib_twice:lib_twice_v2\n")
    assert tool("ulp-packer", broken / "twice.desc").returncode == 0
    packed = bytearray((broken / "twice.ulp").read_bytes())
    packed[-1] ^= 0xFF  # the last byte of the patch object the file carries
    (broken / "twice.ulp").write_bytes(bytes(packed))
    with start(op) as first, start(op) as second:
        failed = trigger(first.pid, second.pid, broken / "twice.ulp")
        assert failed.returncode == 4, failed.stderr  # a malformed patch file
        assert failed.stdout == "" and failed.stderr.count("\n") == 1
        assert "patch object" in failed.stderr
        assert results(first) == results(second) == ORIGINAL


def agent_tid(pid: int) -> int:
    """The agent's thread once it waits in its idle loop (its only ppoll, 271).
    The thread is named before it first runs: held any earlier, it never says
    it started, and a trigger waits for it, then retries (--retries)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        for tid in os.listdir(f"/proc/{pid}/task"):
            task = Path(f"/proc/{pid}/task/{tid}")
            with contextlib.suppress(OSError):
                if (task / "comm").read_text().strip() == "ulp-agent" and \
                        (task / "syscall").read_text().split()[0] == "271":
                    return int(tid)
        time.sleep(0.005)
    raise AssertionError(f"process {pid}: no ulp agent waiting idle within {TIMEOUT} s")


def test_directory_applies_in_dependency_order_skipping_applied(op: Path) -> None:
    with start(op) as fresh, start(op) as half:
        assert trigger(half.pid, op / "value.ulp").returncode == 0
        result = trigger(fresh.pid, half.pid, op / "patches")
        # half had value.ulp already: reported, not an error beyond "already applied"
        assert result.returncode == 12, result.stderr
        assert results(fresh) == results(half) == BOTH_FIXED
        assert summary(result).startswith("2 process(es): 3 applied, 1 already applied")
        reverted = trigger("--revert", fresh.pid, half.pid, op / "patches")
        assert reverted.returncode == 0, reverted.stderr  # twice first, then value
        assert results(fresh) == results(half) == ORIGINAL


def test_json_document(op: Path) -> None:
    with start(op) as app:
        result = trigger("--json", app.pid, op / "value.ulp")
        assert result.returncode == 0, result.stderr
        document = json.loads(result.stdout)
        assert document["exit_code"] == 0
        [entry] = document["results"]
        assert entry["pid"] == app.pid and entry["outcome"] == "applied"
        again = json.loads(trigger("--json", "-p", str(app.pid), app.pid,
                                   op / "value.ulp").stdout)
        assert again["results"][0]["outcome"] == "already applied"
        assert again["results"][0]["exit_name"] == "ALREADY_APPLIED"


def test_single_pid_form_prints_as_before(op: Path) -> None:
    with start(op) as app:
        result = trigger(app.pid, op / "value.ulp")
        assert result.returncode == 0
        assert result.stdout.splitlines() == [
            f"applied patch {result.stdout.split()[2]} to process {app.pid}: lib_value"]
        refused = trigger(app.pid, op / "value.ulp")
        assert refused.returncode == 12
        assert refused.stdout == "" and refused.stderr.startswith("ulp-trigger: ")
        assert refused.stderr.count("\n") == 1


COMMANDS = {
    "ulp-trigger": ["--bogus"],
    "ulp-packer": ["--bogus"],
    "ulp-prepare": ["--bogus"],
    "ulp": ["bogus"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_usage_errors_are_one_line_and_version_is_everywhere(command: str) -> None:
    bad = tool(command, *COMMANDS[command])
    assert bad.returncode == 2
    assert bad.stdout == ""
    lines = bad.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{command}: "), bad.stderr
    version = tool(command, "--version")
    assert version.returncode == 0
    assert version.stdout.startswith(f"{command} ") and version.stdout.count("\n") == 1


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-1", "ten"])
def test_bad_timeouts_are_refused(value: str) -> None:
    for command in (["ulp-trigger", "--timeout", value, "1", "x.ulp"],
                    ["ulp", "status", "1", "--timeout", value]):
        result = tool(*command, timeout=60)
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.count("\n") == 1 and "--timeout" in result.stderr


def run_on_terminal(args: list[str | Path], env: dict[str, str]) -> str:
    """Run a command with stdout and stderr on a pseudo-terminal; its output."""
    controller, terminal = pty.openpty()
    with subprocess.Popen([str(BIN_DIR / "ulp-trigger"), *map(str, args)], stdout=terminal,
                          stderr=terminal, stdin=subprocess.DEVNULL, env=env) as proc:
        os.close(terminal)
        output = b""
        while True:
            ready, _, _ = select.select([controller], [], [], TIMEOUT)
            assert ready, "no output from the command on the terminal"
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the command closed the terminal
                break
            if not chunk:
                break
            output += chunk
        proc.wait(timeout=TIMEOUT)
    os.close(controller)
    return output.decode(errors="replace")


def test_colour_and_progress_only_on_a_terminal_and_never_with_no_color(op: Path) -> None:
    env = dict(os.environ)
    env.pop("NO_COLOR", None)
    with start(op) as first, start(op) as second:
        on_terminal = run_on_terminal(["--timeout", "20", first.pid, second.pid,
                                       op / "value.ulp"], env)
        assert "\x1b[32m2 applied" in on_terminal  # colour
        assert "\r[" in on_terminal and "2/2 processes" in on_terminal  # the progress bar
        no_color = run_on_terminal(["--revert", "--timeout", "20", first.pid, second.pid,
                                    op / "value.ulp"], dict(env, NO_COLOR="1"))
        assert "2 reverted" in no_color and "\x1b[" not in no_color
        piped = trigger(first.pid, second.pid, op / "value.ulp", env=env)
        assert "2 applied" in piped.stdout
        assert "\x1b" not in piped.stdout + piped.stderr and "\r" not in piped.stderr


def test_the_trigger_reads_what_pyelftools_reads(op: Path) -> None:
    """trigger/elfscan.py against the readers the other tools use."""
    from support import RUNTIME
    from ulp.elfinfo import dynamic_symbol_value, open_elf
    from ulp.prepared import PreparedLibrary
    from ulp.trigger.elfscan import ElfScan, read_prepared

    lib = str(op / "lib" / "libop.so")
    fast, full = read_prepared(lib), PreparedLibrary.open(lib)
    assert fast.lib_desc_vaddr == full.lib_desc_vaddr and fast.desc == full.desc
    assert [(f.names, f.entry, f.has_endbr64) for f in fast.functions] == \
        [(f.names, f.entry, f.has_endbr64) for f in full.functions]
    for symbol in ("ulp_mailbox", "ulp_entry", "no_such_symbol"):
        with ElfScan(str(RUNTIME)) as elf, open_elf(str(RUNTIME)) as reference:
            assert elf.dynamic_symbol_value(symbol) == dynamic_symbol_value(reference, symbol)


def test_the_agent_gets_its_scheduling_back(op: Path) -> None:
    with start(op) as app:
        agent = agent_tid(app.pid)
        before = (os.sched_getscheduler(agent), os.sched_getparam(agent))
        assert trigger(app.pid, op / "value.ulp").returncode == 0
        assert (os.sched_getscheduler(agent), os.sched_getparam(agent)) == before
        assert results(app) == VALUE_FIXED


def test_ulp_dump_and_check(op: Path) -> None:
    fields = json.loads(tool("ulp", "dump", "--json", op / "twice.ulp").stdout)
    value = json.loads(tool("ulp", "dump", "--json", op / "value.ulp").stdout)
    assert fields["requires"] == [value["patch_id"]]
    assert fields["functions"] == [{"index": fields["functions"][0]["index"],
                                    "old": "lib_twice", "new": "lib_twice_v2"}]
    assert f"patch id:         {value['patch_id']}" in tool("ulp", "dump", op / "value.ulp").stdout
    with start(op) as app, start(op, preload=False) as without_runtime:
        ok = tool("ulp", "check", app.pid, op / "value.ulp")
        assert ok.returncode == 0 and "is not applied, and can be" in ok.stdout
        refused = tool("ulp", "check", "--json", without_runtime.pid, op / "value.ulp")
        assert refused.returncode == 8
        assert json.loads(refused.stdout)["checks"]["target"].startswith("loaded at")
        # checking changed nothing: the patch still applies, and works
        assert trigger(app.pid, op / "value.ulp").returncode == 0
        assert results(app) == VALUE_FIXED


def test_a_thread_id_names_its_process(op: Path) -> None:
    with start(op) as app:
        agent = agent_tid(app.pid)
        applied = trigger(agent, op / "value.ulp")
        assert applied.returncode == 0, applied.stderr
        assert f"to process {app.pid}:" in applied.stdout
        both = trigger(agent, app.pid, op / "value.ulp")  # one process, named twice
        assert summary(both).startswith("1 process(es): 0 applied, 1 already applied")
        assert results(app) == VALUE_FIXED


def test_an_unprepared_copy_of_the_target_is_named_as_such(op: Path) -> None:
    app = LiveProcess([app_path(op)], env={"LD_LIBRARY_PATH": str(op / "unprepared")})
    with app:
        assert app.next_line() == "ready"
        refused = trigger(app.pid, op / "value.ulp")
        assert refused.returncode == 5, refused.stderr
        assert "is loaded in process" in refused.stderr
        assert "not prepared for live patching" in refused.stderr
        assert results(app) == ORIGINAL


def test_ulp_livepatchable(op: Path) -> None:
    prepared = tool("ulp", "livepatchable", "--json", op / "lib" / "libop.so")
    assert prepared.returncode == 0
    assert json.loads(prepared.stdout)["state"] == "prepared"
    assert set(json.loads(prepared.stdout)["functions"]) == {
        "lib_value", "lib_twice", "lib_value_plus", "lib_half"}
    built = tool("ulp", "livepatchable", op / "unprepared" / "libop.so")
    assert built.returncode == 0 and "patchable (4 function(s) ready, 0 not)" in built.stdout
    assert "run ulp-prepare" in built.stdout
    plain = tool("ulp", "livepatchable", "--json", op / "libop_value.so")
    assert plain.returncode == 5
    assert json.loads(plain.stdout)["state"] == "not patchable"
    not_elf = tool("ulp", "livepatchable", op / "value.desc")
    assert not_elf.returncode == 4 and not_elf.stderr.count("\n") == 1


def test_packer_given_a_patch_file_points_at_dump(op: Path) -> None:
    result = tool("ulp-packer", op / "value.ulp")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--dump" in result.stderr


def test_revert_all_reverts_every_patch_of_a_library_newest_first(op: Path) -> None:
    with start(op) as both, start(op) as one, start(op) as none, \
            start(op, preload=False) as without_runtime:
        assert trigger(both.pid, op / "patches").returncode == 0  # value, then twice
        assert trigger(one.pid, op / "value.ulp").returncode == 0
        assert results(both) == BOTH_FIXED and results(one) == VALUE_FIXED
        # by file name, in the processes given: twice requires value, so it goes first
        result = trigger("--revert-all", "libop.so", both.pid, one.pid, none.pid)
        assert result.returncode == 13, result.stderr  # the worst: none had nothing applied
        assert summary(result).startswith("3 process(es): 3 reverted, 1 not applied, "
                                          "0 skipped, 0 failed")
        lines = [line for line in result.stdout.splitlines()
                 if line.endswith(f"in process {both.pid}")]
        twice, value = (json.loads(tool("ulp", "dump", "--json", op / f"{name}.ulp").stdout)
                        ["patch_id"] for name in ("twice", "value"))
        assert [line.split()[2] for line in lines] == [twice, value]
        assert results(both) == results(one) == results(none) == ORIGINAL
        # by path, no PID: every process with the runtime and that library, no other
        assert trigger(one.pid, op / "value.ulp").returncode == 0
        everywhere = trigger("--json", "--revert-all", op / "lib" / "libop.so")
        document = json.loads(everywhere.stdout)
        assert everywhere.returncode == 13 and document["action"] == "revert-all"
        outcomes = {entry["pid"]: entry["outcome"] for entry in document["results"]}
        assert outcomes == {both.pid: "not applied", one.pid: "reverted",
                            none.pid: "not applied"}
        assert without_runtime.pid not in outcomes
        assert results(one) == ORIGINAL
        assert trigger("--revert-all", "libop.so", "--revert").returncode == 2


def test_runtime_path_is_the_checkouts_runtime_and_preloads(tmp_path: Path) -> None:
    from support import ROOT, RUNTIME

    printed = tool("ulp", "runtime-path")
    assert printed.returncode == 0 and printed.stdout == f"{RUNTIME.resolve()}\n"
    maps = subprocess.run(["sh", "-c", f'LD_PRELOAD="$({BIN_DIR / "ulp"} runtime-path)" '
                           "exec cat /proc/self/maps"], capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert maps.returncode == 0 and str(RUNTIME.resolve()) in maps.stdout, maps.stderr
    # a checkout whose runtime was not built (``python -c`` imports the package of
    # its working directory first): one line, NO_RUNTIME
    shutil.copytree(ROOT / "ulp", tmp_path / "ulp")
    (tmp_path / "runtime").mkdir()
    shutil.copy(ROOT / "runtime" / "ulp_abi.h", tmp_path / "runtime")
    missing = subprocess.run([sys.executable, "-c", "from ulp.cli import main; "
                              "raise SystemExit(main(['runtime-path']))"],
                             capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
    assert missing.returncode == 8 and missing.stdout == ""
    assert missing.stderr.count("\n") == 1 and "make runtime" in missing.stderr, missing.stderr


def test_revert_all_asks_again_when_the_list_does_not_fit_the_message(op: Path) -> None:
    """Four patches with long labels, each requiring the one before: LIST's
    512-byte answer holds three of them."""
    stack = op / "stack"
    stack.mkdir()
    for number in range(4):
        requires = f"requires: {number - 1}.ulp\n" if number else ""
        (stack / f"{number}.desc").write_text(
            f"{op}/libop_value.so\n@{op}/lib/libop.so\n!{number}-{'x' * 90}\n{requires}"
            "lib_value:lib_value_v2\n")
        assert tool("ulp-packer", stack / f"{number}.desc").returncode == 0
        (stack / f"{number}.rev.ulp").unlink()
    with start(op) as app:
        assert trigger(app.pid, stack).returncode == 0
        assert results(app) == VALUE_FIXED
        result = trigger("--revert-all", "libop.so", app.pid)
        assert result.returncode == 0, result.stderr
        labels = [line.split("(", 1)[1][0] for line in result.stdout.splitlines()
                  if line.startswith("reverted patch")]
        assert labels == ["3", "2", "1", "0"]  # newest first, over two LIST answers
        assert results(app) == ORIGINAL
