"""The consistency model under a randomized stress (issue 7, item 8c).

Eight hot threads and a 1 kHz signal handler run activations of a library
nonstop, each with a callback that re-enters it from outside, while three
stacked patches of the same functions are applied and reverted 1000 times
in random order (fixed seed).  Every activation checks that it saw one
version; every operation must succeed.  And: coroutines suspended inside
the library move between threads while a patch is applied and reverted.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from consistency_support import (
    C_DIR,
    LiveProcess,
    ask,
    cc,
    counts,
    patch,
    patched_program,
    prepared_library,
)

from support import trigger_here

OPERATIONS = 1000
VERSIONS = (2, 3, 4)


@pytest.fixture(scope="module")
def stress(build_dir: Path) -> Path:
    root = build_dir / "stress"
    lib = prepared_library(root / "lib" / "libcmstep.so", [C_DIR / "cm_step_lib.c"])
    cc(root / "app", [C_DIR / "cm_stress_app.c"], f"-L{lib.parent}", "-lcmstep", "-lpthread")
    for version in VERSIONS:
        patch(root, f"fix{version}", lib,
              {"lib_tag": f"lib_tag_v{version}", "lib_act": f"lib_act_v{version}"},
              C_DIR / "cm_step_fix.c", f"-DVERSION={version}")
    return root




def test_a_thousand_stacked_applies_and_reverts_never_mix_an_activation(stress: Path) -> None:
    chooser = random.Random(7)
    applied: set[int] = set()
    failures = []
    with LiveProcess([stress / "app"], env={"LD_LIBRARY_PATH": str(stress / "lib")}) as app:
        assert app.next_line() == "ready"
        for operation in range(OPERATIONS):
            version = chooser.choice(VERSIONS)
            reverting = version in applied
            code, _, err = trigger_here("--timeout", "30", "--retries", "20",
                                        *(["--revert"] if reverting else []), app.pid,
                                        stress / f"fix{version}.ulp")
            if code != 0:
                failures.append((operation, version, reverting, code, err))
                break
            (applied.discard if reverting else applied.add)(version)
        found = counts(ask(app, "stop"))
    assert not failures, failures
    assert found["mixed"] == "0", found
    seen = list(map(int, found["seen"].split(",")))
    # Every version ran, and the handlers did run activations.
    assert all(count > 0 for count in seen), found
    assert int(found["handlers"]) > 100, found


COROUTINE_CYCLES = 40


@pytest.fixture(scope="module")
def coroutine_stress(build_dir: Path) -> Path:
    return patched_program(build_dir / "coro_stress", "coro", C_DIR / "cm_coro_lib.c",
                           C_DIR / "cm_coro_stress.c", {"coro_tag": "coro_tag_v2"},
                           C_DIR / "cm_coro_fix.c", "-lpthread")["root"]


def test_coroutines_moving_between_threads_never_mix_an_activation(coroutine_stress) -> None:
    """16 coroutines (makecontext stacks) suspend inside the library in the
    middle of each activation and are resumed by whichever of two threads
    is free: at every commit most of them wait on no thread.  A 1 kHz timer
    signal's handler runs activations of its own on whatever stack it
    interrupts.  40 applies and 40 reverts; every activation saw one
    version."""
    root = coroutine_stress
    with LiveProcess([root / "app"], env={"LD_LIBRARY_PATH": str(root / "lib")}) as app:
        assert app.next_line() == "ready"
        for cycle in range(COROUTINE_CYCLES):
            for reverting in (False, True):
                code, _, err = trigger_here("--timeout", "30", "--retries", "20",
                                            *(["--revert"] if reverting else []), app.pid,
                                            root / "fix.ulp")
                assert code == 0, (cycle, reverting, err)
        found = counts(ask(app, "stats"))
    assert found["mixed"] == "0", found
    assert int(found["moved"]) > 0 and int(found["handlers"]) > 0, found
    assert all(int(count) > 0 for count in found["seen"].split(",")), found
