"""The patch files one ulp-trigger run applies or reverts, in order.

PATCH is a patch file or a directory of them (``*.ulp``; reverse patch files
``*.rev.ulp`` are left out: a directory is reverted with ``--revert``).  A
directory applies in dependency order (a patch after every patch of the
directory it requires; otherwise by file name) and reverts in the opposite
order.  A patch the process has already is reported "already applied" and
the next one goes on.
"""

from __future__ import annotations

import os

from ulp.errors import ExitCode, UlpError
from ulp.metadata import PatchMetadata
from ulp.patchfile import read_patch_file
from ulp.trigger.batch import Step

REVERSE_SUFFIX = ".rev.ulp"


def load(path: str, revert: bool) -> list[Step]:
    """The steps for PATCH (a file or a directory)."""
    if not os.path.isdir(path):
        patch_file = read_patch_file(path, trusted=True)
        return [Step(patch_file, path, revert or patch_file.metadata.reverse)]
    try:
        names = sorted(name for name in os.listdir(path)
                       if name.endswith(".ulp") and not name.endswith(REVERSE_SUFFIX))
    except OSError as error:
        raise UlpError(f"{path}: cannot list ({error.strerror})", ExitCode.FILE_MISSING) from None
    if not names:
        raise UlpError(f"{path}: no patch file (*.ulp) in this directory", ExitCode.FILE_MISSING)
    files = {os.path.join(path, name): read_patch_file(os.path.join(path, name), trusted=True)
             for name in names}
    ordered = dependency_order([(source, patch.metadata) for source, patch in files.items()])
    if revert:
        ordered.reverse()
    return [Step(files[source], source, revert) for source, _ in ordered]


def dependency_order(patches: list[tuple[str, PatchMetadata]]) -> list[tuple[str, PatchMetadata]]:
    """Each patch after the patches of the list it requires (stable otherwise).

    A requirement outside the list is the process's business: the runtime
    refuses the patch (DEPENDENCY) unless it is applied there.
    """
    by_id = {}
    for source, metadata in patches:
        if metadata.patch_id in by_id:
            raise UlpError(f"{source} and {by_id[metadata.patch_id][0]} are the same patch "
                           f"({metadata.patch_id_hex})", ExitCode.BAD_INPUT)
        by_id[metadata.patch_id] = (source, metadata)
    ordered: list[tuple[str, PatchMetadata]] = []
    placed: set[bytes] = set()
    visiting: set[bytes] = set()

    def place(patch_id: bytes) -> None:
        if patch_id in placed or patch_id not in by_id:
            return
        if patch_id in visiting:
            raise UlpError(f"{by_id[patch_id][0]}: its requirements form a cycle",
                           ExitCode.BAD_INPUT)
        visiting.add(patch_id)
        for required in by_id[patch_id][1].requires:
            place(required)
        visiting.discard(patch_id)
        placed.add(patch_id)
        ordered.append(by_id[patch_id])

    for _, metadata in patches:
        place(metadata.patch_id)
    return ordered
