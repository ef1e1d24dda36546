"""A patch object's calls into its library skip the trampolines (runtime/rebind.c).

When the runtime loads a patch, the PLT slots of the patch object that ld.so
bound to the library's trampolines are rebound: a function the same patch
replaces to the replacement itself, any other function to its entry NOPs.
Addresses the patch takes (GLOB_DAT) keep pointing at the trampolines.  A
later patch that replaces one of those functions again sends such calls
back through the function's entry.  The
test reads the slots from the live process's memory (/proc/PID/mem) and
checks the patched results.
"""

from __future__ import annotations

import re
import shutil
import struct
import time
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection

from support import C_DIR, LiveProcess, cc, shared_library, tool, trigger_here

R_X86_64_GLOB_DAT = 6
R_X86_64_JUMP_SLOT = 7


@pytest.fixture(scope="module")
def rebind(build_dir: Path) -> Path:
    root = build_dir / "rebind"
    (root / "lib").mkdir(parents=True)
    # keeps rb_sum's self-call a call through the PLT (gcc would make it a loop)
    lib = shared_library(root / "lib" / "librb.so", [C_DIR / "rb_lib.c"],
                         "-fno-optimize-sibling-calls")
    shutil.copy(lib, root / "librb.unprepared.so")
    assert tool("ulp-prepare", lib).returncode == 0
    cc(root / "app", [C_DIR / "rb_app.c"], f"-L{root / 'lib'}", "-lrb")
    shared_library(root / "librb_fix.so", [C_DIR / "rb_fix.c"], f"-L{root / 'lib'}", "-lrb",
                   patchable=False)
    (root / "fix.desc").write_text("librb_fix.so\n@lib/librb.so\nrb_sum:rb_sum_v2\n")
    packed = tool("ulp-packer", root / "fix.desc", "-o", root / "fix.ulp")
    assert packed.returncode == 0, packed.stderr
    return root


def mapping_base(pid: int, pattern: str) -> int:
    """The load address of the object whose mapping name matches ``pattern``."""
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and re.search(pattern, fields[5]) and int(fields[2], 16) == 0:
                return int(fields[0].split("-")[0], 16)
    raise AssertionError(f"no mapping matching {pattern} in process {pid}")


def symbols(path: Path, section: str) -> dict[str, int]:
    with open(path, "rb") as f:
        table = ELFFile(f).get_section_by_name(section)
        return {symbol.name: symbol["st_value"] for symbol in table.iter_symbols()}


def plt_slots(path: Path) -> dict[str, int]:
    """Name -> offset of the patch object's PLT slot (R_X86_64_JUMP_SLOT)."""
    return relocated_slots(path, R_X86_64_JUMP_SLOT)


def global_data_slots(path: Path) -> dict[str, int]:
    """Name -> offset of the patch object's GOT slot for an address (GLOB_DAT)."""
    return relocated_slots(path, R_X86_64_GLOB_DAT)


def relocated_slots(path: Path, kind: int) -> dict[str, int]:
    with open(path, "rb") as f:
        elf = ELFFile(f)
        dynsym = elf.get_section_by_name(".dynsym")
        slots = {}
        for section in elf.iter_sections():
            if isinstance(section, RelocationSection):
                for relocation in section.iter_relocations():
                    if relocation["r_info_type"] == kind:
                        name = dynsym.get_symbol(relocation["r_info_sym"]).name
                        slots[name] = relocation["r_offset"]
        return slots


def read_word(pid: int, address: int) -> int:
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(address)
        return struct.unpack("<Q", mem.read(8))[0]


def test_patch_calls_bound_past_the_trampolines(rebind: Path) -> None:
    app = LiveProcess([rebind / "app"], env={"LD_LIBRARY_PATH": str(rebind / "lib")})
    with app:
        assert app.next_line() == "ready"
        app.send("go\n")
        before = app.next_line()
        assert before.startswith("sum=55 ")
        code, _, err = trigger_here("--timeout", "10", app.pid, rebind / "fix.ulp")
        assert code == 0, err
        app.send("go\n")
        after = app.next_line()
        # rb_sum_v2 ends the recursion with rb_helper(0) = 1000
        assert after == before.replace("sum=55", "sum=1055")

        fix_base = mapping_base(app.pid, r"memfd:ulp-patch")
        lib_base = mapping_base(app.pid, r"/lib/librb\.so$")
        slots = plt_slots(rebind / "librb_fix.so")
        fix_symbols = symbols(rebind / "librb_fix.so", ".dynsym")
        lib_functions = symbols(rebind / "librb.unprepared.so", ".symtab")
        lib_dynamic = symbols(rebind / "lib" / "librb.so", ".dynsym")
        entry_nops = 0  # no -fcf-protection here: the NOPs are at the entry
        # recursion: the replacement itself
        assert (read_word(app.pid, fix_base + slots["rb_sum"])
                == fix_base + fix_symbols["rb_sum_v2"])
        # another function of the library: its entry, past the trampoline
        assert (read_word(app.pid, fix_base + slots["rb_helper"])
                == lib_base + lib_functions["rb_helper"] + entry_nops)
        # an address the patch may hand out stays the trampoline's
        trampoline = lib_base + lib_dynamic["rb_other"]
        assert after.endswith(f"other={trampoline:#x}")
        assert "rb_other" not in slots
        got = global_data_slots(rebind / "librb_fix.so")
        assert read_word(app.pid, fix_base + got["rb_other"]) == trampoline
        code, _, err = trigger_here("--revert", "--timeout", "10", app.pid, rebind / "fix.ulp")
        assert code == 0, err
        app.send("go\n")
        assert app.next_line() == before


def test_library_calls_to_its_own_exports_bound_to_their_entries(rebind: Path) -> None:
    """Once the library is registered (its first call from outside), the
    agent binds its own PLT slots for its exports to the functions' entries:
    the place the trampoline sends such nested calls, without the checks."""
    with LiveProcess([rebind / "app"], env={"LD_LIBRARY_PATH": str(rebind / "lib")}) as app:
        assert app.next_line() == "ready"
        app.send("go\n")
        assert app.next_line().startswith("sum=55 ")
        lib_base = mapping_base(app.pid, r"/lib/librb\.so$")
        slot = lib_base + plt_slots(rebind / "lib" / "librb.so")["rb_sum"]
        entry = lib_base + symbols(rebind / "librb.unprepared.so", ".symtab")["rb_sum"]
        deadline = time.monotonic() + 10  # the agent looks every 250 ms
        while read_word(app.pid, slot) != entry and time.monotonic() < deadline:
            time.sleep(0.05)
        assert read_word(app.pid, slot) == entry
        app.send("go\n")
        assert app.next_line().startswith("sum=55 ")
        # a patch still reaches calls made through the rebound slot
        code, _, err = trigger_here("--timeout", "10", app.pid, rebind / "fix.ulp")
        assert code == 0, err
        app.send("go\n")
        assert app.next_line().startswith("sum=1055 ")


def test_a_replacement_replaced_again_by_a_later_patch_is_not_called_directly(
        rebind: Path) -> None:
    """Patch 1 replaces rb_sum and rb_helper, and its rb_sum_v2 calls
    rb_helper: bound to patch 1's own rb_helper_v2.  Patch 2 replaces
    rb_helper again: from then on rb_sum_v2 must run the rb_helper the
    universe selects (patch 2's), not its own."""
    shared_library(rebind / "librb_fix3.so", [C_DIR / "rb_fix3.c"], patchable=False)
    (rebind / "two.desc").write_text("librb_fix.so\n@lib/librb.so\nrb_sum:rb_sum_v2\n"
                                     "rb_helper:rb_helper_v2\n")
    (rebind / "three.desc").write_text("librb_fix3.so\n@lib/librb.so\nrb_helper:rb_helper_v3\n")
    for name in ("two", "three"):
        packed = tool("ulp-packer", rebind / f"{name}.desc", "-o", rebind / f"{name}.ulp")
        assert packed.returncode == 0, packed.stderr
    with LiveProcess([rebind / "app"], env={"LD_LIBRARY_PATH": str(rebind / "lib")}) as app:
        assert app.next_line() == "ready"
        for args, total in (((rebind / "two.ulp",), 2055), ((rebind / "three.ulp",), 3055),
                            (("--revert", rebind / "three.ulp"), 2055),
                            (("--revert", rebind / "two.ulp"), 55)):
            code, _, err = trigger_here("--timeout", "10", *args[:-1], app.pid, args[-1])
            assert code == 0, err
            app.send("go\n")
            assert app.next_line().startswith(f"sum={total} "), args
