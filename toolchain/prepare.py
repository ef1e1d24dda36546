"""ulp-prepare: make a shared object live-patchable.

See docs/prepared-layout.md for what is added.  In short: a ``.ulp.data``
section with a library descriptor and one descriptor per exported function,
a ``.ulp`` section with one trampoline per exported function (the .dynsym
entries point at them), a stub in each function's padding and a 2-byte NOP
at each entry.  Every original address is kept.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile

from ulp import layout
from ulp.console import ArgumentParser
from ulp.elfinfo import open_elf, require_x86_64_shared_object
from ulp.errors import ExitCode, UlpError, run_cli
from ulp.prepared import PreparedLibrary

from . import trampolines
from .analysis import (
    PATCHABLE_FLAG,
    Function,
    Library,
    prepared_descriptor,
    read_library,
)
from .elfedit import Editor, NobitsSection, original_nobits
from .inputcheck import check_input
from .verify import verify_prepared

DESCRIPTION = """\
Make an x86-64 shared object live-patchable: add a trampoline for every
exported function and the descriptors the ulp runtime uses, keeping every
original address. The library must be built with the flags --cflags prints.
A library that is already prepared is left unchanged (with -o, it is copied).
Symbolic links are followed, never replaced: for LIB (or OUT) a link such as
libfoo.so -> libfoo.so.1 -> libfoo.so.1.2.3, the file at the end of the chain
is written and every link keeps pointing at it. Without the runtime in the
process, a prepared library behaves exactly like the original.
"""


def build_parser() -> argparse.ArgumentParser:
    # one-line usage errors, --version: ulp.console
    parser = ArgumentParser(prog="ulp-prepare", description=DESCRIPTION)
    parser.add_argument("library", nargs="?", metavar="LIB",
                        help="the shared object to prepare (rewritten in place without -o)")
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="write the prepared library to OUT instead")
    parser.add_argument("--cflags", action="store_true",
                        help="print the compiler flags a live-patchable build needs, and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli("ulp-prepare", _body, argv)


def _body(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cflags:
        print(PATCHABLE_FLAG)
        return ExitCode.OK
    if args.library is None:
        parser.error("LIB is required (or --cflags)")
    named = args.output or args.library
    output = link_target(named)
    # Say where the bytes went when a link led elsewhere: that file is the one loaded.
    through = f" (the file {output} its links lead to)" if output != named else ""
    functions = prepare(args.library, output)
    if functions is not None:
        print(f"{args.library}: prepared for live patching, {functions} function"
              + ("" if functions == 1 else "s")
              + (f", written to {args.output}" if args.output else "") + through)
    else:
        print(f"{args.library}: already prepared, left unchanged"
              + (f", copied to {args.output}{through}" if args.output
                 and not _same_file(args.library, output) else ""))
    return ExitCode.OK


def link_target(path: str) -> str:
    """The file at the end of ``path``'s chain of symbolic links (``path`` if none).

    Installed libraries are reached through links (libfoo.so -> libfoo.so.1
    -> libfoo.so.1.2.3): the prepared library is written over the file the
    chain ends at, so every link keeps leading to it.  Replacing a link
    with a prepared copy would leave the file that ld.so loads (through the
    soname link) unprepared.
    """
    return os.path.realpath(path) if os.path.islink(path) else path


def prepare(path: str, output: str) -> int | None:
    """Prepare ``path`` into ``output`` (may be the same file); return how
    many functions it prepared.

    Return None if ``path`` was already prepared: it is then only copied
    to ``output`` when that is another file.
    """
    check_input(path)
    with open_elf(path) as elf:
        require_x86_64_shared_object(elf, path, executable_too=True)
        already = prepared_descriptor(elf, path) is not None
        if not already:
            library = read_library(elf, path)
            nobits = original_nobits(elf)
    if already:
        # Only a library that checks out as ulp-prepare's own output counts
        # as prepared: anything else is refused, never passed on.
        verify_prepared(path)
        if not _same_file(path, output):
            _replace_atomically(output, path, lambda tmp: shutil.copyfile(path, tmp))
        return None
    _replace_atomically(output, path, lambda tmp: _rewrite(library, nobits, tmp))
    return len(library.functions)


def _rewrite(library: Library, nobits: list[NobitsSection], out: str) -> None:
    try:
        _edit(library, nobits, out)
    except trampolines.CodeError as error:
        # check_input keeps every address in reach of a trampoline: a bug if seen
        raise UlpError(f"{library.path}: internal error, {error}", ExitCode.FAILURE) from None


def _edit(library: Library, nobits: list[NobitsSection], out: str) -> None:
    editor = Editor(library.path)
    nfuncs = len(library.functions)
    data_vaddr, code_vaddr = editor.add_sections(
        layout.LIB_DESC_SIZE + nfuncs * layout.FUNC_DESC_SIZE,
        nfuncs * layout.TRAMPOLINE_SIZE)
    plan = Plan(library, data_vaddr, code_vaddr)
    editor.set_contents(plan.data_section(), plan.code_section())
    for index, function in enumerate(library.functions):
        editor.patch(function.padding, plan.padding_stub(index, function))
        editor.patch(function.entry_nops, layout.TWO_BYTE_NOP)
    for address in library.private_entry_nops:
        editor.patch(address, layout.TWO_BYTE_NOP)
    editor.point_dynamic_symbols({f.entry: plan.trampoline(i)
                                  for i, f in enumerate(library.functions)})
    editor.add_entry_symbol(plan.got_slot)
    editor.write(out, nobits)
    check_output(out, plan)


class Plan:
    """Where everything goes, once LIEF has placed the two new sections."""

    def __init__(self, library: Library, data_vaddr: int, code_vaddr: int) -> None:
        self.library = library
        self.data_vaddr = data_vaddr
        self.code_vaddr = code_vaddr
        self.got_slot = data_vaddr + layout.LIB_DESC_ENTRY_GOT_OFFSET

    def func_desc(self, index: int) -> int:
        return self.data_vaddr + layout.LIB_DESC_SIZE + index * layout.FUNC_DESC_SIZE

    def trampoline(self, index: int) -> int:
        return self.code_vaddr + index * layout.TRAMPOLINE_SIZE

    def data_section(self) -> bytes:
        library = self.library
        lib_desc = layout.LibDesc(
            layout_version=layout.LAYOUT_VERSION,
            nfuncs=len(library.functions),
            identity=library.identity,
            build_id=library.build_id,
            funcs_delta=layout.LIB_DESC_SIZE,
            trampolines_delta=self.code_vaddr - self.data_vaddr,
            code_delta=library.code_start - self.data_vaddr,
            code_size=library.code_end - library.code_start,
        )
        parts = [lib_desc.pack()]
        for index, function in enumerate(library.functions):
            here = self.func_desc(index)
            parts.append(layout.FuncDesc(
                body_delta=function.body - here,
                entry_delta=function.entry - here,
                lib_delta=self.data_vaddr - here,
                flags=layout.FUNC_FLAG_ENDBR64 if function.has_endbr64 else 0,
                index=index,
            ).pack())
        return b"".join(parts)

    def code_section(self) -> bytes:
        size = layout.TRAMPOLINE_SIZE
        code = bytearray(len(self.library.functions) * size)
        for index, function in enumerate(self.library.functions):
            targets = self.targets(index, function)
            template = trampolines.trampoline_template(targets.endbr64)
            template.emit_into(code, index * size, self.trampoline(index), targets.values())
        return bytes(code)

    def targets(self, index: int, function: Function) -> trampolines.TrampolineTargets:
        library = self.library
        return trampolines.TrampolineTargets(
            index=index, entry_nops=function.entry_nops, body=function.body,
            func_desc=self.func_desc(index), got=self.got_slot, code_start=library.code_start,
            code_size=library.code_end - library.code_start, endbr64=function.has_endbr64)

    def padding_stub(self, index: int, function: Function) -> bytes:
        return trampolines.padding_stub(function.padding, self.func_desc(index), self.got_slot)


def check_output(out: str, plan: Plan) -> None:
    """Read the written file back as the packer and runtime will; fail loudly if off.

    ``verify_prepared`` is the check any prepared library must pass; on top
    of it the file must hold what ``plan`` put there.  A library that fails
    either is a bug of ulp-prepare: it is not renamed over the output.
    """
    try:
        prepared = verify_prepared(out)
        _check_plan(prepared, plan)
    except (UlpError, ValueError) as error:
        raise UlpError(f"{plan.library.path}: internal error, the prepared library does not "
                       f"check out ({error})", ExitCode.FAILURE) from None


def _check_plan(prepared: PreparedLibrary, plan: Plan) -> None:
    functions = plan.library.functions
    if (prepared.lib_desc_vaddr != plan.data_vaddr
            or prepared.lib_desc_vaddr + prepared.desc.trampolines_delta != plan.code_vaddr
            or prepared.identity != plan.library.identity
            or prepared.build_id != plan.library.build_id
            or len(prepared.functions) != len(functions)):
        raise ValueError("descriptor table mismatch")
    for function, found in zip(functions, prepared.functions, strict=True):
        if (set(found.names) != set(function.names) or found.entry != function.entry
                or found.body != function.body or found.has_endbr64 != function.has_endbr64):
            raise ValueError(f"function {function.name} recorded wrongly")


def _same_file(a: str, b: str) -> bool:
    return os.path.exists(b) and os.path.samefile(a, b)


def _replace_atomically(output: str, source: str, produce) -> None:
    """Have ``produce(tmp)`` write a file next to ``output``, then rename it over ``output``.

    A crash or a refusal half-way never leaves a truncated library behind.
    The result keeps the permission bits of ``source``.
    """
    directory = os.path.dirname(os.path.abspath(output))
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(output)}.",
                                   suffix=".tmp")
    except OSError as error:
        raise UlpError(f"{output}: cannot write here ({error.strerror})",
                       ExitCode.FILE_MISSING) from None
    os.close(fd)
    try:
        produce(tmp)
        os.chmod(tmp, os.stat(source).st_mode & 0o7777)
        os.replace(tmp, output)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


if __name__ == "__main__":
    raise SystemExit(main())
