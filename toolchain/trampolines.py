"""The code ulp-prepare writes: trampolines and padding stubs.

The assembly comes from the jinja2 templates in ``templates/``; keystone
assembles it and capstone checks the result.  A template writes a
rip-relative operand as ``[rip + @name]``: keystone cannot resolve a
rip-relative reference to an absolute address, so each instruction is first
assembled with a zero displacement to learn its length, then again with
``target - next_ip``.  Branches take absolute targets, which keystone encodes
relative to the address the instruction is assembled at.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import capstone
import jinja2
import keystone
from capstone import x86

from ulp import layout

TEMPLATES = Path(__file__).parent / "templates"
_RIP_OPERAND = re.compile(r"\+ @(\w+)")


class CodeError(Exception):
    """Generated code does not have the intended shape (a bug in ulp-prepare)."""


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


@functools.cache
def _keystone() -> keystone.Ks:
    return keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_64)


@functools.cache
def _capstone() -> capstone.Cs:
    disassembler = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    disassembler.detail = True
    return disassembler


def _render(template: str, **context: object) -> list[str]:
    text = _environment().get_template(template).render(**context)
    return [line.strip() for line in text.splitlines() if line.strip()]


def _assemble_line(line: str, address: int) -> bytes:
    # keystone 0.9 predates CET and does not know endbr64: it is a constant.
    if line == "endbr64":
        return layout.ENDBR64
    try:
        encoding, _count = _keystone().asm(line, address)
    except keystone.KsError as error:
        raise CodeError(f"keystone cannot assemble {line!r} at {address:#x} ({error})") from None
    if not encoding:
        raise CodeError(f"keystone produced nothing for {line!r}")
    return bytes(encoding)


def _resolve(line: str, targets: dict[str, int], next_ip: int) -> str:
    def displacement(match: re.Match[str]) -> str:
        disp = targets[match.group(1)] - next_ip
        return f"+ {disp:#x}" if disp >= 0 else f"- {-disp:#x}"

    return _RIP_OPERAND.sub(displacement, line)


def assemble(lines: list[str], address: int, targets: dict[str, int],
             labels: dict[str, int] | None = None) -> bytes:
    """Assemble ``lines`` to run at ``address``, resolving ``@name`` operands.

    A line ``name:`` is a label: its address goes into ``labels``.
    """
    code = bytearray()
    for line in lines:
        here = address + len(code)
        if line.endswith(":"):
            if labels is not None:
                labels[line[:-1]] = here
            continue
        length = len(_assemble_line(_resolve(line, targets, here), here))
        # rip-relative operands always carry a 32-bit displacement, so the
        # length found with a provisional displacement is the final one.
        encoded = _assemble_line(_resolve(line, targets, here + length), here)
        if len(encoded) != length:
            raise CodeError(f"{line!r} changed length between passes")
        code += encoded
    return bytes(code)


def _int3_fill(code: bytes, size: int, what: str) -> bytes:
    if len(code) > size:
        raise CodeError(f"{what} is {len(code)} bytes, more than {size}")
    return code + _assemble_line("int3", 0) * (size - len(code))


@dataclass(frozen=True)
class TrampolineTargets:
    """Where trampoline ``index`` of a library leads (docs/prepared-layout.md)."""

    entry_nops: int  # nested calls go on here (the patch point)
    body: int  # without the runtime, calls go on here
    func_desc: int
    got: int  # the ulp_entry GOT slot
    code_start: int  # the library's code: return addresses in it are nested
    code_size: int
    endbr64: bool  # the function starts with endbr64, so does its trampoline


def trampoline(index: int, address: int, to: TrampolineTargets) -> bytes:
    """Trampoline ``index``: TRAMPOLINE_SIZE bytes to place at ``address``."""
    lines = _render("trampoline.s.j2", index=index, body=to.body, entry_nops=to.entry_nops,
                    code_size=to.code_size, endbr64=to.endbr64)
    code = assemble(lines, address, {"got": to.got, "fdesc": to.func_desc,
                                     "code_start": to.code_start})
    code = _int3_fill(code, layout.TRAMPOLINE_SIZE, "a trampoline")
    verify_trampoline(code, address, to)
    return code


def padding_stub(address: int, func_desc: int, got: int) -> bytes:
    """The PADDING_SIZE bytes written over the NOPs before an entry."""
    lines = _render("padding.s.j2")
    code = assemble(lines, address, {"got": got, "fdesc_any": func_desc + 1})
    code = _int3_fill(code, layout.PADDING_SIZE, "a padding stub")
    verify_padding_stub(code, address, func_desc, got)
    return code


# -- checking with capstone -------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """One instruction as it must decode."""

    instruction: int  # capstone X86_INS_*
    target: int | None = None  # branch target or rip-relative memory address
    register: int | None = None  # first operand register, when it matters


def decode(code: bytes, address: int) -> list[capstone.CsInsn]:
    """Every instruction of ``code``; raise CodeError if some byte does not decode."""
    instructions = list(_capstone().disasm(code, address))
    if sum(insn.size for insn in instructions) != len(code):
        raise CodeError(f"code at {address:#x} does not decode completely")
    return instructions


def _target(insn: capstone.CsInsn) -> int | None:
    for operand in insn.operands:
        if operand.type == x86.X86_OP_IMM and insn.group(capstone.CS_GRP_JUMP):
            return operand.imm
        if operand.type == x86.X86_OP_MEM and operand.mem.base == x86.X86_REG_RIP:
            return insn.address + insn.size + operand.mem.disp
    return None


def check_shape(code: bytes, address: int, expected: list[Expected], what: str) -> None:
    """Raise CodeError unless ``code`` is ``expected`` followed by int3 only."""
    instructions = decode(code, address)
    body, rest = instructions[:len(expected)], instructions[len(expected):]
    if len(body) != len(expected):
        raise CodeError(f"{what} at {address:#x}: too few instructions")
    for insn, want in zip(body, expected, strict=True):
        problem = None
        if insn.id != want.instruction:
            problem = f"unexpected {insn.mnemonic} {insn.op_str}"
        elif want.target is not None and _target(insn) != want.target:
            problem = f"{insn.mnemonic} {insn.op_str} does not reach {want.target:#x}"
        elif want.register is not None and insn.operands[0].reg != want.register:
            problem = f"{insn.mnemonic} {insn.op_str} has the wrong register"
        if problem:
            raise CodeError(f"{what} at {insn.address:#x}: {problem}")
    if any(insn.id != x86.X86_INS_INT3 for insn in rest):
        raise CodeError(f"{what} at {address:#x}: trailing bytes are not int3")


def verify_trampoline(code: bytes, address: int, to: TrampolineTargets) -> None:
    """Check every instruction of a trampoline, and where each branch goes."""
    if len(code) != layout.TRAMPOLINE_SIZE:
        raise CodeError(f"trampoline at {address:#x} is {len(code)} bytes")
    expected = [Expected(x86.X86_INS_ENDBR64)] if to.endbr64 else []
    expected += [
        Expected(x86.X86_INS_CMP, target=to.got),
        Expected(x86.X86_INS_JE, target=to.body),
        Expected(x86.X86_INS_MOV, register=x86.X86_REG_R11),
        Expected(x86.X86_INS_LEA, target=to.code_start, register=x86.X86_REG_R10),
        Expected(x86.X86_INS_SUB, register=x86.X86_REG_R11),
        Expected(x86.X86_INS_CMP, register=x86.X86_REG_R11),
        Expected(x86.X86_INS_JB, target=to.entry_nops),
        Expected(x86.X86_INS_LEA, target=to.func_desc, register=x86.X86_REG_R10),
        Expected(x86.X86_INS_JMP, target=to.got),
    ]
    check_shape(code, address, expected, "trampoline")
    instructions = decode(code, address)
    offset = 1 if to.endbr64 else 0
    load, _, subtract, compare = instructions[offset + 2:offset + 6]
    if (load.op_str != "r11, qword ptr [rsp]" or subtract.op_str != "r11, r10"
            or compare.operands[1].type != x86.X86_OP_IMM
            or compare.operands[1].imm != to.code_size):
        raise CodeError(f"trampoline at {address:#x}: the caller check is not the library's "
                        "code range")


def verify_padding_stub(code: bytes, address: int, func_desc: int, got: int) -> None:
    if len(code) != layout.PADDING_SIZE:
        raise CodeError(f"padding stub at {address:#x} is {len(code)} bytes")
    check_shape(code, address, [
        Expected(x86.X86_INS_LEA, target=func_desc + 1, register=x86.X86_REG_R10),
        Expected(x86.X86_INS_JMP, target=got),
    ], "padding stub")


def is_nop_run(code: bytes, address: int, sizes: tuple[int, ...]) -> bool:
    """True if ``code`` decodes as NOP instructions of exactly these sizes."""
    try:
        instructions = decode(code, address)
    except CodeError:
        return False
    return (tuple(insn.size for insn in instructions) == sizes
            and all(insn.id == x86.X86_INS_NOP for insn in instructions))


def is_endbr64(code: bytes, address: int) -> bool:
    instructions = list(_capstone().disasm(code, address, count=1))
    return (len(instructions) == 1 and instructions[0].id == x86.X86_INS_ENDBR64
            and instructions[0].size == len(code))
