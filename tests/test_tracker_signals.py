"""The tracker under signals at every instruction (issue 7, items 6 and 8a).

A tracer stops a thread at every instruction boundary of a round of calls
that takes every path of the tracker (trampoline, the tracker's choice,
calls from the library itself, a patched entry's stub, callbacks), makes
the universe move there as a commit does (the runtime's own transition
code runs with the thread stopped there), and delivers a signal whose
handler runs a whole activation of the library.  No activation may see two
versions.  The versions are real (a real apply and revert stamp them);
only the moment the global universe moves is chosen by the tracer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from consistency_support import (
    C_DIR,
    LiveProcess,
    apply,
    ask,
    cc,
    counts,
    patch,
    prepared_library,
    revert,
    trigger,
)

from ulp.errors import ExitCode

PHASE_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def step(build_dir: Path) -> Path:
    root = build_dir / "step"
    lib = prepared_library(root / "lib" / "libcmstep.so", [C_DIR / "cm_step_lib.c"])
    cc(root / "app", [C_DIR / "cm_step_app.c"], f"-L{lib.parent}", "-lcmstep", "-ldl",
       "-lpthread", f"-I{C_DIR.parent.parent / 'runtime'}")
    for version in (2, 3, 4):
        patch(root, f"fix{version}", lib,
              {"lib_tag": f"lib_tag_v{version}", "lib_act": f"lib_act_v{version}"},
              C_DIR / "cm_step_fix.c", f"-DVERSION={version}")
    return root


@pytest.mark.parametrize("moment", ["apply", "revert", "apply, handler leaves by longjmp"])
def test_a_signal_at_every_instruction_never_mixes_an_activation(step: Path,
                                                                  moment: str) -> None:
    with LiveProcess([step / "app"], env={"LD_LIBRARY_PATH": str(step / "lib")}) as app:
        assert app.next_line() == "ready"
        # Real stamps: universe 1 runs version 1 (the original), 2 runs fix2
        # (version 2), 3 the original again (fix2 reverted), 4 fix3 (version
        # 3), 5 the original (fix3 reverted).
        for patch_file in ("fix2.ulp", "fix3.ulp"):
            apply(app.pid, step / patch_file)
            revert(app.pid, step / patch_file)
        # The universe at the round's start, at the signal, after the
        # handler, and from the round's callback on.
        universes = (2, 3, 4, 5) if moment == "revert" else (1, 2, 4, 5)
        jump = " jump" if "longjmp" in moment else ""
        # One round per instruction boundary, each stepped from its start:
        # tens of seconds on a loaded machine.
        app.send("go " + " ".join(map(str, universes)) + jump + "\n")
        found = counts(app.next_line(timeout=PHASE_TIMEOUT))
    assert found["tracer"] == "1", found
    boundaries, runtime = int(found["boundaries"]), int(found["runtime"])
    if jump:
        # Each signalled round was abandoned; the round after it was checked.
        assert int(found["rounds"]) == boundaries + 1 and found["handlers"] == "0", found
        assert found["mixed_round"] == "0", found
        return
    # Every boundary of the round got its own round and its own signal.
    assert int(found["rounds"]) == boundaries + 1 and int(found["handlers"]) == boundaries
    assert runtime >= 100, found          # the tracker's instructions were among them
    assert int(found["library"]) >= 10, found
    assert int(found["inside"]) >= 20, found
    assert found["mixed_round"] == found["mixed_handler"] == found["mixed_across"] == "0", found
    # The universe did move under the round: a round's activation that began
    # before the signal ran the version of the round's start, one that began
    # after the handler the third version; the handlers saw the signal's.
    old_tag, new_tag = (2, 1) if moment == "revert" else (1, 2)
    round_seen = dict(zip((1, 2, 3), map(int, found["round_seen"].split(",")), strict=True))
    handler_seen = dict(zip((1, 2, 3), map(int, found["handler_seen"].split(",")), strict=True))
    assert round_seen[old_tag] > 0 and round_seen[3] > 0, found
    assert handler_seen[new_tag] > 0, found


# --- stale stack words (issue 7, items 5 and 8b) ---------------------------------


@pytest.fixture(scope="module")
def stale(step: Path) -> Path:
    cc(step / "stale_app", [C_DIR / "cm_stale_app.c"], f"-L{step / 'lib'}", "-lcmstep")
    return step / "stale_app"


@pytest.mark.parametrize("around", [0, 1, 4])
def test_a_stale_return_address_never_mixes_an_activation(step: Path, stale: Path,
                                                           around: int) -> None:
    with LiveProcess([stale], env={"LD_LIBRARY_PATH": str(step / "lib")}) as app:
        assert app.next_line() == "ready"
        assert ask(app, "shallow") == "recorded"
        # Nothing of the library on the stack at the commit, stale words
        # planted later: the thread runs the new version, one everywhere.
        apply(app.pid, step / "fix2.ulp")
        assert ask(app, f"deep {around}") == "seen=222"
        revert(app.pid, step / "fix2.ulp")
        assert ask(app, "call") == "tag=1"
        # A stale word of the library's code in a live frame at the commit:
        # the thread may be inside an activation, it keeps the old universe
        # (a delay) while the word is there...
        assert ask(app, "plant") == "planted"
        apply(app.pid, step / "fix2.ulp")
        assert ask(app, "call") == "tag=1"
        # ...and an activation whose caller's buffer held more of them,
        # destroyed by the library before it calls back, sees one version.
        assert ask(app, f"deep {around}") == "seen=111"
        # The delay ends at the first entry from outside with nothing of the
        # library above it.
        assert ask(app, "clear") == "cleared"
        assert ask(app, "call") == "tag=2"
        revert(app.pid, step / "fix2.ulp")
        assert ask(app, "call") == "tag=1"


# --- seccomp (issue 7, item 11) -----------------------------------------------------


def test_the_tracker_makes_no_system_call_on_application_threads(step: Path) -> None:
    app_path = cc(step / "seccomp_app", [C_DIR / "cm_seccomp_app.c"], f"-L{step / 'lib'}",
                  "-lcmstep")
    with LiveProcess([app_path], env={"LD_LIBRARY_PATH": str(step / "lib")}) as app:
        assert app.next_line() == "ready"
        assert ask(app, "call") == "first=1 far=1 act=11111"
        apply(app.pid, step / "fix2.ulp")
        assert ask(app, "call") == "first=2 far=2 act=2222"
        revert(app.pid, step / "fix2.ulp")
        assert ask(app, "call") == "first=1 far=1 act=11111"
        assert app.alive()


def test_an_agent_on_demand_is_not_started_under_seccomp(step: Path) -> None:
    """ULP_AGENT=demand in a process under a seccomp filter: starting a thread
    might be forbidden, or kill the process (this filter kills on calls
    pthread_create makes): the trigger refuses with NO_RUNTIME and the
    process runs on, unpatched."""
    app_path = cc(step / "seccomp_app", [C_DIR / "cm_seccomp_app.c"], f"-L{step / 'lib'}",
                  "-lcmstep")
    with LiveProcess([app_path], env={"LD_LIBRARY_PATH": str(step / "lib"),
                                      "ULP_AGENT": "demand"}) as app:
        assert app.next_line() == "ready"
        result = trigger(app.pid, step / "fix2.ulp")
        assert result.returncode == ExitCode.NO_RUNTIME, result.stderr
        assert "seccomp" in result.stderr
        assert ask(app, "call") == "first=1 far=1 act=11111"
        assert app.alive()


# --- more live activations than anchors (issue 7, item 7) ---------------------------


@pytest.mark.parametrize("depth", [3, 12])
def test_callbacks_nested_beyond_the_anchors_keep_one_universe(step: Path, depth: int) -> None:
    app_path = cc(step / "nest_app", [C_DIR / "cm_nest_app.c"], f"-L{step / 'lib'}", "-lcmstep")
    with LiveProcess([app_path], env={"LD_LIBRARY_PATH": str(step / "lib")}) as app:
        assert app.next_line() == "ready"
        app.send(f"nest {depth}\n")
        assert app.next_line() == "deepest"
        apply(app.pid, step / "fix2.ulp")
        # Every level, and the entry from the deepest callback, keep version 1.
        assert ask(app, "go") == "seen=" + "1" * (2 * (depth + 1) + 1)
        assert ask(app, "call") == "tag=2"
        revert(app.pid, step / "fix2.ulp")
