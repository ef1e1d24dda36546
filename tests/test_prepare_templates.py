"""The code templates are compiled once and patched per copy (toolchain/codetemplate.py).

What ulp-prepare emits must be exactly what keystone assembles for each copy,
whatever the template holds: the lead may change the trampoline's
instructions and size (layout version 3), so these tests also compile other
templates of other sizes and check every copy against a fresh assembly.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from toolchain import codetemplate, trampolines
from ulp import layout

PARAMS = ("index", "entry", "fdesc", "got")

#: a trampoline as it might look in another layout: a register test instead of a
#: memory compare, endbr64 only for CET libraries, an immediate from the index
OTHER_TRAMPOLINE = """\
{% if endbr64 %}endbr64{% endif %}
mov r11, qword ptr [rip + @got]
test r11, r11
je {{ "%#x" % entry }}
lea r10, [rip + @fdesc]
mov eax, {{ index * 3 }}
jmp r11
"""


def reference(template: str, size: int, address: int, values: dict[str, int],
              directory=codetemplate.TEMPLATES, **static: object) -> bytes:
    """One copy assembled by keystone from scratch, as ulp-prepare once did for each."""
    lines = codetemplate.render(template, directory, **static, **values)
    return codetemplate.int3_fill(codetemplate.assemble(lines, address, values), size, "copy")


def copies(seed: int, count: int = 60):
    """Addresses and values as in real libraries (targets never within 256 bytes)."""
    chooser = random.Random(seed)
    for index in range(count):
        address = chooser.randrange(0x1000, 1 << 29) & ~0xF
        values = {"index": index, "got": chooser.randrange(0, 1 << 29),
                  "fdesc": chooser.randrange(0, 1 << 29)}
        entry = address
        while abs(entry - address) < 256:
            entry = chooser.randrange(0, 1 << 29)
        yield address, {**values, "entry": entry}


def trampoline_targets(index: int, values: dict[str, int],
                       endbr64: bool) -> trampolines.TrampolineTargets:
    """The trampoline's targets derived from one copy's values."""
    return trampolines.TrampolineTargets(
        index=index, entry_nops=values["entry"] + 4 * endbr64,
        body=values["entry"] + 4 * endbr64 + 2, func_desc=values["fdesc"], got=values["got"],
        code_start=values["entry"] & ~0xFFFF, code_size=0x10000 + index, endbr64=endbr64)


@pytest.mark.parametrize("endbr64", [True, False])
def test_trampolines_and_padding_stubs_are_what_keystone_assembles(endbr64):
    for address, values in copies(1 + endbr64):
        targets = trampoline_targets(values["index"], values, endbr64)
        assert trampolines.trampoline(address, targets) == reference(
            "trampoline.s.j2", layout.TRAMPOLINE_SIZE, address, targets.values(),
            endbr64=endbr64, fd_current=layout.FD_CURRENT)
        stub = {"fdesc_any": values["fdesc"] + 1, "got": values["got"]}
        assert trampolines.padding_stub(address, values["fdesc"], values["got"]) == reference(
            "padding.s.j2", layout.PADDING_SIZE, address, stub)


@pytest.mark.parametrize("size", [48, 64])
@pytest.mark.parametrize("endbr64", [True, False])
def test_another_template_of_another_size_is_patched_exactly(tmp_path, size, endbr64):
    (tmp_path / "other.s.j2").write_text(OTHER_TRAMPOLINE)
    compiled = codetemplate.compile_template("other.s.j2", size, PARAMS, "other",
                                             directory=tmp_path, endbr64=endbr64)
    assert compiled.size == size
    assert compiled.pattern.startswith(layout.ENDBR64) == endbr64
    # got, entry, fdesc: rip-relative or rel32; the index immediate
    assert len(compiled.fields) == 4
    for address, values in copies(size + endbr64):
        code = compiled.emit(address, values)
        assert code == reference("other.s.j2", size, address, values, tmp_path,
                                 endbr64=endbr64)
        compiled.check(code, address, values)


def test_a_copy_with_any_byte_changed_does_not_check_out():
    address, values = next(copies(7))
    targets = trampoline_targets(0, values, endbr64=False)
    code = trampolines.trampoline(address, targets)
    for offset in range(len(code)):
        damaged = bytearray(code)
        damaged[offset] ^= 0x01
        with pytest.raises(codetemplate.CodeError, match=f"byte {offset} differs"):
            trampolines.verify_trampoline(bytes(damaged), address, targets)
    for field in ("body", "func_desc", "got"):
        moved = dataclasses.replace(targets, **{field: getattr(targets, field) + 16})
        with pytest.raises(codetemplate.CodeError):
            trampolines.verify_trampoline(code, address, moved)


@pytest.mark.parametrize("text, problem", [
    ("jmp qword ptr [rip + 0x1000]\n", "does not name"),
    ("lea r10, [rip + @fdesc]\n" * 3, "more than"),
    ("mov eax, {{ (entry * entry) % 65521 }}\n", "field|linear|not the same"),
])
def test_templates_that_cannot_be_patched_are_refused(tmp_path, text, problem):
    (tmp_path / "bad.s.j2").write_text(text)
    with pytest.raises(codetemplate.CodeError, match=problem):
        codetemplate.compile_template("bad.s.j2", 16, PARAMS, "bad", directory=tmp_path)
