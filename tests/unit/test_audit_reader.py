"""Verifying chain files in-process: a trail a newer broker wrote, with record types this
tool does not know, verifies as the chain it is; a line without a type does not."""

from __future__ import annotations

import json
from pathlib import Path

from broker.audit.reader import verify
from broker.audit.signing import load_public_key
from tests.support.trails import newer_broker_trail


def test_records_of_a_type_this_tool_does_not_know_verify_and_are_named(tmp_path: Path) -> None:
    # An older tool refused the "witness" records of a newer broker: an intact trail, which
    # it called broken.
    trail, public = newer_broker_trail(tmp_path)
    report = verify([trail], load_public_key(public))
    assert report.failure is None
    assert report.unknown_types == {"future_kind": 1}
    assert report.records == 3


def test_a_line_without_a_type_breaks_the_chain_there(tmp_path: Path) -> None:
    trail, public = newer_broker_trail(tmp_path)
    [path] = trail.glob("*.jsonl")
    lines = path.read_bytes().splitlines()
    for index, line in enumerate(lines):
        record = json.loads(line)
        if record["type"] == "future_kind":
            record["type"] = 7
            lines[index] = json.dumps(record, separators=(",", ":")).encode()
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = verify([trail], load_public_key(public))
    assert report.failure is not None
    assert report.failure.endswith(":4 (seq 4): no record type"), report.failure
