"""One file that works anywhere (issue 9, item 6): a patch file carries its
patch .so, applies from any directory, to a process in another mount
namespace and chroot that sees none of the patch's files, and packing it is
reproducible.  Real processes, real ptrace; every wait has a timeout."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from support import BIN_DIR, ROOT, RUNTIME, LiveProcess, tool

EXAMPLE = ROOT / "examples" / "portable"
ORIGINAL = "limit=100 allowed(60,40)=0 allowed(60,41)=0"
PATCHED = "limit=100 allowed(60,40)=1 allowed(60,41)=0"


@pytest.fixture(scope="module")
def built(build_dir: Path) -> Path:
    """examples/portable built by its own Makefile: lib/libquota.so (prepared),
    app, libquota_fix.so, quota_fix.desc and the patch files."""
    out = build_dir / "portable"
    result = subprocess.run(["make", "-C", str(EXAMPLE), f"O={out}", f"ULP_BIN={BIN_DIR}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def pack(desc: Path, out: Path, cwd: Path | None = None) -> Path:
    result = subprocess.run([str(BIN_DIR / "ulp-packer"), str(desc), "-o", str(out)],
                            capture_output=True, text=True, timeout=120, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return out


def trigger(*args: str | Path) -> subprocess.CompletedProcess:
    return tool("ulp-trigger", "--timeout", "20", *args)


def call(app: LiveProcess) -> str:
    app.send("call\n")
    return app.next_line()


def test_the_patch_file_alone_applies_from_another_directory(built: Path, tmp_path: Path) -> None:
    """Packed, then the patch .so it was packed from tampered with and removed,
    the patch file copied alone elsewhere: it applies the code it was packed
    with, and its reverse file (copied alone too) reverts it."""
    work = tmp_path / "work"
    work.mkdir()
    for name in ("quota_fix.desc", "libquota_fix.so"):
        shutil.copy(built / name, work / name)
    (work / "lib").symlink_to(built / "lib")
    pack(work / "quota_fix.desc", work / "quota_fix.ulp")
    with open(work / "libquota_fix.so", "ab") as stream:
        stream.write(b"tampered")
    (work / "libquota_fix.so").unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("quota_fix.ulp", "quota_fix.rev.ulp"):
        shutil.copy(work / name, elsewhere / name)
    shutil.rmtree(work)
    with LiveProcess([built / "app"]) as app:
        assert app.next_line() == "ready"
        assert call(app) == ORIGINAL
        applied = trigger(str(app.pid), elsewhere / "quota_fix.ulp")
        assert applied.returncode == 0, applied.stderr
        assert call(app) == PATCHED
        reverted = trigger(str(app.pid), elsewhere / "quota_fix.rev.ulp")
        assert reverted.returncode == 0, reverted.stderr
        assert call(app) == ORIGINAL


def test_packing_is_reproducible(built: Path, tmp_path: Path) -> None:
    """The same inputs give the same bytes: packed twice, from different
    working directories, with different umasks and file times, the patch and
    its reverse are byte for byte the same."""
    outputs = []
    for number, umask in enumerate((0o022, 0o077)):
        out = tmp_path / str(number)
        out.mkdir()
        os.utime(built / "libquota_fix.so", (1_000_000 * (number + 1),) * 2)
        old = os.umask(umask)
        try:
            pack(built / "quota_fix.desc", out / "fix.ulp", cwd=out if number else tmp_path)
        finally:
            os.umask(old)
        outputs.append(((out / "fix.ulp").read_bytes(), (out / "fix.rev.ulp").read_bytes()))
    assert outputs[0] == outputs[1]
    assert outputs[0][0] == (built / "quota_fix.ulp").read_bytes()  # and as make packed it
    assert outputs[0][0] != outputs[0][1]


def chroot_tree(root: Path, app: Path, libdir: Path) -> None:
    """A root holding only the program, its libraries (the prepared one in
    /lib), the runtime and what they load: not the patch's files."""
    (root / "lib").mkdir(parents=True)
    wanted = {app: root / "app", RUNTIME: root / "libulp.so",
              libdir / "libquota.so": root / "lib" / "libquota.so"}
    for binary in (app, RUNTIME):
        listing = subprocess.run(["ldd", str(binary)], capture_output=True, text=True,
                                 timeout=30, env={**os.environ,
                                                  "LD_LIBRARY_PATH": str(libdir)}).stdout
        for path in re.findall(r"(/\S+) \(0x", listing):
            if Path(path).parent != libdir:
                wanted[Path(path)] = root / path.lstrip("/")
    for source, destination in wanted.items():
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, destination)  # the file itself, not a link out of the root


def start_contained(root: Path, with_proc: bool) -> LiveProcess:
    """The program in a mount namespace of its own, chrooted to ``root``
    (with a /proc of its own mounted there when ``with_proc``, as a
    container has)."""
    mount = 'mount -t proc proc "$0/proc" && ' if with_proc else ""
    (root / "proc").mkdir(exist_ok=True)
    app = LiveProcess(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                       f'{mount}exec chroot "$0" /app', root],
                      env={"LD_LIBRARY_PATH": "/lib", "LD_PRELOAD": "/libulp.so"},
                      preload_runtime=False)
    assert app.next_line() == "ready"
    assert os.readlink(f"/proc/{app.pid}/root") == str(root)
    assert os.readlink(f"/proc/{app.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    return app


def loaded(app: LiveProcess) -> list[str]:
    """The file mappings of the process (what was loaded, memfds included);
    anonymous memory, such as the agent's malloc arena, may come and go."""
    lines = Path(f"/proc/{app.pid}/maps").read_text().splitlines()
    return [line for line in lines if len(line.split()) >= 6 and line.split()[5][0] == "/"]


@pytest.fixture
def contained(built: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A root for the program, and a patch file packed outside it."""
    root = tmp_path / "root"
    chroot_tree(root, built / "app", built / "lib")
    patches = tmp_path / "patches"
    patches.mkdir()
    shutil.copy(built / "quota_fix.ulp", patches / "quota_fix.ulp")
    assert not (root / patches.relative_to("/")).exists()
    return root, patches / "quota_fix.ulp"


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot and a new mount namespace need root")
def test_applies_to_a_process_in_a_container_without_the_files(contained) -> None:
    """The target runs in its own mount namespace, chrooted to a tree that
    has the runtime, the target library and /proc but not the patch's
    directory: the patch applies and reverts."""
    root, patch = contained
    with start_contained(root, with_proc=True) as app:
        assert call(app) == ORIGINAL
        applied = trigger(str(app.pid), patch)
        assert applied.returncode == 0, applied.stderr
        assert call(app) == PATCHED
        reverted = trigger("--revert", str(app.pid), patch)
        assert reverted.returncode == 0, reverted.stderr
        assert call(app) == ORIGINAL


@pytest.mark.skipif(os.geteuid() != 0, reason="chroot and a new mount namespace need root")
def test_a_chroot_without_proc_is_refused_with_one_line(contained) -> None:
    """ld.so loads the sealed memfd through /proc/self/fd: a bare chroot
    without /proc is refused, saying so, and the process is left as it was."""
    root, patch = contained
    with start_contained(root, with_proc=False) as app:
        before = loaded(app), os.listdir(f"/proc/{app.pid}/fd")
        refused = trigger(str(app.pid), patch)
        assert refused.returncode == 11, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert "needs /proc mounted in its root" in refused.stderr
        assert call(app) == ORIGINAL
        assert (loaded(app), os.listdir(f"/proc/{app.pid}/fd")) == before
        status = tool("ulp", "status", str(app.pid))
        assert "0 patch(es) applied" in status.stdout, status.stderr


def test_a_file_of_the_earlier_format_is_refused_in_one_line(built: Path, tmp_path: Path) -> None:
    """A version-2 file (the bare metadata record, naming its .so by path):
    one line from each tool, exit 4, and the process is not touched."""
    data = (built / "quota_fix.ulp").read_bytes()
    record_size = int.from_bytes(data[12:16], "little")
    old = tmp_path / "old.ulp"
    record = bytearray(data[56:56 + record_size])
    record[8:10] = b"\x02\x00"  # the record as ulp-packer 2 wrote it as a whole file
    old.write_bytes(bytes(record))
    with LiveProcess([built / "app"]) as app:
        assert app.next_line() == "ready"
        for result in (trigger(str(app.pid), old), tool("ulp-packer", "--dump", old)):
            assert result.returncode == 4, result.stderr
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1, result.stderr
            assert lines[0].endswith("patch format version 2, written by an earlier "
                                     "ulp-packer, does not carry its patch object: pack it "
                                     "again"), lines[0]
        assert call(app) == ORIGINAL
