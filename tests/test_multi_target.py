"""A patch of several libraries of one process (issue 9, item 8).

One patch object replaces functions of two prepared libraries, libmta and
libmtb, which the program's hot threads enter in chains that cross both
(tests/c/mt_app.c: A calls back into the program, which enters B, whose
callback re-enters A).  The patch is applied and reverted as one unit, with
one step of the global universe, and every activation checks that it saw
versions of one universe.  A third library, libmtc, is prepared but not
loaded by the program: a patch of A and C is refused there whole.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from pathlib import Path

import pytest
from consistency_support import C_DIR, LiveProcess, ask, cc, counts, prepared_library, trigger

from support import RUNTIME, shared_library, tool, wait_unmapped
from ulp import metadata as md
from ulp.agent_abi import Op, Status
from ulp.errors import ExitCode
from ulp.patchfile import PatchFile, read_patch_file, write_patch_file
from ulp.process import Process
from ulp.trigger import transition
from ulp.trigger.agent import Agent

ROUNDS = 15
ALL_OLD = "last " + " ".join(["1/1"] * 4)
ALL_NEW = "last " + " ".join(["2/2"] * 4)


def _pack(root: Path, name: str, sections: dict[str, dict[str, str]]) -> Path:
    lines = [str(root / "fix.so")]
    for library, replacements in sections.items():
        lines.append(f"@lib/{library}")
        lines += [f"{old}:{new}" for old, new in replacements.items()]  # and #sym:var
    (root / f"{name}.desc").write_text("\n".join(lines) + "\n")
    packed = tool("ulp-packer", root / f"{name}.desc")
    assert packed.returncode == 0, packed.stderr
    return root / f"{name}.ulp"


@pytest.fixture(scope="module")
def built(build_dir: Path) -> dict[str, Path]:
    root = build_dir / "multi"
    for name in ("a", "b", "c"):
        prepared_library(root / "lib" / f"libmt{name}.so", [C_DIR / f"mt_lib{name}.c"])
    cc(root / "app", [C_DIR / "mt_app.c"], f"-L{root / 'lib'}", "-lmta", "-lmtb", "-pthread")
    shared_library(root / "fix.so", [C_DIR / "mt_fix.c"], patchable=False)
    both = _pack(root, "both", {"libmta.so": {"a_tag": "a_tag_v2", "a_act": "a_act_v2"},
                                "libmtb.so": {"b_tag": "b_tag_v2", "b_act": "b_act_v2"}})
    missing = _pack(root, "a_and_c", {"libmta.so": {"a_tag": "a_tag_v2", "a_act": "a_act_v2"},
                                      "libmtc.so": {"c_tag": "c_tag_v2"}})
    single = _pack(root, "only_a", {"libmta.so": {"a_tag": "a_tag_v2"}})
    private = _pack(root, "private", {"libmta.so": {"a_tag": "a_tag_v2"},
                                      "libmtb.so": {"b_step": "b_step_v2",
                                                    "#b_total": "b_total_ref"}})
    return {"root": root, "both": both, "missing": missing, "single": single,
            "private": private}


def start(built) -> LiveProcess:
    app = LiveProcess([built["root"] / "app"], env={"LD_LIBRARY_PATH": str(built["root"] / "lib")})
    assert app.next_line() == "ready"
    return app


def snapshot(pid: int) -> dict:
    shown = tool("ulp", "patches", "-p", str(pid), "--json")
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)[0]


def applied_at(view: dict) -> dict[str, set[int]]:
    """Library file name -> the universes its functions' newest versions were
    applied in."""
    return {library["path"].rsplit("/", 1)[-1]: {function["versions"][0][0]
                                                 for function in library["functions"]}
            for library in view["libraries"]}


# ---- the patch file --------------------------------------------------------------


def test_a_patch_of_two_libraries_is_a_version_4_record_and_packs_reproducibly(built) -> None:
    patch = read_patch_file(str(built["both"]))
    metadata = patch.metadata
    assert [target.name for target in metadata.targets] == ["libmta.so", "libmtb.so"]
    assert [unit.old_name for unit in metadata.targets[1].units] == ["b_tag", "b_act"]
    record = built["both"].read_bytes()[56:]
    assert record[:8] == md.MAGIC and int.from_bytes(record[8:10], "little") == 4
    # the id is the group's, over the ids each library's part would have alone
    assert metadata.patch_id == md.make_group_id([md.part_id(part) for part in metadata.parts()])
    # a patch of one library is still a version 3 record
    single = built["single"].read_bytes()[56:]
    assert int.from_bytes(single[8:10], "little") == 3
    again = tool("ulp-packer", built["root"] / "both.desc", "-o", built["root"] / "again.ulp")
    assert again.returncode == 0, again.stderr
    assert (built["root"] / "again.ulp").read_bytes() == built["both"].read_bytes()


def test_dump_names_every_library_and_its_functions(built) -> None:
    dump = tool("ulp", "dump", built["both"])
    assert dump.returncode == 0, dump.stderr
    assert re.search(r"^target:\s+\S+/libmta\.so$", dump.stdout, re.M), dump.stdout
    assert re.search(r"^target 2:\s+\S+/libmtb\.so$", dump.stdout, re.M), dump.stdout
    assert "b_act -> b_act_v2" in dump.stdout and "a_act -> a_act_v2" in dump.stdout
    fields = json.loads(tool("ulp", "dump", "--json", built["both"]).stdout)
    assert [Path(target["target"]).name for target in fields["targets"]] == \
        ["libmta.so", "libmtb.so"]
    assert [function["old"] for function in fields["targets"][1]["functions"]] == \
        ["b_tag", "b_act"]


# ---- applying and reverting in a live process ------------------------------------


def test_apply_and_revert_as_one_unit_under_hot_threads(built) -> None:
    with start(built) as app:
        assert ask(app, "sync") == ALL_OLD
        for _ in range(ROUNDS):
            before = snapshot(app.pid)["global_universe"]
            result = trigger(app.pid, built["both"])
            assert result.returncode == 0, result.stderr
            view = snapshot(app.pid)
            # one step of the global universe, in which both libraries changed
            assert view["global_universe"] == before + 1
            universes = applied_at(view)
            assert universes["libmta.so"] == universes["libmtb.so"] == {before + 1}
            assert ask(app, "sync") == ALL_NEW      # every thread migrated, in both
            result = trigger("--revert", app.pid, built["both"])
            assert result.returncode == 0, result.stderr
            assert snapshot(app.pid)["global_universe"] == before + 2
            assert ask(app, "sync") == ALL_OLD
        found = counts(ask(app, "stop"))
    assert found["mixed_a"] == "0" and found["mixed_b"] == "0", found
    # a chain through both libraries runs one universe in both: a thread
    # moves to the new one only with nothing of either on its stack
    assert found["crossed"] == "0", found
    old, new = map(int, found["seen"].split(","))
    assert old > 0 and new > 0, found


def test_the_second_library_has_a_private_function_and_a_reference(built) -> None:
    """Each library's PREPARE writes its private descriptors into the request
    the next one overwrites: they are read back in between."""
    metadata = read_patch_file(str(built["private"])).metadata
    assert metadata.targets[1].private_units[0].old_name == "b_step"
    assert metadata.targets[1].references[0].ref_name == "b_total_ref"
    with start(built) as app:
        assert ask(app, "count") == "count=1"
        result = trigger(app.pid, built["private"])
        assert result.returncode == 0, result.stderr
        assert ask(app, "count") == "count=11"             # B's static, through B's data
        assert ask(app, "sync") == "last " + " ".join(["2/1"] * 4)
        result = trigger("--revert", app.pid, built["private"])
        assert result.returncode == 0, result.stderr
        assert ask(app, "count") == "count=12"
        assert ask(app, "sync") == ALL_OLD


def test_a_copy_of_a_target_named_as_another_target_is_refused(built, tmp_path) -> None:
    copy = tmp_path / "libmta_copy.so"
    copy.write_bytes((built["root"] / "lib" / "libmta.so").read_bytes())
    desc = tmp_path / "copy.desc"
    desc.write_text(f"{built['root'] / 'fix.so'}\n@{built['root'] / 'lib' / 'libmta.so'}\n"
                    f"a_tag:a_tag_v2\n@{copy}\na_act:a_act_v2\n")
    packed = tool("ulp-packer", desc)
    assert packed.returncode == ExitCode.BAD_INPUT, packed.stderr
    assert f"{desc}:4: {copy} is the library of line 2 again" in packed.stderr


def test_status_and_check_show_the_patch_of_two_libraries(built) -> None:
    with start(built) as app:
        check = tool("ulp", "check", "-v", str(app.pid), built["both"])
        assert check.returncode == 0, check.stdout + check.stderr
        assert re.search(r"target \S+/libmta\.so: loaded at", check.stdout), check.stdout
        assert re.search(r"target \S+/libmtb\.so: loaded at", check.stdout), check.stdout
        assert "0 of 4 already jump to the tracker" in check.stdout
        result = trigger(app.pid, built["both"])
        assert result.returncode == 0, result.stderr
        assert "libmta.so:a_tag" in result.stdout and "libmtb.so:b_act" in result.stdout
        status = json.loads(tool("ulp", "status", "--json", str(app.pid)).stdout)
        patch_id = read_patch_file(str(built["both"])).metadata.patch_id_hex
        assert [patch["id"] for patch in status["applied"]] == [patch_id]   # once
        again = trigger(app.pid, built["both"])
        assert again.returncode == ExitCode.ALREADY_APPLIED, again.stderr
        universe = snapshot(app.pid)["global_universe"]
        shown = tool("ulp", "patches", "-p", str(app.pid))
        assert f"universe {universe}: libmta.so, libmtb.so changed in one step" in shown.stdout, \
            shown.stdout
        check = tool("ulp", "check", "-v", str(app.pid), built["both"])
        assert "4 of 4 already jump to the tracker" in check.stdout, check.stdout
        assert f"patch {patch_id} is applied (universe {universe}," in check.stdout
        listed = snapshot(app.pid)["patches"]
        assert [(p["patch_id"], p["library"].rsplit("/", 1)[-1], p["part"], p["nparts"],
                 p["universe"]) for p in sorted(listed, key=lambda p: p["part"])] == [
            (patch_id, "libmta.so", 0, 2, universe), (patch_id, "libmtb.so", 1, 2, universe)]


def test_a_missing_target_refuses_the_whole_patch_and_leaves_the_process_untouched(
        built) -> None:
    with start(built) as app:
        maps = Path(f"/proc/{app.pid}/maps").read_text()
        code = _library_code(app.pid, maps, "libmta.so")
        fds = sorted(Path(f"/proc/{app.pid}/fd").iterdir())
        universe = snapshot(app.pid)["global_universe"]
        result = trigger(app.pid, built["missing"])
        assert result.returncode == ExitCode.LIBRARY_NOT_LOADED, result.stderr
        assert result.stderr.count("\n") == 1, result.stderr
        assert "libmtc.so" in result.stderr and "nothing done" in result.stderr
        # nothing loaded, staged or written, no universe published
        assert Path(f"/proc/{app.pid}/maps").read_text() == maps
        assert _library_code(app.pid, maps, "libmta.so") == code
        assert sorted(Path(f"/proc/{app.pid}/fd").iterdir()) == fds
        assert snapshot(app.pid)["global_universe"] == universe
        assert json.loads(tool("ulp", "status", "--json", str(app.pid)).stdout)["applied"] == []
        assert ask(app, "sync") == ALL_OLD


def test_a_refusal_by_the_runtime_in_the_second_library_applies_nothing(built,
                                                                         tmp_path) -> None:
    """The second PREPARE fails (a replacement the patch object lacks, as a
    hostile or buggy packer could write it), after the first succeeded: the
    first is dropped, no code is written, no universe published."""
    original = read_patch_file(str(built["both"]))
    second = original.metadata.more_targets[0]
    broken = dataclasses.replace(original.metadata, more_targets=(dataclasses.replace(
        second, units=(md.Unit(second.units[0].index, "b_tag", "b_tag_missing"),)),))
    broken = dataclasses.replace(broken, patch_id=md.content_id(broken))
    write_patch_file(str(tmp_path / "broken.ulp"), PatchFile(broken, original.patch_object))
    with start(built) as app:
        maps = Path(f"/proc/{app.pid}/maps").read_text()
        code = _library_code(app.pid, maps, "libmta.so")
        universe = snapshot(app.pid)["global_universe"]
        result = trigger(app.pid, tmp_path / "broken.ulp")
        assert result.returncode == ExitCode.PATCH_OBJECT, result.stderr
        assert "b_tag_missing" in result.stderr
        assert _library_code(app.pid, maps, "libmta.so") == code
        assert snapshot(app.pid)["global_universe"] == universe
        assert json.loads(tool("ulp", "status", "--json", str(app.pid)).stdout)["applied"] == []
        assert ask(app, "sync") == ALL_OLD
        result = trigger(app.pid, built["both"])
        assert result.returncode == 0, result.stderr
        assert ask(app, "sync") == ALL_NEW


def _library_code(pid: int, maps: str, name: str) -> bytes:
    """The bytes of the executable mappings of library ``name`` in ``pid``."""
    code = b""
    with open(f"/proc/{pid}/mem", "rb") as memory:
        for line in maps.splitlines():
            fields = line.split()
            if len(fields) == 6 and fields[5].endswith("/" + name) and "x" in fields[1]:
                start, end = (int(value, 16) for value in fields[0].split("-"))
                memory.seek(start)
                code += memory.read(end - start)
    assert code
    return code


@pytest.mark.parametrize("library", ["libmta.so", "libmtb.so"])
def test_revert_all_of_either_library_reverts_the_patch_in_both(built, library) -> None:
    with start(built) as app:
        result = trigger(app.pid, built["both"])
        assert result.returncode == 0, result.stderr
        assert ask(app, "sync") == ALL_NEW
        reverted = trigger("--revert-all", library, app.pid)
        assert reverted.returncode == 0, reverted.stderr
        assert "2 libraries" in reverted.stdout, reverted.stdout
        assert ask(app, "sync") == ALL_OLD                  # both libraries, not only LIB
        assert json.loads(tool("ulp", "status", "--json", str(app.pid)).stdout)["applied"] == []
        other = "libmtb.so" if library == "libmta.so" else "libmta.so"
        nothing = trigger("--revert-all", other, app.pid)
        assert nothing.returncode == ExitCode.NOT_APPLIED, nothing.stderr
        result = trigger(app.pid, built["both"])            # and it applies again
        assert result.returncode == 0, result.stderr
        assert ask(app, "sync") == ALL_NEW


# ---- a library of the patch unloaded -----------------------------------------------


@pytest.fixture(scope="module")
def unloading(build_dir: Path) -> Path:
    """tests/c/lc_app.c (dlopens and dlcloses libraries on command), two
    prepared libraries lib/liblc1.so and lib/liblc2.so (each lc_value() = 1,
    different identities), and both.ulp: lc_value = 2 in both."""
    root = build_dir / "multi_unload"
    for number in (1, 2):
        prepared_library(root / "lib" / f"liblc{number}.so", [C_DIR / "lc_lib.c"],
                         f"-Wl,-soname,liblc{number}.so")
    cc(root / "app", [C_DIR / "lc_app.c"], "-I", str(RUNTIME.parent), "-ldl", "-lpthread")
    shared_library(root / "fix.so", [C_DIR / "lc_fix.c"], patchable=False)
    (root / "both.desc").write_text("fix.so\n@lib/liblc1.so\nlc_value:lc_value_v2\n"
                                    "@lib/liblc2.so\nlc_value:lc_value_v2\n")
    packed = tool("ulp-packer", root / "both.desc")
    assert packed.returncode == 0, packed.stderr
    return root


def start_unloading(root: Path) -> LiveProcess:
    app = LiveProcess([root / "app"])
    assert app.next_line() == "ready"
    for number in (1, 2):
        assert ask(app, f"open {number} {root / 'lib' / f'liblc{number}.so'}") == "opened"
    return app


def test_a_library_unloaded_after_the_apply_leaves_the_other_to_revert(unloading) -> None:
    with start_unloading(unloading) as app:
        result = trigger(app.pid, unloading / "both.ulp")
        assert result.returncode == 0, result.stderr
        assert ask(app, "call 1") == ask(app, "call 2") == "value=2"
        assert ask(app, "close 2") == "closed"
        # unmapped at the agent's first tick after the commit (which kept it
        # pinned), about 1 ms after the trigger let the agent go
        wait_unmapped(app.pid, "liblc2.so")
        # the runtime forgets the unloaded library's part at the same tick
        deadline = time.monotonic() + 30
        while len(snapshot(app.pid)["patches"]) != 1:
            assert time.monotonic() < deadline, snapshot(app.pid)["patches"]
            time.sleep(0.01)
        [left] = snapshot(app.pid)["patches"]
        assert left["library"].endswith("liblc1.so") and left["nparts"] == 2
        result = trigger("--revert", app.pid, unloading / "both.ulp")
        assert result.returncode == 0, result.stderr
        assert ask(app, "call 1") == "value=1"
        assert json.loads(tool("ulp", "status", "--json", str(app.pid)).stdout)["applied"] == []
        assert snapshot(app.pid)["patches"] == []
        assert ask(app, f"open 2 {unloading / 'lib' / 'liblc2.so'}") == "opened"
        result = trigger(app.pid, unloading / "both.ulp")      # both again
        assert result.returncode == 0, result.stderr
        assert ask(app, "call 1") == ask(app, "call 2") == "value=2"


def test_a_library_unloaded_between_prepare_and_commit_applies_nothing(unloading) -> None:
    """Both parts prepared (as by a trigger that then waits), the program
    dlcloses the second library: COMMIT answers UNLOADED and publishes none
    of the first library's versions either."""
    patch_file = read_patch_file(str(unloading / "both.ulp"))
    metadata = patch_file.metadata
    with start_unloading(unloading) as app:
        process = Process(app.pid)
        agent = Agent(process, 20)
        try:
            targets = transition.find_targets(process, metadata, "both.ulp")
            agent.attach()
            transition._prepare_parts(agent, metadata.parts(), targets,
                                      patch_file.patch_object)
            agent.release()
            assert ask(app, "close 2") == "closed"
            # the last PREPARE kept the libraries pinned for a COMMIT that did
            # not come: the agent lets them go at its first tick 5 s after
            wait_unmapped(app.pid, "liblc2.so")
            agent = Agent(process, 20)
            agent.attach()
            status, message = agent.call(transition._request(Op.COMMIT, metadata))
            assert status == Status.UNLOADED, message
            assert "nothing applied" in message
        finally:
            agent.release()
            process.close()
        assert ask(app, "call 1") == "value=1"
        assert json.loads(tool("ulp", "status", "--json", str(app.pid)).stdout)["applied"] == []
