"""Code that is the same at every address: assembled once, then patched per copy.

ulp-prepare writes one trampoline per exported function and one padding stub
before each entry.  Every copy is the same instruction sequence; only its
address and the addresses it refers to differ.  Assembling each copy with
keystone and checking it with capstone cost seconds for a library of
thousands of functions (issue 8), so a template is compiled once:

1. keystone assembles it at a base address with base values for its
   parameters, then again with the address and each parameter moved in turn
   by ``_DELTA``.  The bytes that change are the template's *fields*.  Each
   is a 32-bit little-endian value: a rip-relative displacement or branch
   offset (``target - next_ip``: coefficient +1 for the target, -1 for the
   address) or an immediate.  ``_DELTA`` changes each of the four bytes of
   a field whatever the carries, so no field hides.
2. Each field's value is a linear function of the address and parameters,
   with the coefficients read from those assemblies.  The model is checked
   against a fourth assembly at unrelated values: a template whose code
   length or encoding depends on the values is refused (CodeError).
3. capstone decodes the base copy once: it must decode completely, every
   branch target and rip-relative operand must be one of the parameters or
   inside the copy itself, and every field must be the operand of the
   instruction that holds it.

A copy is then the pattern with its fields written in (``emit``), and a copy
read back from a file checks out if it is byte for byte what ``emit`` gives
for the values it should have (``check``): nothing of the template's content
or size is known here besides what assembling it shows.
"""

from __future__ import annotations

import functools
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import capstone
import jinja2
import keystone
from capstone import x86

from ulp import layout

TEMPLATES = Path(__file__).parent / "templates"
_RIP_OPERAND = re.compile(r"\+ @(\w+)")
_FIELD = struct.Struct("<I")
_FIELD_SIZE = _FIELD.size
#: moves every byte of a 32-bit field, with or without carries (+4, +3, +2, +1 per byte)
_DELTA = 0x0102_0304
#: where the template is assembled to find its fields: far apart, so that
#: branches get their 32-bit form, as they need for real addresses
_BASE_ADDRESS = 0x2000_0000
_BASE_VALUE, _VALUE_STEP = 0x3000_0000, 0x0400_0000
_OTHER_ADDRESS = 0x1234_5670
_OTHER_VALUE, _OTHER_STEP = 0x2345_6788, 0x0310_1018
_MAX_COEFFICIENT = 16
ADDRESS = "address"


class CodeError(Exception):
    """Generated code does not have the intended shape (a bug in ulp-prepare)."""


@functools.cache
def _environment(directory: Path) -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(directory),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


@functools.cache
def _keystone() -> keystone.Ks:
    return keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_64)


@functools.cache
def _capstone() -> capstone.Cs:
    disassembler = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    disassembler.detail = True
    return disassembler


def render(template: str, directory: Path = TEMPLATES, **context: object) -> list[str]:
    text = _environment(directory).get_template(template).render(**context)
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


def _resolve(line: str, targets: Mapping[str, int], next_ip: int) -> str:
    def displacement(match: re.Match[str]) -> str:
        disp = targets[match.group(1)] - next_ip
        return f"+ {disp:#x}" if disp >= 0 else f"- {-disp:#x}"

    return _RIP_OPERAND.sub(displacement, line)


def assemble(lines: list[str], address: int, targets: Mapping[str, int]) -> bytes:
    """Assemble ``lines`` to run at ``address``; ``[rip + @name]`` reaches ``targets[name]``.

    keystone cannot resolve a rip-relative reference to an absolute address,
    so each line is assembled with a provisional displacement to learn its
    length, then with ``target - next_ip``.  Branches take absolute targets,
    which keystone encodes relative to the address the line is assembled at.
    """
    code = bytearray()
    for line in lines:
        here = address + len(code)
        length = len(_assemble_line(_resolve(line, targets, here), here))
        # rip-relative operands always carry a 32-bit displacement, so the
        # length found with a provisional displacement is the final one.
        encoded = _assemble_line(_resolve(line, targets, here + length), here)
        if len(encoded) != length:
            raise CodeError(f"{line!r} changed length between passes")
        code += encoded
    return bytes(code)


def int3_fill(code: bytes, size: int, what: str) -> bytes:
    if len(code) > size:
        raise CodeError(f"{what} is {len(code)} bytes, more than {size}")
    return code + _assemble_line("int3", 0) * (size - len(code))


@dataclass(frozen=True)
class Field:
    """A 32-bit value at ``offset``: ``constant + sum(coefficients[x] * x)``."""

    offset: int
    constant: int
    coefficients: tuple[tuple[str, int], ...]  # (ADDRESS or a parameter name, coefficient)

    @property
    def pc_relative(self) -> bool:
        return any(name == ADDRESS for name, _ in self.coefficients)

    def value(self, address: int, values: Mapping[str, int]) -> int:
        value = self.constant
        for name, coefficient in self.coefficients:
            value += coefficient * (address if name == ADDRESS else values[name])
        return value


@dataclass
class CodeTemplate:
    """A template compiled to a byte pattern and the fields each copy fills in."""

    what: str
    pattern: bytes
    params: tuple[str, ...]
    fields: tuple[Field, ...]
    #: (offset, size, text) of each instruction of the pattern, for messages
    instructions: tuple[tuple[int, int, str], ...]

    @property
    def size(self) -> int:
        return len(self.pattern)

    @functools.cached_property
    def _limits(self) -> tuple[tuple[Field, int], ...]:
        # a displacement is signed; an immediate may be read either way
        return tuple((field, 1 << 31 if field.pc_relative else 1 << 32)
                     for field in self.fields)

    def emit(self, address: int, values: Mapping[str, int]) -> bytes:
        """The copy to place at ``address``, referring to ``values``."""
        code = bytearray(self.pattern)
        self._fill(code, 0, address, values)
        return bytes(code)

    def emit_into(self, buffer: bytearray, offset: int, address: int,
                  values: Mapping[str, int]) -> None:
        """Write the copy for ``address`` into ``buffer`` at ``offset``."""
        buffer[offset:offset + self.size] = self.pattern
        self._fill(buffer, offset, address, values)

    def _fill(self, buffer: bytearray, offset: int, address: int,
              values: Mapping[str, int]) -> None:
        for field, top in self._limits:
            value = field.value(address, values)
            if not -(1 << 31) <= value < top:
                raise CodeError(f"{self.what} at {address:#x}: a 32-bit field cannot hold "
                                f"{value:#x} (target out of reach)")
            _FIELD.pack_into(buffer, offset + field.offset, value & 0xFFFF_FFFF)

    def check(self, code: bytes, address: int, values: Mapping[str, int]) -> None:
        """Raise CodeError unless ``code`` is exactly the copy for ``address`` and ``values``."""
        if len(code) != self.size:
            raise CodeError(f"{self.what} at {address:#x} is {len(code)} bytes, not {self.size}")
        expected = self.emit(address, values)
        if code == expected:
            return
        at = next(i for i, (a, b) in enumerate(zip(code, expected, strict=True)) if a != b)
        where = next((text for start, size, text in self.instructions
                      if start <= at < start + size), "its int3 filling")
        raise CodeError(f"{self.what} at {address:#x}: byte {at} differs from the template "
                        f"({where})")


def compile_template(template: str, size: int, params: tuple[str, ...], what: str,
                     directory: Path = TEMPLATES, **static: object) -> CodeTemplate:
    """Assemble ``template`` (``size`` bytes, int3-filled) once and find its fields.

    ``params`` are the numbers that differ between copies: each is given to
    the template both as a jinja variable and as an ``@name`` rip-relative
    target.  ``static`` is the rest of the jinja context, the same for every
    copy.  Templates are read from ``directory``.
    """
    return _compiled(template, size, tuple(sorted(params)), what, directory,
                     tuple(sorted(static.items())))


@functools.cache
def _compiled(template: str, size: int, params: tuple[str, ...], what: str, directory: Path,
              static: tuple[tuple[str, object], ...]) -> CodeTemplate:
    def copy(address: int, values: dict[str, int]) -> bytes:
        lines = render(template, directory, **dict(static), **values)
        return int3_fill(assemble(lines, address, values), size, what)

    base = {name: _BASE_VALUE + i * _VALUE_STEP for i, name in enumerate(params)}
    pattern = copy(_BASE_ADDRESS, base)
    moved = {ADDRESS: copy(_BASE_ADDRESS + _DELTA, base)}
    for name in params:
        moved[name] = copy(_BASE_ADDRESS, {**base, name: base[name] + _DELTA})
    fields = _find_fields(pattern, moved, {**base, ADDRESS: _BASE_ADDRESS}, what)
    compiled = CodeTemplate(what, pattern, params, fields, _decode_pattern(pattern))
    other = {name: _OTHER_VALUE + i * _OTHER_STEP for i, name in enumerate(params)}
    if compiled.emit(_OTHER_ADDRESS, other) != copy(_OTHER_ADDRESS, other):
        raise CodeError(f"{what}: the code of {template} is not the same at every address "
                        "(an encoding depends on the values)")
    _check_references(compiled, base)
    return compiled


def _find_fields(pattern: bytes, moved: dict[str, bytes], base: dict[str, int],
                 what: str) -> tuple[Field, ...]:
    changed = sorted({i for code in moved.values() for i, (a, b)
                      in enumerate(zip(pattern, code, strict=True)) if a != b})
    runs: list[list[int]] = []
    for offset in changed:
        if runs and runs[-1][-1] == offset - 1:
            runs[-1].append(offset)
        else:
            runs.append([offset])
    fields = []
    for run in runs:
        if len(run) % _FIELD_SIZE:
            raise CodeError(f"{what}: {len(run)} bytes at offset {run[0]} depend on the "
                            "address or a parameter; only 32-bit fields can be patched")
        for offset in run[::_FIELD_SIZE]:
            fields.append(_field_at(offset, pattern, moved, base, what))
    return tuple(fields)


def _field_at(offset: int, pattern: bytes, moved: dict[str, bytes], base: dict[str, int],
              what: str) -> Field:
    (value,) = _FIELD.unpack_from(pattern, offset)
    coefficients = []
    for name, code in moved.items():
        (changed,) = _FIELD.unpack_from(code, offset)
        difference = (changed - value) % (1 << 32)
        factor = next((c for c in range(-_MAX_COEFFICIENT, _MAX_COEFFICIENT + 1)
                       if (c * _DELTA) % (1 << 32) == difference), None)
        if factor is None:
            raise CodeError(f"{what}: the field at offset {offset} is not linear in {name}")
        if factor:
            coefficients.append((name, factor))
    # Fields are modulo 2**32: take the constant nearest 0 (a rel32's is minus
    # the offset of the next instruction; an immediate's usually 0).
    constant = (value - sum(c * base[name] for name, c in coefficients) + (1 << 31)) \
        % (1 << 32) - (1 << 31)
    return Field(offset, constant, tuple(coefficients))


def _decode_pattern(pattern: bytes) -> tuple[tuple[int, int, str], ...]:
    instructions = decode(pattern, _BASE_ADDRESS)
    return tuple((insn.address - _BASE_ADDRESS, insn.size, f"{insn.mnemonic} {insn.op_str}")
                 for insn in instructions)


def _check_references(compiled: CodeTemplate, base: dict[str, int]) -> None:
    """Every operand that names an address names a parameter or the copy itself."""
    what = compiled.what
    allowed = {value: name for name, value in base.items()}
    inside = range(_BASE_ADDRESS, _BASE_ADDRESS + compiled.size)
    instructions = decode(compiled.pattern, _BASE_ADDRESS)
    for field in compiled.fields:
        holder = next((insn for insn in instructions
                       if insn.address - _BASE_ADDRESS <= field.offset
                       and field.offset + _FIELD_SIZE <= insn.address - _BASE_ADDRESS + insn.size),
                      None)
        if holder is None:
            raise CodeError(f"{what}: the field at offset {field.offset} straddles instructions")
        target = reference(holder)
        coefficients = dict(field.coefficients)
        if coefficients.get(ADDRESS):
            # pc-relative: the operand must reach exactly one parameter
            named = [name for name, c in coefficients.items() if name != ADDRESS]
            if (target not in allowed or coefficients[ADDRESS] != -1 or len(named) != 1
                    or allowed[target] != named[0] or coefficients[named[0]] != 1):
                raise CodeError(f"{what}: {holder.mnemonic} {holder.op_str} does not reach "
                                "the parameter its field follows")
    for insn in instructions:
        target = reference(insn)
        if target is not None and target not in allowed and target not in inside:
            raise CodeError(f"{what}: {insn.mnemonic} {insn.op_str} refers to {target:#x}, "
                            "which the template does not name")


def decode(code: bytes, address: int) -> list[capstone.CsInsn]:
    """Every instruction of ``code``; raise CodeError if some byte does not decode."""
    instructions = list(_capstone().disasm(code, address))
    if sum(insn.size for insn in instructions) != len(code):
        raise CodeError(f"code at {address:#x} does not decode completely")
    return instructions


def reference(insn: capstone.CsInsn) -> int | None:
    """The address a branch goes to or a rip-relative operand names, else None."""
    for operand in insn.operands:
        if operand.type == x86.X86_OP_IMM and (insn.group(capstone.CS_GRP_JUMP)
                                               or insn.group(capstone.CS_GRP_CALL)):
            return operand.imm
        if operand.type == x86.X86_OP_MEM and operand.mem.base == x86.X86_REG_RIP:
            return insn.address + insn.size + operand.mem.disp
    return None
