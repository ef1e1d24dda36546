"""What runs is what was checked (issue 7, items 1-4).  Real processes, real
ptrace; every wait has a timeout.

1. a patch object is never taken for another one loaded earlier;
2. the bytes hashed are the bytes mapped: rewriting the patch .so during or
   after apply changes nothing that runs;
3. a patch file another user could change is refused (it carries its .so);
4. only regular files are read, by every tool and by the runtime;
5. a patch id is bound to the patch's content.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from support import C_DIR, LiveProcess, cc, rechecksummed_patch, shared_library, tool
from ulp import agent_abi, metadata, patchfile
from ulp.agent_abi import Op, Request, Status
from ulp.errors import ExitCode
from ulp.process import Process
from ulp.trigger import cli
from ulp.trigger.agent import Agent
from ulp.trigger.tracee import block_sigchld

ORIGINAL = "value=1"
TOOL_TIMEOUT = 60  # a tool that blocks on a FIFO would never end: fail instead


@pytest.fixture(scope="module")
def pv(build_dir: Path) -> Path:
    """lib/libpv.so (prepared), app, and patch objects replacing pv_value:
    libfix1.so (pv_value_fix, 2), libfix1b.so (the same size, 7),
    libfix2.so (pv_value_fix, 3), libfix3.so (pv_value_other, 4);
    p1.ulp, p2.ulp and p3.ulp pack the first, third and fourth."""
    root = build_dir / "pv"
    (root / "lib").mkdir(parents=True)
    lib = shared_library(root / "lib" / "libpv.so", [C_DIR / "pv_lib.c"])
    assert tool("ulp-prepare", lib).returncode == 0
    cc(root / "app", [C_DIR / "pv_app.c"], f"-L{root / 'lib'}", "-lpv", "-ldl")
    for name, value, symbol in (("fix1", 2, "pv_value_fix"), ("fix1b", 7, "pv_value_fix"),
                                ("fix2", 3, "pv_value_fix"), ("fix3", 4, "pv_value_other")):
        shared_library(root / f"lib{name}.so", [C_DIR / "pv_fix.c"], f"-DPV_VALUE={value}",
                       f"-DPV_NAME={symbol}", patchable=False)
    assert (root / "libfix1.so").stat().st_size == (root / "libfix1b.so").stat().st_size
    pack(root, "p1", "libfix1.so", "pv_value:pv_value_fix")
    pack(root, "p2", "libfix2.so", "pv_value:pv_value_fix")
    pack(root, "p3", "libfix3.so", "pv_value:pv_value_other")
    return root


def pack(directory: Path, name: str, so: str, *pairs: str, target: Path | None = None) -> Path:
    target = target or directory / "lib" / "libpv.so"
    (directory / f"{name}.desc").write_text("\n".join([so, f"@{target}", *pairs]) + "\n")
    packed = tool("ulp-packer", directory / f"{name}.desc", "-o", directory / f"{name}.ulp")
    assert packed.returncode == 0, packed.stderr
    return directory / f"{name}.ulp"


def private_copy(pv: Path, tmp_path: Path, *names: str) -> Path:
    """A directory of its own (mode 0755) holding copies of ``names``."""
    directory = tmp_path / "own"
    directory.mkdir(mode=0o755, parents=True)
    os.chmod(directory, 0o755)
    for name in names:
        shutil.copy(pv / name, directory / name)
        os.chmod(directory / name, 0o644)
    return directory


# --- driving ---------------------------------------------------------------------------


def start(pv: Path) -> LiveProcess:
    app = LiveProcess([pv / "app"], env={"LD_LIBRARY_PATH": str(pv / "lib")})
    assert app.next_line() == "ready"
    return app


def call(app: LiveProcess) -> str:
    app.send("call\n")
    return app.next_line()


def objects(app: LiveProcess) -> list[str]:
    app.send("objects\n")
    return app.next_line().split("|")


def trigger(*args: str | Path) -> subprocess.CompletedProcess:
    return tool("ulp-trigger", "--timeout", "20", "--retries", "20", *args,
                timeout=TOOL_TIMEOUT)


def trigger_here(*args: str | Path) -> tuple[int, str]:
    """ulp-trigger's main() in this process (fast, for loops): exit code, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["--timeout", "20", "--retries", "20", *map(str, args)])
    return code, err.getvalue()


def ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr


def one_line_error(result: subprocess.CompletedProcess, code: int, words: str,
                   prog: str = "ulp-trigger") -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: "), result.stderr
    assert words in lines[0], lines[0]
    return lines[0]


def snapshot(app: LiveProcess) -> tuple[list[str], list[str]]:
    """The target's mappings and descriptors: what a refusal must leave alone."""
    maps = Path(f"/proc/{app.pid}/maps").read_text().splitlines()
    fds = sorted(os.listdir(f"/proc/{app.pid}/fd"))
    return maps, fds


def applied(app: LiveProcess) -> list[str]:
    status = tool("ulp", "status", str(app.pid), timeout=TOOL_TIMEOUT)
    assert status.returncode == 0, status.stderr
    return [line.strip() for line in status.stdout.splitlines()[1:] if line.strip()]


def patch_id(path: Path) -> str:
    return patchfile.read_patch(str(path)).patch_id_hex


# --- 1. a patch object is never taken for an earlier one ----------------------------------


def test_reapplied_patch_then_another_patch_runs_its_own_code(pv: Path) -> None:
    """P1 applied, reverted, applied, reverted; then P2, whose replacement
    has P1's name: P2's code runs.  Then P3 (another name) applies too.  The
    link map names each patch object by its path, as gdb shows it."""
    with start(pv) as app:
        for _ in range(2):
            ok(trigger(app.pid, pv / "p1.ulp"))
            assert call(app) == "value=2"
            ok(trigger("--revert", app.pid, pv / "p1.ulp"))
            assert call(app) == ORIGINAL
        ok(trigger(app.pid, pv / "p2.ulp"))
        assert call(app) == "value=3"
        assert applied(app) == [patch_id(pv / "p2.ulp")]
        ok(trigger("--revert", app.pid, pv / "p2.ulp"))
        ok(trigger(app.pid, pv / "p3.ulp"))
        assert call(app) == "value=4"
        names = objects(app)
        for so in ("libfix1.so", "libfix2.so", "libfix3.so"):
            assert str(pv / so) in names, names
        assert not [name for name in names if name.startswith("/proc/self/fd/")], names
        # every patch object is its own sealed memfd, which the runtime keeps open
        memfds = [os.readlink(f"/proc/{app.pid}/fd/{fd}") for fd in os.listdir(
            f"/proc/{app.pid}/fd")]
        assert sum(link.startswith("/memfd:ulp-patch") for link in memfds) == 3, memfds


def test_name_an_application_object_carries_is_not_taken(pv: Path) -> None:
    """The application loaded libfix2.so as /proc/self/fd/N and closed N: the
    memfd of the next patch gets N.  The runtime loads it under another name
    instead of being handed the application's object (whose pv_value_fix
    returns 3)."""
    with start(pv) as app:
        app.send(f"dlfd {pv / 'libfix2.so'}\n")
        reply = app.next_line()
        assert reply.startswith("dlfd ") and "failed" not in reply, reply
        ok(trigger(app.pid, pv / "p1.ulp"))
        assert call(app) == "value=2"
        assert str(pv / "libfix1.so") in objects(app)


# --- 2. the bytes hashed are the bytes mapped ----------------------------------------------


def test_patch_object_rewritten_after_apply_changes_nothing(pv: Path, tmp_path: Path) -> None:
    """The patch .so is rewritten in place after the apply: nothing changes,
    and the patch file, which carries the bytes it was packed with, still
    applies them (the file on disk is never read again)."""
    own = private_copy(pv, tmp_path, "libfix1.so")
    patch = pack(own, "p", "libfix1.so", "pv_value:pv_value_fix", target=pv / "lib" / "libpv.so")
    with start(pv) as app:
        ok(trigger(app.pid, patch))
        assert call(app) == "value=2"
        # in place, same inode: a MAP_PRIVATE mapping of the file would follow
        with open(own / "libfix1.so", "r+b") as stream:
            stream.write((pv / "libfix1b.so").read_bytes())
        for _ in range(3):
            assert call(app) == "value=2"
        ok(trigger("--revert", app.pid, patch))
        assert call(app) == ORIGINAL
        ok(trigger(app.pid, patch))
        assert call(app) == "value=2"


def test_writer_during_apply_cannot_get_unhashed_code_run(pv: Path, tmp_path: Path) -> None:
    """A writer flips the patch object inside the patch file between the
    packed bytes (2) and others of the same size (7) while the patch is
    applied and reverted: each apply is refused (the object is not the one
    the metadata names) or runs 2, never 7."""
    own = private_copy(pv, tmp_path, "libfix1.so")
    patch = pack(own, "p", "libfix1.so", "pv_value:pv_value_fix", target=pv / "lib" / "libpv.so")
    good, bad = (pv / "libfix1.so").read_bytes(), (pv / "libfix1b.so").read_bytes()
    at = patch.read_bytes().index(good)
    intact = shutil.copy(patch, tmp_path / "intact.ulp")  # reverts: not the file being written
    stop = threading.Event()

    def writer() -> None:
        with open(patch, "r+b", buffering=0) as stream:
            while not stop.is_set():
                for data, pause in ((bad, 0.001), (good, 0.004)):
                    stream.seek(at)
                    stream.write(data)
                    time.sleep(pause)

    block_sigchld()
    thread = threading.Thread(target=writer, daemon=True)
    results = {0: 0, ExitCode.BAD_INPUT: 0}
    with start(pv) as app:
        thread.start()
        try:
            for _ in range(40):
                code, err = trigger_here(app.pid, patch)
                assert code in results, err
                results[code] += 1
                if code == 0:
                    for _ in range(3):
                        assert call(app) == "value=2"
                        time.sleep(0.003)  # let the writer write the other bytes
                    code, err = trigger_here("--revert", app.pid, intact)
                    assert code == 0, err
                assert call(app) == ORIGINAL
        finally:
            stop.set()
            thread.join(10)
    assert results[0] > 0, results


# --- 3. files another user could change -------------------------------------------------------


UNSAFE_CASES = {
    "ulp group-writable": ("ulp", lambda p: os.chmod(p, 0o664), "writable by group or others"),
    "ulp world-writable": ("ulp", lambda p: os.chmod(p, 0o666), "writable by group or others"),
    "ulp foreign": ("ulp", lambda p: os.chown(p, 65534, 65534), "owned by uid 65534"),
    "directory world-writable": ("dir", lambda p: os.chmod(p, 0o777),
                                 "is writable by group or others"),
    "directory foreign": ("dir", lambda p: os.chown(p, 65534, -1), "is owned by uid 65534"),
}


@pytest.mark.skipif(os.geteuid() != 0, reason="making files of another user needs root")
def test_files_another_user_could_change_are_refused(pv: Path, tmp_path: Path) -> None:
    with start(pv) as app:
        before = snapshot(app)
        for number, (case, (which, spoil, words)) in enumerate(UNSAFE_CASES.items()):
            directory = private_copy(pv, tmp_path / str(number), "libfix1.so")
            patch = pack(directory, "p", "libfix1.so", "pv_value:pv_value_fix",
                         target=pv / "lib" / "libpv.so")
            spoil({"ulp": patch, "dir": directory}[which])
            line = one_line_error(trigger(app.pid, patch), ExitCode.UNSAFE_FILE, words)
            assert "refusing" in line, (case, line)
            assert call(app) == ORIGINAL, case
            assert snapshot(app) == before, case
        # a sticky directory (like /tmp) is fine: others cannot replace our entries
        directory = private_copy(pv, tmp_path / "sticky", "libfix1.so")
        patch = pack(directory, "p", "libfix1.so", "pv_value:pv_value_fix",
                         target=pv / "lib" / "libpv.so")
        os.chmod(directory, 0o1777)
        ok(trigger(app.pid, patch))
        assert call(app) == "value=2"


@pytest.mark.skipif(os.geteuid() != 0, reason="making files of another user needs root")
def test_the_patch_so_on_disk_does_not_matter_once_packed(pv: Path, tmp_path: Path) -> None:
    """The patch file carries its object: a patch .so that another user could
    change since, or that is gone, is never read, so it is no reason to refuse
    (the patch file itself is what the trust checks guard)."""
    spoils = {"group-writable": lambda p: os.chmod(p, 0o664),
              "foreign": lambda p: os.chown(p, 65534, -1), "removed": os.unlink}
    with start(pv) as app:
        for number, (case, spoil) in enumerate(spoils.items()):
            directory = private_copy(pv, tmp_path / str(number), "libfix1.so")
            patch = pack(directory, "p", "libfix1.so", "pv_value:pv_value_fix",
                         target=pv / "lib" / "libpv.so")
            spoil(directory / "libfix1.so")
            ok(trigger(app.pid, patch))
            assert call(app) == "value=2", case
            ok(trigger("--revert", app.pid, patch))
            assert call(app) == ORIGINAL, case


# --- 4. only regular files are read --------------------------------------------------------------


def test_fifo_or_device_as_an_input_is_refused_without_blocking(pv: Path,
                                                                tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with start(pv) as app:
        before = snapshot(app)
        for source in (fifo, Path("/dev/zero")):
            one_line_error(trigger(app.pid, source), ExitCode.FILE_MISSING, "not a regular file")
        assert snapshot(app) == before
        # the agent still answers, and a valid patch applies
        assert applied(app) == []
        ok(trigger(app.pid, pv / "p1.ulp"))
        assert call(app) == "value=2"

    target = pv / "lib" / "libpv.so"
    desc = tmp_path / "so.desc"
    desc.write_text(f"{fifo}\n@{target}\npv_value:pv_value_fix\n")
    cases = [
        ("ulp-packer", [fifo]),                    # the description
        ("ulp-packer", [desc]),                    # the patch .so it names
        ("ulp-packer", ["--dump", fifo]),
        ("ulp-prepare", [fifo]),
    ]
    target_desc = tmp_path / "target.desc"
    target_desc.write_text(f"{pv / 'libfix1.so'}\n@{fifo}\npv_value:pv_value_fix\n")
    cases.append(("ulp-packer", [target_desc]))    # the target library
    requires_desc = tmp_path / "requires.desc"
    requires_desc.write_text(f"{pv / 'libfix1.so'}\n@{target}\npv_value:pv_value_fix\n"
                             f"requires: {fifo}\n")
    cases.append(("ulp-packer", [requires_desc]))  # a required patch
    for prog, args in cases:
        result = tool(prog, *args, timeout=TOOL_TIMEOUT)
        one_line_error(result, ExitCode.FILE_MISSING, "not a regular file", prog=prog)


# --- 5. the patch id is bound to the content ---------------------------------------------------


def test_patch_with_an_id_its_content_does_not_give_is_refused(pv: Path,
                                                              tmp_path: Path) -> None:
    """p1.ulp re-checksummed with a new id, or with p2's id: refused before
    the process is touched.  p1 itself applies, and p2 with it."""
    data = (pv / "p1.ulp").read_bytes()
    forged = {"new": b"\x42" * 16, "p2": bytes.fromhex(patch_id(pv / "p2.ulp"))}
    with start(pv) as app:
        before = snapshot(app)
        for name, new_id in forged.items():
            forged_file = bytearray(data)
            at = patchfile.HEADER_SIZE + metadata.HEADER_SIZE  # the record's first field
            forged_file[at:at + 16] = new_id
            path = tmp_path / f"{name}.ulp"
            path.write_bytes(rechecksummed_patch(bytes(forged_file)))
            one_line_error(trigger(app.pid, path), ExitCode.BAD_INPUT,
                           "does not match its content")
            assert snapshot(app) == before
        ok(trigger(app.pid, pv / "p1.ulp"))
        ok(trigger(app.pid, pv / "p2.ulp"))  # stacked on p1
        assert call(app) == "value=3"
        assert sorted(applied(app)) == sorted([patch_id(pv / "p1.ulp"), patch_id(pv / "p2.ulp")])


def test_runtime_checks_id_staging_and_descriptor_itself(pv: Path, tmp_path: Path) -> None:
    """Requests a buggy or hostile trigger could send, straight to the agent:
    an id that does not match the request, a descriptor that is not the
    staged memfd (here the process's stdin), a path naming a FIFO (never
    opened), bytes that do not match the hash, staged or carried in the
    request (SO_INLINE), a request claiming more bytes than it carries, a
    memfd staged and never prepared.  Each refused (the FIFO path is
    accepted: it only names the object), the agent answers on, and no
    descriptor is left behind."""
    md = patchfile.read_patch(str(pv / "p1.ulp"))
    good = (pv / "libfix1.so").read_bytes()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    block_sigchld()
    with start(pv) as app:
        before = snapshot(app)
        process = Process(app.pid)
        try:
            from ulp.trigger.transition import find_target
            lib_desc = find_target(process, md).lib_desc
            agent = Agent(process, 20)
            agent.attach()
            try:
                def prepare(**changes) -> tuple[int, str]:
                    fields = dict(patch_id=md.patch_id, lib_desc=lib_desc,
                                  identity=md.target_identity, so_sha256=md.patch_so_sha256,
                                  so_path=md.patch_so_path, so_size=len(good),
                                  units=tuple((u.index, u.new_name) for u in md.units))
                    fields.update(changes)
                    return agent.call(Request(Op.PREPARE, **fields))

                def stage(data: bytes) -> int:
                    assert agent.call(Request(Op.STAGE))[0] == Status.OK
                    return agent.fill_staged(data)

                fd = stage(good)
                status, message = prepare(patch_id=b"\x42" * 16, so_fd=fd)
                assert status == Status.PATCH_ID, message
                status, message = prepare(so_fd=0)
                assert status == Status.STAGE and "no staged patch object" in message, message
                status, message = prepare(so_fd=stage(good), so_path=str(fifo))
                assert status == Status.OK, message  # the path only names the object
                assert agent.call(Request(Op.ABORT, patch_id=md.patch_id))[0] == Status.OK
                bad = (pv / "libfix1b.so").read_bytes()
                status, message = prepare(so_fd=stage(bad))
                assert status == Status.PATCH_HASH, message
                status, message = prepare(so_fd=stage(good[:-1]))
                assert status == Status.PATCH_HASH and "bytes" in message, message
                inline = agent_abi.SO_INLINE
                status, message = prepare(so_fd=inline, inline_object=bad)
                assert status == Status.PATCH_HASH, message
                status, message = prepare(so_fd=inline, so_size=len(good) - 1,
                                          inline_object=good[:-1])
                assert status == Status.PATCH_HASH, message
                status, message = prepare(so_fd=inline, so_size=len(good) + 100,
                                          inline_object=good)
                assert status == Status.STAGE and "cannot copy" in message, message
                status, message = prepare(so_fd=inline, so_size=0)
                assert status == Status.STAGE and "cannot copy" in message, message
                stage(good)  # dropped by the next PREPARE, which carries its object
                status, message = prepare(so_fd=inline, inline_object=good)
                assert status == Status.OK, message
                assert agent.call(Request(Op.ABORT, patch_id=md.patch_id))[0] == Status.OK
                stage(good)  # and left staged, as by a trigger that dies here
            finally:
                agent.release()
        finally:
            process.close()
        assert call(app) == ORIGINAL
        assert applied(app) == []  # the next request closes the staged memfd
        # one object was loaded (then its patch aborted) and keeps its memfd;
        # no staged descriptor is left behind
        added = set(snapshot(app)[1]) - set(before[1])
        assert len(added) == 1, added
        assert os.readlink(f"/proc/{app.pid}/fd/{added.pop()}").startswith("/memfd:ulp-patch")
        ok(trigger(app.pid, pv / "p1.ulp"))
        assert call(app) == "value=2"


# --- the ABI mirror ----------------------------------------------------------------------------


ABI_PROBE = r"""
#include <stddef.h>
#include <stdio.h>
#include "ulp_abi.h"
#define FIELD(type, name) printf(#type "." #name " %zu %zu %d\n", offsetof(struct type, name), \
    sizeof(((struct type *)0)->name), (__typeof__(((struct type *)0)->name))-1 < 0)
#define ARRAY(type, name) printf(#type "." #name " %zu %zu 0\n", offsetof(struct type, name), \
    sizeof(((struct type *)0)->name))
#define VALUE(name) printf(#name " %lld\n", (long long)(name))
int main(void)
{
    ARRAY(ulp_mailbox, magic); FIELD(ulp_mailbox, abi_version); FIELD(ulp_mailbox, state);
    FIELD(ulp_mailbox, agent_tid); FIELD(ulp_mailbox, serial); FIELD(ulp_mailbox, status);
    FIELD(ulp_mailbox, request_size); FIELD(ulp_mailbox, dispatch);
    FIELD(ulp_mailbox, call_stack_top); FIELD(ulp_mailbox, universe_address);
    FIELD(ulp_mailbox, staged_fd); FIELD(ulp_mailbox, features);
    FIELD(ulp_mailbox, idle_address); FIELD(ulp_mailbox, applied_table);
    ARRAY(ulp_applied_table, magic); FIELD(ulp_applied_table, generation);
    FIELD(ulp_applied_table, count); FIELD(ulp_applied_table, more);
    FIELD(ulp_applied_table, reserved);
    ARRAY(ulp_applied_patch, id); FIELD(ulp_applied_patch, lib_desc);
    FIELD(ulp_applied_patch, universe); FIELD(ulp_applied_patch, time_ns);
    FIELD(ulp_applied_patch, part); FIELD(ulp_applied_patch, nparts);
    FIELD(ulp_applied_patch, reserved); ARRAY(ulp_applied_patch, label);
    ARRAY(ulp_applied_patch, object);
    VALUE(sizeof(struct ulp_applied_patch)); VALUE(ULP_APPLIED_MAX);
    VALUE(offsetof(struct ulp_applied_table, entries));
    printf("applied_magic %s\n", ULP_APPLIED_MAGIC);
    ARRAY(ulp_mailbox, message); ARRAY(ulp_mailbox, request);
    FIELD(ulp_request, op); FIELD(ulp_request, nunits); FIELD(ulp_request, ndeps);
    FIELD(ulp_request, strings_size); ARRAY(ulp_request, patch_id); FIELD(ulp_request, lib_desc);
    ARRAY(ulp_request, identity); ARRAY(ulp_request, so_sha256); FIELD(ulp_request, so_path);
    FIELD(ulp_request, so_fd); FIELD(ulp_request, so_size);
    FIELD(ulp_request, nprivate); FIELD(ulp_request, nrefs); FIELD(ulp_request, label);
    FIELD(ulp_request, part); FIELD(ulp_request, nparts);
    FIELD(ulp_request, nthreads); FIELD(ulp_request, flags);
    FIELD(ulp_request_thread, tid); FIELD(ulp_request_thread, reserved);
    FIELD(ulp_request_thread, rip); FIELD(ulp_request_thread, rsp);
    FIELD(ulp_request_thread, thread_pointer); FIELD(ulp_request_thread, stack_low);
    FIELD(ulp_request_thread, stack_high); FIELD(ulp_request_thread, here_high);
    FIELD(ulp_request_unit, index); FIELD(ulp_request_unit, name);
    FIELD(ulp_request_private, entry_delta); FIELD(ulp_request_private, name);
    FIELD(ulp_request_private, flags); FIELD(ulp_request_private, desc);
    FIELD(ulp_request_private, size);
    FIELD(ulp_request_ref, kind); FIELD(ulp_request_ref, name); FIELD(ulp_request_ref, delta);
    VALUE(sizeof(struct ulp_request)); VALUE(sizeof(struct ulp_request_unit));
    VALUE(sizeof(struct ulp_request_private)); VALUE(sizeof(struct ulp_request_ref));
    VALUE(sizeof(struct ulp_request_thread));
    VALUE(ULP_ABI_VERSION); VALUE(ULP_MESSAGE_MAX); VALUE(ULP_REQUEST_MAX);
    VALUE(ULP_REQUEST_KEEP_PINS);
    VALUE(ULP_REQUEST_TRUST_STACKS); VALUE(ULP_SO_INLINE); VALUE(ULP_FEATURE_INLINE_OBJECT);
    VALUE(ULP_REQUEST_FILL_BOUNDS); VALUE(ULP_FEATURE_THREAD_BOUNDS);
    printf("magic %s\n", ULP_MAILBOX_MAGIC);
@VALUES@
    return 0;
}
"""

MAILBOX_FIELDS = ["magic", "abi_version", "state", "agent_tid", "serial", "status",
                  "request_size", "dispatch", "call_stack_top", "universe_address", "staged_fd",
                  "features", "idle_address", "applied_table"]
APPLIED_TABLE_FIELDS = ["magic", "generation", "count", "more", "reserved"]
APPLIED_PATCH_FIELDS = ["id", "lib_desc", "universe", "time_ns", "part", "nparts", "reserved",
                        "label", "object"]
REQUEST_FIELDS = ["op", "nunits", "ndeps", "strings_size", "patch_id", "lib_desc", "identity",
                  "so_sha256", "so_path", "so_fd", "so_size", "nprivate", "nrefs", "label",
                  "part", "nparts", "nthreads", "flags"]
THREAD_FIELDS = ["tid", "reserved", "rip", "rsp", "thread_pointer", "stack_low", "stack_high",
                 "here_high"]


def layout_of(fmt: str, names: list[str]) -> dict[str, tuple[int, int, int]]:
    """name -> (offset, size, signed) of each item of a struct format."""
    items = []
    count = ""
    for char in fmt[1:]:
        if char.isdigit():
            count += char
            continue
        items.append((int(count or 1), char))
        count = ""
    layout, offset = {}, 0
    for name, (number, char) in zip(names, items, strict=True):
        size = struct.calcsize(f"<{number}{char}")
        layout[name] = (offset, size, int(char in "bhilq" and number == 1))
        offset += size
    return layout


def test_python_mirror_matches_the_c_header(tmp_path: Path) -> None:
    enums = [f"    VALUE(ULP_OP_{op.name});" for op in Op]
    enums += [f"    VALUE({'ULP_OK' if s == Status.OK else 'ULP_E_' + s.name});" for s in Status]
    enums += [f"    VALUE(ULP_AGENT_{state.name});" for state in agent_abi.AgentState]
    enums += [f"    VALUE(ULP_REF_{kind.name});" for kind in agent_abi.RefKind]
    source = tmp_path / "probe.c"
    source.write_text(ABI_PROBE.replace("@VALUES@", "\n".join(enums)))
    probe = cc(tmp_path / "probe", [source], f"-I{C_DIR.parent.parent / 'runtime'}")
    lines = subprocess.run([probe], capture_output=True, text=True, timeout=30,
                           check=True).stdout.splitlines()
    fields = {line.split()[0]: tuple(map(int, line.split()[1:])) for line in lines
              if line.startswith("ulp_") and "." in line.split()[0]}
    values = dict(line.rsplit(" ", 1) for line in lines if line.split()[0] not in fields)
    expected = {f"ulp_mailbox.{name}": value for name, value in
                layout_of(agent_abi.MAILBOX_HEADER_FORMAT, MAILBOX_FIELDS).items()}
    expected |= {f"ulp_request.{name}": value for name, value in
                 layout_of(agent_abi.REQUEST_HEADER_FORMAT, REQUEST_FIELDS).items()}
    expected |= {f"ulp_request_unit.{name}": value for name, value in
                 layout_of(agent_abi.REQUEST_UNIT_FORMAT, ["index", "name"]).items()}
    expected |= {f"ulp_request_private.{name}": value for name, value in
                 layout_of(agent_abi.REQUEST_PRIVATE_FORMAT,
                           ["entry_delta", "name", "flags", "desc", "size"]).items()}
    expected |= {f"ulp_request_ref.{name}": value for name, value in
                 layout_of(agent_abi.REQUEST_REF_FORMAT, ["kind", "name", "delta"]).items()}
    expected |= {f"ulp_request_thread.{name}": value for name, value in
                 layout_of(agent_abi.REQUEST_THREAD_FORMAT, THREAD_FIELDS).items()}
    expected |= {f"ulp_applied_table.{name}": value for name, value in
                 layout_of(agent_abi.APPLIED_TABLE_FORMAT, APPLIED_TABLE_FIELDS).items()}
    expected |= {f"ulp_applied_patch.{name}": value for name, value in
                 layout_of(agent_abi.APPLIED_PATCH_FORMAT, APPLIED_PATCH_FIELDS).items()}
    expected["ulp_mailbox.message"] = (agent_abi.MESSAGE_OFFSET, agent_abi.MESSAGE_MAX, 0)
    expected["ulp_mailbox.request"] = (agent_abi.REQUEST_OFFSET, agent_abi.REQUEST_MAX, 0)
    assert set(expected) == set(fields)
    for name, (offset, size, signed) in expected.items():
        c_offset, c_size, c_signed = fields[name]
        assert (c_offset, c_size) == (offset, size), name
        assert c_signed == signed, name
    assert fields["ulp_mailbox.serial"][0] == agent_abi.SERIAL_OFFSET
    assert fields["ulp_mailbox.request_size"][0] == agent_abi.REQUEST_SIZE_OFFSET
    assert fields["ulp_mailbox.staged_fd"][0] == agent_abi.STAGED_FD_OFFSET
    assert int(values["sizeof(struct ulp_request)"]) == struct.calcsize(
        agent_abi.REQUEST_HEADER_FORMAT)
    assert int(values["sizeof(struct ulp_request_unit)"]) == struct.calcsize(
        agent_abi.REQUEST_UNIT_FORMAT)
    assert int(values["sizeof(struct ulp_request_private)"]) == struct.calcsize(
        agent_abi.REQUEST_PRIVATE_FORMAT)
    assert int(values["sizeof(struct ulp_request_ref)"]) == struct.calcsize(
        agent_abi.REQUEST_REF_FORMAT)
    assert int(values["sizeof(struct ulp_request_thread)"]) == struct.calcsize(
        agent_abi.REQUEST_THREAD_FORMAT)
    assert fields["ulp_request_private.desc"][0] == agent_abi.REQUEST_PRIVATE_DESC_OFFSET
    assert int(values["ULP_ABI_VERSION"]) == agent_abi.ABI_VERSION
    assert int(values["ULP_REQUEST_KEEP_PINS"]) == agent_abi.REQUEST_KEEP_PINS
    assert int(values["ULP_REQUEST_TRUST_STACKS"]) == agent_abi.REQUEST_TRUST_STACKS
    assert int(values["ULP_SO_INLINE"]) == agent_abi.SO_INLINE
    assert int(values["ULP_FEATURE_INLINE_OBJECT"]) == agent_abi.FEATURE_INLINE_OBJECT
    assert int(values["ULP_REQUEST_FILL_BOUNDS"]) == agent_abi.REQUEST_FILL_BOUNDS
    assert int(values["ULP_FEATURE_THREAD_BOUNDS"]) == agent_abi.FEATURE_THREAD_BOUNDS
    assert int(values["ULP_MESSAGE_MAX"]) == agent_abi.MESSAGE_MAX
    assert int(values["ULP_REQUEST_MAX"]) == agent_abi.REQUEST_MAX
    assert values["magic"].encode() + b"\0" == agent_abi.MAILBOX_MAGIC
    assert values["applied_magic"].encode() + b"\0" == agent_abi.APPLIED_MAGIC
    assert int(values["sizeof(struct ulp_applied_patch)"]) == struct.calcsize(
        agent_abi.APPLIED_PATCH_FORMAT)
    assert int(values["offsetof(struct ulp_applied_table, entries)"]) == struct.calcsize(
        agent_abi.APPLIED_TABLE_FORMAT)
    assert int(values["ULP_APPLIED_MAX"]) == agent_abi.APPLIED_MAX
    for op in Op:
        assert int(values[f"ULP_OP_{op.name}"]) == op
    for status in Status:
        assert int(values["ULP_OK" if status == Status.OK else f"ULP_E_{status.name}"]) == status
    for state in agent_abi.AgentState:
        assert int(values[f"ULP_AGENT_{state.name}"]) == state
    for kind in agent_abi.RefKind:
        assert int(values[f"ULP_REF_{kind.name}"]) == kind
