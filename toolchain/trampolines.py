"""The code ulp-prepare writes: trampolines and padding stubs.

The assembly comes from the jinja2 templates in ``templates/``
(``trampoline.s.j2``, ``padding.s.j2``).  Each is compiled once per run by
``codetemplate``: keystone assembles it and capstone checks it, and every
copy is the compiled pattern with its address fields written in.  A
template writes a rip-relative operand as ``[rip + @name]`` and a branch
with an absolute target (``{{ entry }}``); the names it may use are the
parameters of ``trampoline`` and ``padding_stub`` below.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from capstone import x86

from ulp import layout

from .codetemplate import CodeError, CodeTemplate, compile_template, decode

__all__ = ["CodeError", "TrampolineTargets", "trampoline", "padding_stub",
           "verify_trampoline", "verify_padding_stub", "is_nop_run", "is_endbr64"]

#: what differs between two trampolines (the template may use each)
TRAMPOLINE_PARAMS = ("index", "body", "fdesc", "got")
PADDING_PARAMS = ("fdesc_any", "got")


@dataclass(frozen=True)
class TrampolineTargets:
    """Where trampoline ``index`` of a library leads (docs/prepared-layout.md)."""

    index: int
    entry_nops: int  # calls from the library go on here (the patch point)
    body: int  # without the runtime, calls go on here
    func_desc: int
    got: int  # the ulp_entry GOT slot
    code_start: int  # the library's code: return addresses in it are nested
    code_size: int
    endbr64: bool  # the function starts with endbr64, so does its trampoline

    def values(self) -> dict[str, int]:
        return {"index": self.index, "body": self.body, "fdesc": self.func_desc,
                "got": self.got}


def trampoline_template(endbr64: bool) -> CodeTemplate:
    """The compiled trampoline, for functions with or without endbr64."""
    return compile_template("trampoline.s.j2", layout.TRAMPOLINE_SIZE, TRAMPOLINE_PARAMS,
                            "trampoline", endbr64=endbr64, fd_current=layout.FD_CURRENT)


def padding_template() -> CodeTemplate:
    return compile_template("padding.s.j2", layout.PADDING_SIZE, PADDING_PARAMS,
                            "padding stub")


def trampoline(address: int, to: TrampolineTargets) -> bytes:
    """The TRAMPOLINE_SIZE bytes of a trampoline to place at ``address``."""
    return trampoline_template(to.endbr64).emit(address, to.values())


def padding_stub(address: int, func_desc: int, got: int) -> bytes:
    """The PADDING_SIZE bytes written over the NOPs before an entry."""
    return padding_template().emit(address, _padding_values(func_desc, got))


def verify_trampoline(code: bytes, address: int, to: TrampolineTargets) -> None:
    """Raise CodeError unless ``code`` is the trampoline for these addresses."""
    trampoline_template(to.endbr64).check(code, address, to.values())


def verify_padding_stub(code: bytes, address: int, func_desc: int, got: int) -> None:
    padding_template().check(code, address, _padding_values(func_desc, got))


def _padding_values(func_desc: int, got: int) -> dict[str, int]:
    # odd: the tracker checks the caller itself (runtime/entry.S)
    return {"fdesc_any": func_desc + 1, "got": got}


@functools.cache
def is_nop_run(code: bytes, sizes: tuple[int, ...]) -> bool:
    """True if ``code`` decodes as NOP instructions of exactly these sizes.

    Cached: every function of a library has the same NOPs, and a NOP decodes
    the same at every address.
    """
    try:
        instructions = decode(code, 0)
    except CodeError:
        return False
    return (tuple(insn.size for insn in instructions) == sizes
            and all(insn.id == x86.X86_INS_NOP for insn in instructions))


@functools.cache
def is_endbr64(code: bytes) -> bool:
    try:
        instructions = decode(code, 0)
    except CodeError:
        return False
    return len(instructions) == 1 and instructions[0].id == x86.X86_INS_ENDBR64
