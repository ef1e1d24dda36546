"""The build hooks of ``pip install .``: the runtime libulp.so as package data,
the native ``ulp-trigger`` launcher as a script, the manual pages and bash
completion as data files.

Everything else is declared in pyproject.toml.  The runtime is compiled by
the Makefile's own rule (``make runtime RUNTIME=...``: one list of flags)
into the package being built, as ``ulp/libulp.so``, where
``ulp runtime-path`` finds it (ulp/runtime.py).  An editable install
(``make setup``) builds nothing here: the checkout's runtime/libulp.so is
the one, built by ``make runtime``.  The wheel holds machine code for this
platform, but no Python extension: it is tagged py3-none-<platform>.

``ulp-trigger`` is launcher/ulp-trigger.c, built by the Makefile's rule
(``make launcher``): it raises its scheduling priority before any Python
starts, then runs the console script ``ulp-trigger-py`` installed beside it
(launcher/ulp-trigger.c says why).

The manual pages and bash completion are man/, generated from the parsers
by ``make man`` (ulp/manpages.py; tests/test_manpages.py checks that they
are current): generating them here would import every command, and with it
lief and pyelftools, which a build environment does not have.  They go to
share/man/man1 and share/bash-completion/completions under the prefix,
where man and bash-completion look.
"""

from __future__ import annotations

import glob
import os
import subprocess

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

try:
    from setuptools.command.build_scripts import build_scripts
except ImportError:  # setuptools keeps it in its own copy of distutils
    from distutils.command.build_scripts import build_scripts

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


LAUNCHER = "build/launcher/ulp-trigger"


class BuildScriptsWithLauncher(build_scripts):
    """Builds the launcher and copies it as it is (a script would have its
    first line rewritten: this is machine code)."""

    def copy_scripts(self) -> tuple[list[str], list[str]]:
        subprocess.run(["make", "-s", "-B", "-C", HERE, "launcher", f"LAUNCHER={LAUNCHER}"],
                       check=True)
        self.mkpath(self.build_dir)
        built = os.path.join(self.build_dir, os.path.basename(LAUNCHER))
        self.copy_file(os.path.join(HERE, LAUNCHER), built)
        os.chmod(built, 0o755)
        return [built], [built]

    def get_source_files(self) -> list[str]:
        return ["launcher/ulp-trigger.c"]  # what an sdist carries: the launcher is built


class PlatformDistribution(Distribution):
    def has_ext_modules(self) -> bool:
        return True  # machine code: installed as platform files, the wheel not pure


COMMANDS: dict[str, type] = {"build_py": BuildWithRuntime,
                             "build_scripts": BuildScriptsWithLauncher}
if bdist_wheel is not None:

    class PlatformWheel(bdist_wheel):
        """Machine code, but no Python extension: any Python 3, this platform."""

        def get_tag(self) -> tuple[str, str, str]:
            return "py3", "none", super().get_tag()[2]

    COMMANDS["bdist_wheel"] = PlatformWheel


def _shipped(pattern: str) -> list[str]:
    return sorted(glob.glob(pattern, root_dir=HERE))


setup(cmdclass=COMMANDS, distclass=PlatformDistribution, scripts=[LAUNCHER],
      data_files=[("share/man/man1", _shipped("man/man1/*.1")),
                  ("share/bash-completion/completions", _shipped("man/bash-completion/*"))])
