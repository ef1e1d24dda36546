"""ulp-packer: turn a patch description into patch metadata and its reverse.

    ulp-packer DESC [-o OUT] [--reverse-output REV]
    ulp-packer --dump FILE.ulp

Everything is checked before anything is written; see docs/patch-description.md
for the description syntax and docs/patch-format.md for the output.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import struct
import sys
from collections.abc import Iterator

from elftools.common.exceptions import ELFError

from ulp import metadata as md
from ulp.elfinfo import file_sha256, open_elf, require_x86_64_shared_object
from ulp.errors import ExitCode, UlpError, one_line, run_cli
from ulp.prepared import PreparedLibrary
from ulp.symbols import SymbolTables

from . import private
from .desc import Description, read_description

PROG = "ulp-packer"


class _ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and ExitCode.USAGE."""

    def error(self, message: str):  # type: ignore[override]
        raise UlpError(f"{message} (see {PROG} --help)", ExitCode.USAGE)


def _parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
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


def _patch_functions(path: str) -> set[str]:
    """Names of the FUNC symbols the patch .so defines in .dynsym."""
    with _malformed_elf_is_bad_input(path), open_elf(path) as elf:
        require_x86_64_shared_object(elf, path)
        dynsym = elf.get_section_by_name(".dynsym")
        if dynsym is None:
            return set()
        return {
            symbol.name
            for symbol in dynsym.iter_symbols()
            if symbol["st_info"]["type"] == "STT_FUNC" and symbol["st_shndx"] != "SHN_UNDEF"
        }


def _check_new_functions(desc: Description) -> None:
    defined = _patch_functions(desc.patch_so)
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
        required = md.read_patch(requirement.path)
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


def _sha256(path: str) -> bytes:
    try:
        return file_sha256(path)
    except OSError as error:
        raise UlpError(f"{path}: cannot read ({error.strerror})", ExitCode.FILE_MISSING) from None


def build_metadata(desc: Description) -> md.PatchMetadata:
    """Check ``desc`` against the files it names; the forward patch's metadata."""
    _check_new_functions(desc)
    with _malformed_elf_is_bad_input(desc.target):
        library = PreparedLibrary.open(desc.target)
    private_units: list[md.PrivateUnit] = []
    units = _units(desc, library, private_units)
    references = _references(desc, library)
    requires = _required_ids(desc)
    so_hash = _sha256(desc.patch_so)
    patch_id = md.make_patch_id(so_hash, library.identity, units, requires, private_units,
                                references)
    return md.PatchMetadata(
        patch_id=patch_id,
        reverse=False,
        target_path=os.path.realpath(desc.target),
        target_identity=library.identity,
        target_build_id=library.build_id,
        layout_version=library.desc.layout_version,
        patch_so_path=os.path.realpath(desc.patch_so),
        patch_so_sha256=so_hash,
        units=units,
        requires=requires,
        private_units=tuple(private_units),
        references=references,
        labels=desc.labels,
    )


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
    metadata = build_metadata(read_description(desc_path))
    md.write_patch(output, metadata)
    try:
        md.write_patch(reverse_output, metadata.reversed())
    except UlpError:
        _remove_quietly(output)  # no patch without its reverse
        raise
    return metadata, output, reverse_output


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def dump_lines(metadata: md.PatchMetadata) -> list[str]:
    """The fields of ``metadata``, one per line, for people."""
    direction = "reverse (reverts the patch)" if metadata.reverse else "forward (applies the patch)"
    requires = ", ".join(required.hex() for required in metadata.requires) or "(none)"
    lines = [
        f"patch id:         {metadata.patch_id_hex}",
        f"direction:        {direction}",
        f"target:           {metadata.target_path}",
        f"target identity:  {metadata.target_identity.hex()}",
        f"target build-id:  {metadata.target_build_id.hex() or '(none)'}",
        f"layout version:   {metadata.layout_version}",
        f"patch object:     {metadata.patch_so_path}",
        f"patch sha256:     {metadata.patch_so_sha256.hex()}",
        f"requires:         {requires}",
        f"functions:        {len(metadata.units) + len(metadata.private_units)}",
    ]
    lines += [f"  [{unit.index}] {unit.old_name} -> {unit.new_name}" for unit in metadata.units]
    lines += [f"  [private {unit.entry_delta:+#x}] {unit.old_name} -> {unit.new_name}"
              for unit in metadata.private_units]
    lines += _dump_extra_lines(metadata)
    return lines


def _dump_extra_lines(metadata: md.PatchMetadata) -> list[str]:
    """References and labels (format 3)."""
    lines = []
    if metadata.references:
        lines.append(f"references:       {len(metadata.references)}")
        lines += [f"  {'#%' if ref.kind == md.REF_TLS else '#'}{ref.target_name} -> "
                  f"{ref.ref_name} ({ref.delta:+#x})" for ref in metadata.references]
    if metadata.labels:
        lines.append(f"labels:           {metadata.label}")
    return lines


def _body(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.dump is not None:
        if args.desc or args.output or args.reverse_output:
            raise UlpError("--dump takes no other arguments", ExitCode.USAGE)
        # the fields come from a file: escape what a terminal would interpret
        print("\n".join(one_line(line) for line in dump_lines(md.read_patch(args.dump))))
        return ExitCode.OK
    if args.desc is None:
        raise UlpError(f"expected DESC or --dump FILE (see {PROG} --help)", ExitCode.USAGE)
    metadata, output, reverse_output = pack(args.desc, args.output, args.reverse_output)
    count = len(metadata.units) + len(metadata.private_units)
    noun = "function" if count == 1 else "functions"
    print(f"packed patch {metadata.patch_id_hex} ({count} {noun}) for "
          f"{metadata.target_path}: {output}, reverse: {reverse_output}")
    return ExitCode.OK


def main(argv: list[str] | None = None) -> int:
    return run_cli(PROG, _body, argv)


if __name__ == "__main__":
    sys.exit(main())
