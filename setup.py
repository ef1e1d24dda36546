"""The build hook of ``pip install .``: the runtime libulp.so as package data.

Everything else is declared in pyproject.toml.  The runtime is compiled by
the Makefile's own rule (``make runtime RUNTIME=...``: one list of flags)
into the package being built, as ``ulp/libulp.so``, where
``ulp runtime-path`` finds it (ulp/runtime.py).  An editable install
(``make setup``) builds nothing here: the checkout's runtime/libulp.so is
the one, built by ``make runtime``.  The wheel holds machine code for this
platform, but no Python extension: it is tagged py3-none-<platform>.
"""

from __future__ import annotations

import os
import subprocess

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

try:
    from setuptools.command.bdist_wheel import bdist_wheel  # setuptools >= 70.1
except ImportError:
    try:
        from wheel.bdist_wheel import bdist_wheel
    except ImportError:  # an sdist needs none
        bdist_wheel = None

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildWithRuntime(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = os.path.abspath(os.path.join(self.build_lib, "ulp", "libulp.so"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        # -B: the target is new in a fresh build directory, but make would
        # take an older one in a reused one for up to date
        subprocess.run(["make", "-s", "-B", "-C", HERE, "runtime", f"RUNTIME={target}"],
                       check=True)


class PlatformDistribution(Distribution):
    def has_ext_modules(self) -> bool:
        return True  # machine code: installed as platform files, the wheel not pure


COMMANDS: dict[str, type] = {"build_py": BuildWithRuntime}
if bdist_wheel is not None:

    class PlatformWheel(bdist_wheel):
        """Machine code, but no Python extension: any Python 3, this platform."""

        def get_tag(self) -> tuple[str, str, str]:
            return "py3", "none", super().get_tag()[2]

    COMMANDS["bdist_wheel"] = PlatformWheel

setup(cmdclass=COMMANDS, distclass=PlatformDistribution)
