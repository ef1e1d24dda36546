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

from support import BIN_DIR, C_DIR, RUNTIME, LiveProcess, cc, shared_library, tool

ORIGINAL = "value=100 twice=42 plus=101 half=2.5"
PATCHED = "value=200 twice=42 plus=201 half=2.5"


@pytest.fixture(scope="module")
def built(build_dir: Path) -> Path:
    """lib/libe2e.so (prepared), app, and src/: the patch .so and its description."""
    root = build_dir / "portable"
    (root / "lib").mkdir(parents=True)
    (root / "src").mkdir()
    lib = shared_library(root / "lib" / "libe2e.so", [C_DIR / "e2e_lib.c"])
    assert tool("ulp-prepare", lib).returncode == 0
    cc(root / "app", [C_DIR / "e2e_app.c"], f"-L{root / 'lib'}", "-le2e", "-ldl")
    shared_library(root / "src" / "libe2e_fix.so", [C_DIR / "e2e_fix.c"], patchable=False)
    (root / "src" / "fix.desc").write_text(
        f"libe2e_fix.so\n@{root / 'lib' / 'libe2e.so'}\nlib_value:lib_value_v2\n")
    return root


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
    shutil.copytree(built / "src", work)
    pack(work / "fix.desc", work / "fix.ulp")
    with open(work / "libe2e_fix.so", "ab") as stream:
        stream.write(b"tampered")
    (work / "libe2e_fix.so").unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("fix.ulp", "fix.rev.ulp"):
        shutil.copy(work / name, elsewhere / name)
    shutil.rmtree(work)
    app = LiveProcess([built / "app"], env={"LD_LIBRARY_PATH": str(built / "lib")})
    with app:
        assert app.next_line() == "ready"
        applied = trigger(str(app.pid), elsewhere / "fix.ulp")
        assert applied.returncode == 0, applied.stderr
        assert call(app) == PATCHED
        reverted = trigger(str(app.pid), elsewhere / "fix.rev.ulp")
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
        os.utime(built / "src" / "libe2e_fix.so", (1_000_000 * (number + 1),) * 2)
        old = os.umask(umask)
        try:
            pack(built / "src" / "fix.desc", out / "fix.ulp", cwd=out if number else tmp_path)
        finally:
            os.umask(old)
        outputs.append(((out / "fix.ulp").read_bytes(), (out / "fix.rev.ulp").read_bytes()))
    assert outputs[0] == outputs[1]
    assert outputs[0][0] != outputs[0][1]


def chroot_tree(root: Path, app: Path, libdir: Path) -> None:
    """A root holding only the program, its libraries (the prepared one in
    /lib), the runtime and what they load: not the patch's files."""
    (root / "lib").mkdir(parents=True)
    wanted = {app: root / "app", RUNTIME: root / "libulp.so",
              libdir / "libe2e.so": root / "lib" / "libe2e.so"}
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
    pack(built / "src" / "fix.desc", patches / "fix.ulp")
    assert not (root / patches.relative_to("/")).exists()
    return root, patches / "fix.ulp"


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
