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

from capstone import x86

from ulp import layout

from .codetemplate import CodeError, CodeTemplate, compile_template, decode

__all__ = ["CodeError", "trampoline", "padding_stub", "verify_trampoline",
           "verify_padding_stub", "is_nop_run", "is_endbr64"]

#: what differs between two trampolines (the template may use each)
TRAMPOLINE_PARAMS = ("index", "entry", "fdesc", "got")
PADDING_PARAMS = ("fdesc", "got")


@functools.cache
def trampoline_template(**static: object) -> CodeTemplate:
    """The compiled trampoline; ``static`` is template context shared by every copy."""
    return compile_template("trampoline.s.j2", layout.TRAMPOLINE_SIZE, TRAMPOLINE_PARAMS,
                            "trampoline", **static)


@functools.cache
def padding_template(**static: object) -> CodeTemplate:
    return compile_template("padding.s.j2", layout.PADDING_SIZE, PADDING_PARAMS,
                            "padding stub", **static)


def trampoline(index: int, address: int, entry: int, func_desc: int, got: int) -> bytes:
    """Trampoline ``index``: TRAMPOLINE_SIZE bytes to place at ``address``."""
    return trampoline_template().emit(address, trampoline_values(index, entry, func_desc, got))


def padding_stub(address: int, func_desc: int, got: int) -> bytes:
    """The PADDING_SIZE bytes written over the NOPs before an entry."""
    return padding_template().emit(address, {"fdesc": func_desc, "got": got})


def verify_trampoline(code: bytes, address: int, entry: int, func_desc: int, got: int,
                      index: int = 0) -> None:
    """Raise CodeError unless ``code`` is the trampoline for these addresses.

    ``index`` only matters for a template that uses it; the one read back
    from a file is checked with the index of its descriptor.
    """
    values = trampoline_values(index, entry, func_desc, got)
    trampoline_template().check(code, address, values)


def verify_padding_stub(code: bytes, address: int, func_desc: int, got: int) -> None:
    padding_template().check(code, address, {"fdesc": func_desc, "got": got})


def trampoline_values(index: int, entry: int, func_desc: int, got: int) -> dict[str, int]:
    return {"index": index, "entry": entry, "fdesc": func_desc, "got": got}


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
