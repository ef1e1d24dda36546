"""make demo: build a live-patchable library, run a program on it, then patch
and unpatch the running program.  Every step shows the command it runs."""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo"
BUILD = ROOT / "build" / "demo"
BIN = Path(sys.executable).parent
RUNTIME = ROOT / "runtime" / "libulp.so"
TIMEOUT = 20.0


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def run(*command: str | Path) -> None:
    shown = [Path(part).name if str(part).startswith(str(BIN)) else str(part)
             for part in command]
    print("$ " + " ".join(shown), flush=True)
    subprocess.run([str(part) for part in command], check=True, cwd=BUILD, timeout=120)


def build() -> None:
    step("build the library live-patchable, prepare it, build the patch and pack it "
         f"(in {BUILD.relative_to(ROOT)}: every command below runs there as shown)")
    shutil.rmtree(BUILD, ignore_errors=True)
    BUILD.mkdir(parents=True)
    for name in ("libgreet.c", "greet_fix.c", "app.c", "patch.desc"):
        shutil.copy(DEMO / name, BUILD / name)
    flags = subprocess.run([BIN / "ulp-prepare", "--cflags"], check=True, text=True,
                           capture_output=True).stdout.split()
    run("gcc", "-O2", "-g", "-fPIC", "-shared", *flags, "-o", "libgreet.so", "libgreet.c")
    run(BIN / "ulp-prepare", "libgreet.so")
    run("gcc", "-O2", "-o", "app", "app.c", "-L.", "-lgreet", "-Wl,-rpath,$ORIGIN")
    run("gcc", "-O2", "-fPIC", "-shared", "-o", "libgreet_fix.so", "greet_fix.c")
    run(BIN / "ulp-packer", "patch.desc", "-o", "patch.ulp")


class App:
    def __init__(self) -> None:
        env = dict(os.environ, LD_PRELOAD=str(RUNTIME))
        # as a user would type it in BUILD: relative to ROOT it would not run there
        print(f"$ LD_PRELOAD={RUNTIME} ./app &", flush=True)
        self.proc = subprocess.Popen([str(BUILD / "app")], cwd=BUILD, env=env, text=True,
                                     stdout=subprocess.PIPE)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip())

    def show(self, count: int, expect: str) -> None:
        """Print the program's next lines; the last must contain ``expect``."""
        for _ in range(count):
            line = self.lines.get(timeout=TIMEOUT)
            print("    " + line, flush=True)
        while expect not in line:
            line = self.lines.get(timeout=TIMEOUT)
            print("    " + line, flush=True)

    def show_pending(self) -> None:
        """Print what the program printed meanwhile, so each step shows after it."""
        while not self.lines.empty():
            print("    " + self.lines.get_nowait(), flush=True)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=TIMEOUT)


def main() -> int:
    build()
    step("start the service with the ulp runtime preloaded")
    app = App()
    try:
        app.show(4, "original")
        app.show_pending()
        step(f"apply the patch live to PID {app.proc.pid}")
        run(BIN / "ulp-trigger", str(app.proc.pid), "patch.ulp")
        app.show(4, "PATCHED")
        app.show_pending()
        step(f"revert it, still the same PID {app.proc.pid}")
        run(BIN / "ulp-trigger", "--revert", str(app.proc.pid), "patch.ulp")
        app.show(4, "original")
        step("done: the program never restarted")
    finally:
        app.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
