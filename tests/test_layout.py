"""The C side (runtime/ulp_layout.h) and the Python side (ulp/layout.py) of the
prepared layout agree on every offset and size they share."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

from support import ROOT, cc
from ulp import layout

#: (the name in ulp/layout.py, a C expression giving its value)
SHARED = [
    ("LAYOUT_VERSION", "ULP_LAYOUT_VERSION"),
    ("LIB_DESC_SIZE", "sizeof(struct ulp_lib_desc)"),
    ("LIB_DESC_ENTRY_GOT_OFFSET", "offsetof(struct ulp_lib_desc, entry_got)"),
    ("LIB_DESC_STATE_OFFSET", "offsetof(struct ulp_lib_desc, state)"),
    ("LIB_DESC_IDENTITY_OFFSET", "offsetof(struct ulp_lib_desc, identity)"),
    ("LIB_DESC_UNIVERSE_OFFSET", "offsetof(struct ulp_lib_desc, universe)"),
    ("LIB_DESC_CODE_OFFSET", "offsetof(struct ulp_lib_desc, code_delta)"),
    ("FUNC_DESC_SIZE", "sizeof(struct ulp_func_desc)"),
    ("FD_TLS_OFFSET", "offsetof(struct ulp_func_desc, tls_offset)"),
    ("FD_VERSIONS", "offsetof(struct ulp_func_desc, versions)"),
    ("FD_ORIGINAL", "offsetof(struct ulp_func_desc, original)"),
    ("FD_BODY_DELTA", "offsetof(struct ulp_func_desc, body_delta)"),
    ("FD_FLAGS", "offsetof(struct ulp_func_desc, flags)"),
    ("FUNC_FLAG_ENDBR64", "ULP_FUNC_FLAG_ENDBR64"),
    ("TRAMPOLINE_SIZE", "ULP_TRAMPOLINE_SIZE"),
    ("FUNC_FLAG_PATCHED", "ULP_FUNC_FLAG_PATCHED"),
    ("FD_CODE_START", "offsetof(struct ulp_func_desc, code_start)"),
    ("FD_CODE_SIZE", "offsetof(struct ulp_func_desc, code_size)"),
    ("V_APPLIED_AT", "offsetof(struct ulp_version, applied_at)"),
    ("V_REVERTED_AT", "offsetof(struct ulp_version, reverted_at)"),
    ("V_TARGET", "offsetof(struct ulp_version, target)"),
    ("V_NEXT", "offsetof(struct ulp_version, next)"),
    ("REC_UNIVERSE", "offsetof(struct ulp_thread_record, universe)"),
    ("REC_PENDING", "offsetof(struct ulp_thread_record, pending)"),
    ("REC_STACK_LOW", "offsetof(struct ulp_thread_record, stack_low)"),
    ("REC_STACK_HIGH", "offsetof(struct ulp_thread_record, stack_high)"),
    ("REC_HINT_SLOT", "offsetof(struct ulp_thread_record, hint_slot)"),
    ("REC_HINT_WORD", "offsetof(struct ulp_thread_record, hint_word)"),
    ("REC_SIZE", "sizeof(struct ulp_thread_record)"),
    ("FD_CURRENT", "offsetof(struct ulp_func_desc, current_delta)"),
    ("PADDING_SIZE", "ULP_PADDING_SIZE"),
    ("UNIVERSE_NEVER", "ULP_UNIVERSE_NEVER"),
    ("FUNC_FLAG_ENDBR64", "ULP_FUNC_FLAG_ENDBR64"),
    ("TRAMPOLINE_SIZE", "ULP_TRAMPOLINE_SIZE"),
]


def test_python_and_c_agree_on_the_layout(tmp_path: Path) -> None:
    source = tmp_path / "layout.c"
    prints = "\n".join(f'    printf("%s %llu\\n", "{name}", (unsigned long long)({expr}));'
                       for name, expr in SHARED)
    source.write_text("#include <stdio.h>\n#include \"ulp_layout.h\"\nint main(void)\n{\n"
                      f"{prints}\n    return 0;\n}}\n")
    program = cc(tmp_path / "layout", [source], f"-I{ROOT / 'runtime'}")
    output = subprocess.run([program], capture_output=True, text=True, timeout=30).stdout
    from_c = dict(line.split() for line in output.splitlines())
    assert {name: int(value) for name, value in from_c.items()} == {
        name: getattr(layout, name) for name, _ in SHARED}


def test_the_struct_formats_have_the_c_sizes() -> None:
    assert struct.calcsize(layout.LIB_DESC_FORMAT) == layout.LIB_DESC_SIZE
    assert struct.calcsize(layout.FUNC_DESC_FORMAT) == layout.FUNC_DESC_SIZE
    assert layout.LIB_MAGIC == b"ULPLIB\x00\x01"
