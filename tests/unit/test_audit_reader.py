"""Verifying chain files in-process: a trail a newer broker wrote, with record types this
tool does not know, verifies as the chain it is; a line without a type does not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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


def _respelled(line: bytes, how: str) -> bytes:
    record = json.loads(line)
    if how == "a field added":
        return line[:-1] + b',"approvedBy":"the auditor"}'
    if how == "spaces":
        return json.dumps(record).encode()
    if how == "reordered":
        return json.dumps(dict(reversed(record.items())), separators=(",", ":")).encode()
    if how == "escaped":
        return line.replace(b'"checkpoint"', b'"\\u0063heckpoint"', 1)
    assert how == "a field removed"
    del record["next"]  # null: its absence reads as null to a lenient reader
    return json.dumps(record, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    "how", ["a field added", "spaces", "reordered", "escaped", "a field removed"]
)
def test_a_sealed_chains_last_checkpoint_rewritten_does_not_verify(
    tmp_path: Path, how: str
) -> None:
    # No later line's hash covers a chain's last line, and the signature covers the head it
    # names, not the line: the closing checkpoint written again with a field of someone's
    # choosing verified "sealed".
    trail, public = newer_broker_trail(tmp_path)
    [path] = trail.glob("*.jsonl")
    lines = path.read_bytes().splitlines()
    assert json.loads(lines[-1])["reason"] == "shutdown"
    lines[-1] = _respelled(lines[-1], how)
    path.write_bytes(b"\n".join(lines) + b"\n")
    report = verify([trail], load_public_key(public))
    assert report.failure is not None
    assert f":{len(lines)} (seq {len(lines)}): checkpoint line is not as it was written" in (
        report.failure
    ), report.failure
