"""Where the ulp runtime (libulp.so) of this installation is.

- A source checkout (the editable install ``make setup`` makes): the
  checkout's ``runtime/libulp.so``, which ``make runtime`` builds.  The
  checkout is recognised by ``runtime/ulp_abi.h`` next to the package.
- ``pip install .``: ``ulp/libulp.so``, package data the build hook of
  setup.py compiled with the Makefile's rule.

``ulp runtime-path`` prints it, for ``LD_PRELOAD=$(ulp runtime-path)``.
"""

from __future__ import annotations

from pathlib import Path

from ulp.errors import ExitCode, UlpError

RUNTIME_NAME = "libulp.so"


def runtime_path() -> Path:
    """The absolute path of this installation's runtime; NO_RUNTIME if it
    was not built."""
    package = Path(__file__).resolve().parent
    checkout = package.parent / "runtime"
    if (checkout / "ulp_abi.h").is_file():
        path = checkout / RUNTIME_NAME
        hint = f"build it with `make runtime` in {checkout.parent}"
    else:
        path = package / RUNTIME_NAME
        hint = "this installation of ulp was built without it (reinstall with gcc and make)"
    if not path.is_file():
        raise UlpError(f"the ulp runtime {path} does not exist: {hint}", ExitCode.NO_RUNTIME)
    return path
