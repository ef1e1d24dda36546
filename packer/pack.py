"""ulp-packer: turn a patch description into patch metadata and its reverse.

    ulp-packer DESC [-o OUT] [--reverse-output REV]
    ulp-packer --dump FILE.ulp

Everything is checked before anything is written; see docs/patch-description.md
for the description syntax and docs/patch-format.md for the output.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import struct
import sys
from collections.abc import Iterator
from dataclasses import replace

from elftools.common.exceptions import ELFError

from ulp import metadata as md
from ulp.console import ArgumentParser
from ulp.elfinfo import open_elf_bytes, require_x86_64_shared_object
from ulp.errors import ExitCode, UlpError, one_line, run_cli
from ulp.files import read_input
from ulp.patchfile import MAX_OBJECT, PatchFile, read_patch, read_patch_file, write_patch_file
from ulp.prepared import PreparedLibrary
from ulp.symbols import SymbolTables

from . import private
from .cxxnames import demangle, resolve_names
from .desc import Description, read_description

PROG = "ulp-packer"


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(  # one-line usage errors, --version: ulp.console
        prog=PROG,
        description="Check a patch description (.desc) against its patch .so and its "
                    "prepared target library, then write the patch metadata file and "
                    "the reverse patch file that ulp-trigger applies and reverts.",
        epilog="Nothing is written unless every check passes. Exit codes: "
               "docs/exit-codes.md.",
    )
    parser.add_argument("desc", nargs="?", metavar="DESC",
                        help="the patch description (syntax: docs/patch-description.md)")
    parser.add_argument("-o", "--output", metavar="OUT",
                        help="the patch metadata file to write "
                             "(default: DESC with its suffix replaced by .ulp)")
    parser.add_argument("--reverse-output", metavar="REV",
                        help="the reverse patch file to write "
                             "(default: OUT with .ulp replaced by .rev.ulp)")
    parser.add_argument("--dump", metavar="FILE",
                        help="instead of packing, check FILE (a .ulp or .rev.ulp) and print "
                             "its fields")
    return parser


def default_output(desc_path: str) -> str:
    root, _ = os.path.splitext(desc_path)
    return root + ".ulp"


def default_reverse_output(output: str) -> str:
    if output.endswith(".ulp"):
        return output[: -len(".ulp")] + ".rev.ulp"
    return output + ".rev.ulp"


# --- checks --------------------------------------------------------------------


#: what pyelftools raises, besides ELFError, on a malformed file (a seek to a
#: negative offset, a section of the wrong type, a bad string table...)
_MALFORMED_ELF_ERRORS = (ELFError, OSError, AttributeError, ValueError, KeyError, IndexError,
                         TypeError, struct.error, UnicodeDecodeError)


@contextlib.contextmanager
def _malformed_elf_is_bad_input(path: str) -> Iterator[None]:
    """Turn a pyelftools failure on a damaged file into a one-line UlpError."""
    try:
        yield
    except _MALFORMED_ELF_ERRORS as error:
        raise UlpError(f"{path}: malformed ELF file ({type(error).__name__}: {error})",
                       ExitCode.BAD_INPUT) from None


def _patch_functions(data: bytes, path: str) -> dict[str, int]:
    """The FUNC symbols the patch .so (``data``, read from ``path``) defines in
    .dynsym, with their addresses."""
    with _malformed_elf_is_bad_input(path), open_elf_bytes(data, path) as elf:
        require_x86_64_shared_object(elf, path)
        dynsym = elf.get_section_by_name(".dynsym")
        if dynsym is None:
            return {}
        return {
            symbol.name: symbol["st_value"]
            for symbol in dynsym.iter_symbols()
            if symbol["st_info"]["type"] == "STT_FUNC" and symbol["st_shndx"] != "SHN_UNDEF"
        }


def _check_new_functions(desc: Description, defined: dict[str, int]) -> None:
    for pair in desc.pairs:
        if pair.new not in defined:
            raise UlpError(
                f"{desc.where(pair.line)}: {pair.new} is not a function defined in the "
                f"dynamic symbols of {desc.patch_so}",
                ExitCode.PATCH_OBJECT,
            )


def _exported(library: PreparedLibrary, name: str):
    try:
        return library.function(name)
    except KeyError:
        return None


def _units(desc: Description, library: PreparedLibrary,
           private_units: list[md.PrivateUnit]) -> tuple[md.Unit, ...]:
    """The exported functions replaced; the others go to ``private_units``
    (an executable's: docs/patching-private.md)."""
    units: list[md.Unit] = []
    by_index: dict[int, str] = {}
    executable = private.target_is_executable(desc.target)
    tables: SymbolTables | None = None
    for pair in desc.pairs:
        function = _exported(library, pair.old)
        if executable and function is not None:
            raise UlpError(f"{desc.where(pair.line)}: {pair.old} is exported by the executable "
                           "(linked with -rdynamic): only its functions that are not exported "
                           "can be replaced (docs/patching-private.md)", ExitCode.NOT_PATCHABLE)
        if function is None:
            tables = tables or SymbolTables(library.path)
            unit = private.private_unit(desc, pair, library, tables)
            if any(other.entry_delta == unit.entry_delta for other in private_units):
                raise UlpError(f"{desc.where(pair.line)}: {pair.old} is the same function as "
                               "another line's (an alias); replace it once",
                               ExitCode.BAD_INPUT)
            private_units.append(unit)
            continue
        if function.index in by_index:
            raise UlpError(
                f"{desc.where(pair.line)}: {pair.old} is the same function as "
                f"{by_index[function.index]} (an alias); replace it once",
                ExitCode.BAD_INPUT,
            )
        by_index[function.index] = pair.old
        units.append(md.Unit(function.index, pair.old, pair.new))
    return tuple(units)


def _required_ids(desc: Description) -> tuple[bytes, ...]:
    ids: list[bytes] = []
    for requirement in desc.requires:
        required = read_patch(requirement.path)
        if required.reverse:
            raise UlpError(
                f"{desc.where(requirement.line)}: {requirement.path} is a reverse patch; "
                "name the patch itself",
                ExitCode.BAD_INPUT,
            )
        if required.patch_id in ids:
            raise UlpError(
                f"{desc.where(requirement.line)}: patch {required.patch_id_hex} is "
                "required twice",
                ExitCode.BAD_INPUT,
            )
        ids.append(required.patch_id)
    return tuple(ids)


def read_patch_object(path: str) -> bytes:
    """The patch .so's bytes, read once: the bytes checked, hashed and packed."""
    data = read_input(path, MAX_OBJECT)
    if len(data) > MAX_OBJECT:
        raise UlpError(f"{path}: larger than {MAX_OBJECT} bytes, too large for a patch object",
                       ExitCode.BAD_INPUT)
    return data


def build_patch_file(desc: Description) -> PatchFile:
    """Check ``desc`` against the files it names; the forward patch, carrying
    its patch object."""
    patch_object = read_patch_object(desc.patch_so)
    return PatchFile(build_metadata(desc, patch_object), patch_object)


def build_metadata(desc: Description, patch_object: bytes) -> md.PatchMetadata:
    """Check ``desc`` against each target and ``patch_object`` (the bytes of
    its patch .so); the forward patch's metadata."""
    defined = _patch_functions(patch_object, desc.patch_so)
    parts = desc.parts()
    targets = [_target(part, defined) for part in parts]
    for number, target in enumerate(targets):
        for earlier in range(number):
            if targets[earlier].identity == target.identity:
                raise UlpError(f"{desc.where(parts[number].target_line)}: {parts[number].target} "
                               f"is the library of line {parts[earlier].target_line} again (the "
                               "same identity); name each target once", ExitCode.BAD_INPUT)
    first, *more = targets
    metadata = md.PatchMetadata(
        patch_id=bytes(md.PATCH_ID_SIZE),
        reverse=False,
        target_path=first.path,
        target_identity=first.identity,
        target_build_id=first.build_id,
        layout_version=first.layout_version,
        patch_so_path=os.path.realpath(desc.patch_so),
        patch_so_sha256=hashlib.sha256(patch_object).digest(),
        units=first.units,
        requires=_required_ids(desc),
        private_units=first.private_units,
        references=first.references,
        labels=desc.labels,
        more_targets=tuple(more),
    )
    return replace(metadata, patch_id=md.content_id(metadata))


def _target(desc: Description, defined: dict[str, int]) -> md.Target:
    """One target library of the patch (``desc`` names only it), checked."""
    with _malformed_elf_is_bad_input(desc.target):
        library = PreparedLibrary.open(desc.target)
    desc = resolve_names(desc, library, defined)  # C++ names given demangled
    _check_new_functions(desc, defined)
    private_units: list[md.PrivateUnit] = []
    units = _units(desc, library, private_units)
    return md.Target(os.path.realpath(desc.target), library.identity, library.build_id,
                     library.desc.layout_version, units, tuple(private_units),
                     _references(desc, library))


def _references(desc: Description, library: PreparedLibrary) -> tuple[md.Reference, ...]:
    if not desc.references:
        return ()
    tables = SymbolTables(library.path)
    return tuple(private.reference(desc, ref, library, tables) for ref in desc.references)


# --- commands ------------------------------------------------------------------


def pack(desc_path: str, output: str | None = None,
         reverse_output: str | None = None) -> tuple[md.PatchMetadata, str, str]:
    """Pack ``desc_path``; return the metadata and the two files written."""
    output = output or default_output(desc_path)
    reverse_output = reverse_output or default_reverse_output(output)
    if os.path.abspath(output) == os.path.abspath(reverse_output):
        raise UlpError("the patch and the reverse patch would be the same file", ExitCode.USAGE)
    if os.path.abspath(output) == os.path.abspath(desc_path):
        raise UlpError(f"{output}: would overwrite the description", ExitCode.USAGE)
    patch_file = build_patch_file(read_description(desc_path))
    write_patch_file(output, patch_file)
    try:
        write_patch_file(reverse_output, patch_file.reversed())
    except UlpError:
        _remove_quietly(output)  # no patch without its reverse
        raise
    return patch_file.metadata, output, reverse_output


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def dump_lines(patch_file: PatchFile) -> list[str]:
    """The fields of ``patch_file``, one per line, for people."""
    metadata = patch_file.metadata
    carried = (f"{len(patch_file.patch_object)} bytes" if patch_file.patch_object
               else "none (a reverse patch loads nothing)")
    direction = "reverse (reverts the patch)" if metadata.reverse else "forward (applies the patch)"
    requires = ", ".join(required.hex() for required in metadata.requires) or "(none)"
    first, *more = metadata.targets
    lines = [
        f"patch id:         {metadata.patch_id_hex}",
        f"direction:        {direction}",
        *_target_lines(first, "target:        ")[:4],
        f"patch object:     {metadata.patch_so_path}",
        f"object carried:   {carried}",
        f"patch sha256:     {metadata.patch_so_sha256.hex()}",
        f"requires:         {requires}",
        *_target_lines(first, "target:        ")[4:],
    ]
    for number, target in enumerate(more, start=2):
        lines += _target_lines(target, f"target {number}:      ")
    return lines + _dump_extra_lines(metadata)


def _target_lines(target: md.Target, heading: str) -> list[str]:
    """One target library's fields, its functions last (from the fifth line)."""
    lines = [
        f"{heading}   {target.path}",
        f"target identity:  {target.identity.hex()}",
        f"target build-id:  {target.build_id.hex() or '(none)'}",
        f"layout version:   {target.layout_version}",
        f"functions:        {len(target.units) + len(target.private_units)}",
    ]
    lines += [f"  [{unit.index}] {_readable(unit.old_name)} -> {_readable(unit.new_name)}"
              for unit in target.units]
    lines += [f"  [private {unit.entry_delta:+#x}] {_readable(unit.old_name)} -> "
              f"{_readable(unit.new_name)}"
              for unit in target.private_units]
    if target.references:
        lines.append(f"references:       {len(target.references)}")
        lines += [f"  {'#%' if ref.kind == md.REF_TLS else '#'}{ref.target_name} -> "
                  f"{ref.ref_name} ({ref.delta:+#x})" for ref in target.references]
    return lines


def _dump_extra_lines(metadata: md.PatchMetadata) -> list[str]:
    """The labels (format 3)."""
    return [f"labels:           {metadata.label}"] if metadata.labels else []


def _readable(symbol: str) -> str:
    """``symbol``, and its demangled form for a C++ name."""
    try:
        demangled = demangle(symbol)
    except UlpError:  # no demangler here: the symbol says it all the same
        demangled = None
    return f"{symbol} ({demangled})" if demangled else symbol


def _body(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.dump is not None:
        if args.desc or args.output or args.reverse_output:
            raise UlpError("--dump takes no other arguments", ExitCode.USAGE)
        # the fields come from a file: escape what a terminal would interpret
        print("\n".join(one_line(line) for line in dump_lines(read_patch_file(args.dump))))
        return ExitCode.OK
    if args.desc is None:
        raise UlpError(f"expected DESC or --dump FILE (see {PROG} --help)", ExitCode.USAGE)
    if args.desc.endswith(".ulp") and not (args.output or args.reverse_output):
        raise UlpError(f"{args.desc} looks like a patch file, not a description: "
                       f"{PROG} --dump {args.desc} prints its fields", ExitCode.USAGE)
    metadata, output, reverse_output = pack(args.desc, args.output, args.reverse_output)
    count = metadata.function_count
    noun = "function" if count == 1 else "functions"
    libraries = ", ".join(target.path for target in metadata.targets)
    print(f"packed patch {metadata.patch_id_hex} ({count} {noun}) for "
          f"{libraries}: {output}, reverse: {reverse_output}")
    return ExitCode.OK


def main(argv: list[str] | None = None) -> int:
    return run_cli(PROG, _body, argv)


if __name__ == "__main__":
    sys.exit(main())
