"""`ulp messages PID`: the runtime's in-process log (runtime/log.c), read
through /proc/PID/mem without stopping the process or asking its agent.
Real processes; every wait has a timeout."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from dataclasses import asdict
from pathlib import Path

import pytest
from consistency_support import C_DIR, LiveProcess, apply, patched_program, revert, tool

from support import ROOT, cc
from ulp import messages

#: (the name in ulp/messages.py, a C expression giving its value)
SHARED = [
    ("LOG_VERSION", "ULP_LOG_VERSION"),
    ("HEADER_SIZE", "sizeof(struct ulp_log_header)"),
    ("RECORD_SIZE", "sizeof(struct ulp_log_record)"),
    ("TEXT_SIZE", "ULP_LOG_TEXT"),
    ("TICKETS_OFFSET", "offsetof(struct ulp_log_header, tickets)"),
    ("DROPPED_OFFSET", "offsetof(struct ulp_log_header, dropped)"),
    ("RECORD_TEXT_OFFSET", "offsetof(struct ulp_log_record, text)"),
    *[(f"Kind.{kind.name}", f"ULP_LOG_{kind.name}") for kind in messages.Kind],
]
#: struct fields in the order of ulp/messages.py's formats, and their C offsets
HEADER_FIELDS = ["magic", "version", "nrecords", "record_size", "text_size", "tickets",
                 "dropped", "records"]
RECORD_FIELDS = ["seq", "time_ns", "kind", "tid", "address", "text"]


def test_python_and_c_agree_on_the_log_layout(tmp_path: Path) -> None:
    import struct

    expressions = SHARED + [
        (f"header.{name}", f"offsetof(struct ulp_log_header, {name})") for name in HEADER_FIELDS
    ] + [(f"record.{name}", f"offsetof(struct ulp_log_record, {name})") for name in RECORD_FIELDS]
    source = tmp_path / "log_layout.c"
    prints = "\n".join(f'    printf("%s %llu\\n", "{name}", (unsigned long long)({expr}));'
                       for name, expr in expressions)
    source.write_text("#include <stddef.h>\n#include <stdio.h>\n#include \"ulp_log.h\"\n"
                      f"int main(void)\n{{\n{prints}\n    printf(\"MAGIC %s\\n\", ULP_LOG_MAGIC);"
                      "\n    return 0;\n}\n")
    program = cc(tmp_path / "log_layout", [source], f"-I{ROOT / 'runtime'}")
    output = subprocess.run([program], capture_output=True, text=True, timeout=30).stdout
    from_c = dict(line.split() for line in output.splitlines())
    assert from_c.pop("MAGIC").encode().ljust(8, b"\0") == messages.LOG_MAGIC

    def python_value(name: str) -> int:
        if name.startswith("Kind."):
            return int(messages.Kind[name[5:]])
        return getattr(messages, name)

    def offsets(fmt: str, fields: list[str], prefix: str) -> dict[str, int]:
        """Each field's offset as the struct format lays it out."""
        found, at = {}, 0
        for field, code in zip(fields, re.findall(r"\d*[a-zA-Z]", fmt.lstrip("<")),
                               strict=False):
            found[f"{prefix}.{field}"] = at
            at += struct.calcsize("<" + code)
        return found

    expected = {name: python_value(name) for name, _ in SHARED}
    expected |= offsets(messages.HEADER_FORMAT, HEADER_FIELDS, "header")
    expected |= offsets(messages.RECORD_FORMAT, RECORD_FIELDS, "record")
    assert {name: int(value) for name, value in from_c.items()} == expected


@pytest.fixture(scope="module")
def e2e(build_dir: Path) -> dict[str, Path]:
    return patched_program(build_dir / "messages", "e2e", C_DIR / "e2e_lib.c",
                           C_DIR / "e2e_app.c", {"lib_value": "lib_value_v2"},
                           C_DIR / "e2e_fix.c", "-ldl")


def start(e2e: dict[str, Path], **env: str) -> LiveProcess:
    app = LiveProcess([e2e["app"]], env={"LD_LIBRARY_PATH": str(e2e["root"] / "lib"), **env})
    assert app.next_line() == "ready"
    return app


def read(pid: int, *args: str) -> dict:
    result = tool("ulp", "messages", "--json", *args, str(pid), timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_log_tells_what_happened_in_the_process_in_order(e2e) -> None:
    with start(e2e) as app:
        apply(app.pid, e2e["fix"])
        again = tool("ulp-trigger", app.pid, e2e["fix"])
        assert again.returncode == 12, again.stderr
        revert(app.pid, e2e["fix"])
        log = read(app.pid)
        human = tool("ulp", "messages", str(app.pid), timeout=60)
    assert log["pid"] == app.pid and log["overwritten"] == log["dropped"] == 0
    texts = [(message["kind"], message["text"]) for message in log["messages"]]
    kinds = [kind for kind, _ in texts]
    assert kinds == ["runtime", "agent", "library", "staged", "applied", "refused", "reverted"]
    patch_id = json.loads(tool("ulp", "dump", "--json", e2e["fix"]).stdout)["patch_id"]
    assert texts[2][1].startswith("library registered: ") and "libe2e.so" in texts[2][1]
    assert texts[3][1] == f"patch {patch_id} staged: 1 function(s)"
    assert texts[4][1] == f"patch {patch_id} applied in universe 2"
    assert texts[5][1] == f"apply of {patch_id[:16]} refused (8): patch is already applied"
    assert texts[6][1] == f"patch {patch_id} reverted in universe 3"
    agent_tid = int(re.fullmatch(r"agent started \(thread (\d+)\)", texts[1][1]).group(1))
    assert [message["tid"] for message in log["messages"]] == [app.pid] + [agent_tid] * 6
    times = [message["time_ns"] for message in log["messages"]]
    assert times == sorted(times)
    assert human.returncode == 0 and len(human.stdout.splitlines()) == 7
    assert "applied  patch " + patch_id in human.stdout


def test_the_log_is_read_without_the_agent_and_without_running_the_process(e2e) -> None:
    with start(e2e, ULP_AGENT="off") as app:
        os.kill(app.pid, signal.SIGSTOP)
        try:
            log = read(app.pid)
        finally:
            os.kill(app.pid, signal.SIGCONT)
    loaded, why = log["messages"]
    assert loaded["kind"] == "runtime" and "agent off: the process cannot be patched" in \
        loaded["text"]
    assert why["text"] == "agent off by ULP_AGENT"


def test_a_process_without_the_runtime_has_no_log(e2e) -> None:
    app = LiveProcess([e2e["app"]], env={"LD_LIBRARY_PATH": str(e2e["root"] / "lib")},
                      preload_runtime=False)
    with app:
        assert app.next_line() == "ready"
        result = tool("ulp", "messages", str(app.pid))
    assert result.returncode == 8 and result.stderr.startswith("ulp: process ")
    assert len(result.stderr.splitlines()) == 1


def test_racing_writers_and_signal_handlers_leave_only_whole_records(build_dir: Path) -> None:
    """Four threads and a 2 kHz signal handler write without pause while the
    ring is read: every record read is one write's, whole, and each once."""
    program = cc(build_dir / "log_stress", [C_DIR / "log_stress.c", ROOT / "runtime" / "log.c"],
                 f"-I{ROOT / 'runtime'}", "-D_GNU_SOURCE", "-rdynamic", "-pthread")
    with LiveProcess([program], preload_runtime=False) as app:
        assert app.next_line(60) == "ready"
        # many reads in this process (the command's own parser is the same
        # code): a read overlapping a write is rare, and must be caught
        reads = [read(app.pid)] + [asdict(messages.read_log(app.pid)) for _ in range(400)]
    for log in reads:
        records = log["messages"]
        # a record rewritten between the two reads of the ring is left out
        assert log["overwritten"] > 10000 and len(records) + log["unreadable"] <= 256
        numbers = [record["number"] for record in records]
        assert numbers == sorted(set(numbers))  # (not one instant: the writers never stop)
        for record in records:
            writer, n, check, filler = re.fullmatch(r"w(\d+) n(\d+) c(\d+) ([a-z]+)",
                                                    record["text"]).groups()
            assert int(writer) in (0, 1, 2, 3, 99) and int(n) == record["address"]
            assert int(check) == int(n) * 7919 % 100003
            assert filler == chr(ord("a") + int(check) % 26) * 20
            assert record["kind"] == "agent" and record["tid"] > 0
    assert sum(len(log["messages"]) for log in reads) > 1000
    assert any(record["text"].startswith("w99 ") for log in reads for record in log["messages"])
