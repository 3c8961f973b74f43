"""The heads a broker logs at each checkpoint, held against its trail (``broker audit verify
--anchors``): a chain deleted whole, or cut back below a checkpoint it had signed, verifies
on its own, and is found only against the log."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from broker.audit.anchors import Anchors, AnchorsUnusable, missing, read_anchors
from broker.audit.records import ANCHOR_EVENT, AuditEvent, ChainPosition
from broker.audit.writer import AuditWriter
from broker.cli import main
from broker.config import AuditSettings
from tests.support.trails import new_signer, store_of, write_trail


def _event(index: int) -> AuditEvent:
    return AuditEvent(
        time=f"2026-12-07T10:00:{index % 60:02d}.000Z",
        request_id=f"r{index}",
        outcome="issued",
        code="issued",
        status=200,
        caller="billing",
        external_user_id=f"user_{index}",
    )


class Deployment:
    """Two brokers one after the other in one audit directory ("first", sealed; "second",
    which follows it and is sealed too), checkpoints every 4 records, and their log."""

    def __init__(self, tmp_path: Path) -> None:
        signer, self.public = new_signer(tmp_path / "keys")
        self.trail = tmp_path / "audit"
        settings = AuditSettings(dir=str(self.trail), fsync=False, checkpoint_every_records=4)
        with capture_logs() as logs:
            first = AuditWriter(settings, signer, instance_id="first")
            write_trail(first, map(_event, range(9)))
            second = AuditWriter(settings, signer, instance_id="second")
            write_trail(second, map(_event, range(10)))
        self.logged = logs
        self.log = tmp_path / "broker.log"
        self.write_log()

    def heads(self, instance: str) -> list[MutableMapping[str, Any]]:
        return [
            line
            for line in self.logged
            if line["event"] == ANCHOR_EVENT and line["instance"] == instance
        ]

    def write_log(self, *extra: bytes) -> None:
        """The log as a collector keeps it: the broker's JSON lines, others between them,
        and some with a container runtime's prefix."""
        lines = [b"plain text from another container"]
        for index, entry in enumerate(self.logged):
            encoded = json.dumps(entry, separators=(",", ":")).encode()
            prefix = b"2026-12-07T10:00:00.000000001Z stdout F " if index % 2 else b""
            lines.append(prefix + encoded)
        self.log.write_bytes(b"\n".join([*lines, *extra]) + b"\n")

    def verify(self, *args: str) -> int:
        return main(
            [
                "audit",
                "verify",
                *args,
                "--public-key",
                str(self.public),
                "--anchors",
                str(self.log),
            ]
        )


@pytest.fixture
def deployment(tmp_path: Path) -> Deployment:
    return Deployment(tmp_path)


def test_every_durable_checkpoint_is_logged_with_its_lines_hash(deployment: Deployment) -> None:
    for instance in ("first", "second"):
        heads = deployment.heads(instance)
        reasons = [head["reason"] for head in heads]
        assert reasons[0] == "start"
        assert reasons[-1] == "shutdown"
        assert "count" in reasons
        [path] = deployment.trail.glob(f"audit-{instance}-*.jsonl")
        lines = path.read_bytes().splitlines()
        for head in heads:
            line = lines[head["seq"] - 1]
            assert json.loads(line)["type"] == "checkpoint"
            assert head["line_sha256"] == hashlib.sha256(line).hexdigest()
            assert head["file"] == path.name


def test_a_trail_that_holds_every_logged_head_verifies(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    assert deployment.verify(str(deployment.trail)) == 0
    printed = capsys.readouterr().out
    heads = len(deployment.heads("first")) + len(deployment.heads("second"))
    assert f"the log's checkpoints: {heads} head(s) of 2 instance(s)" in printed
    assert "all found" in printed


def test_the_newest_chain_deleted_whole_verifies_alone_and_fails_against_the_log(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    for path in deployment.trail.glob("audit-second-*.jsonl"):
        path.unlink()
    public = str(deployment.public)
    # What files alone cannot prove: nothing names the newest chain.
    assert main(["audit", "verify", str(deployment.trail), "--public-key", public]) == 0
    capsys.readouterr()
    assert deployment.verify(str(deployment.trail)) == 1
    printed = capsys.readouterr().out
    assert "FAILED: the log names instance 'second''s signed checkpoint at seq" in printed
    assert "deleted whole, or cut back below it" in printed


def test_a_chain_cut_back_below_a_signed_checkpoint_passes_as_a_crash_and_fails_against_the_log(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    [path] = deployment.trail.glob("audit-second-*.jsonl")
    lines = path.read_bytes().splitlines(keepends=True)
    newest = deployment.heads("second")[-1]["seq"]
    # Cut to the line after the second checkpoint: a crash tail, as far as the file can tell.
    kept = [line for line in lines if json.loads(line)["seq"] <= 6]
    assert len(kept) < newest
    path.write_bytes(b"".join(kept))
    args = [str(deployment.trail), "--allow-crash-tail"]
    assert main(["audit", "verify", *args, "--public-key", str(deployment.public)]) == 0
    capsys.readouterr()
    assert deployment.verify(*args) == 1
    assert f"'second''s signed checkpoint at seq {newest}" in capsys.readouterr().out


def test_a_chain_rewritten_under_a_logged_head_fails_against_the_log(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path)
    newest = deployment.heads("second")[-1]
    anchors = Anchors(
        newest={"second": ChainPosition(instance="second", seq=newest["seq"], hash="0" * 64)},
        heads=1,
    )
    [failure] = missing(anchors, lambda instance, seq: newest["line_sha256"])
    assert "the line at that seq is another: the chain was rewritten" in failure


def test_the_store_is_held_against_the_log_alone_and_with_the_files(
    deployment: Deployment, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def lines_of(instance: str) -> list[tuple[Path, list[bytes]]]:
        return [
            (path, path.read_bytes().splitlines())
            for path in sorted(deployment.trail.glob(f"audit-{instance}-*.jsonl"))
        ]

    whole = store_of(tmp_path / "whole.sqlite3", lines_of("first") + lines_of("second"))
    assert deployment.verify("--database", whole) == 0
    assert deployment.verify(str(deployment.trail), "--database", whole) == 0
    # The newest chain's rows deleted: no other chain saw it running to witness it.
    short = store_of(tmp_path / "short.sqlite3", lines_of("first"))
    capsys.readouterr()
    public = str(deployment.public)
    assert main(["audit", "verify", "--database", short, "--public-key", public]) == 0
    capsys.readouterr()
    assert deployment.verify("--database", short) == 1
    assert "'second''s signed checkpoint" in capsys.readouterr().out


def test_a_head_that_retention_deleted_is_not_missed() -> None:
    anchors = Anchors(newest={"old": ChainPosition(instance="old", seq=40, hash="a" * 64)}, heads=1)
    assert missing(anchors, lambda instance, seq: None, retained=lambda instance: 40) == []
    assert len(missing(anchors, lambda instance, seq: None, retained=lambda instance: 39)) == 1


def _head(instance: str, seq: object) -> bytes:
    return json.dumps(
        {"event": ANCHOR_EVENT, "instance": instance, "seq": seq, "line_sha256": "a" * 64}
    ).encode()


@pytest.mark.parametrize(
    ("instance", "seq", "why"),
    [
        ("first", "3", "without an instance id, a seq and a line_sha256"),
        ("first", True, "without an instance id, a seq and a line_sha256"),
        ("../x", 3, "without an instance id"),
        # The newest head of "first" (its seal), with another hash.
        ("first", "newest", "is logged with two different hashes"),
    ],
)
def test_a_log_that_says_what_no_broker_logs_is_unusable(
    deployment: Deployment,
    capsys: pytest.CaptureFixture[str],
    instance: str,
    seq: object,
    why: str,
) -> None:
    if seq == "newest":
        seq = deployment.heads(instance)[-1]["seq"]
    deployment.write_log(_head(instance, seq))
    with pytest.raises(AnchorsUnusable, match=why):
        read_anchors(deployment.log)
    capsys.readouterr()
    assert deployment.verify(str(deployment.trail)) == 2
    assert why in capsys.readouterr().err


def test_a_log_without_heads_is_unusable_not_a_pass(tmp_path: Path) -> None:
    log = tmp_path / "broker.log"
    log.write_bytes(b'{"event":"access"}\nnot json\n')
    with pytest.raises(AnchorsUnusable, match="no audit_checkpoint_signed line in 2 line"):
        read_anchors(log)


def test_a_log_is_read_a_bounded_line_at_a_time_and_only_as_a_regular_file(
    deployment: Deployment, tmp_path: Path
) -> None:
    deployment.write_log(b"x" * (3 * 1024 * 1024), b"{" * 100_000)
    anchors = read_anchors(deployment.log)
    assert anchors.newest["second"].seq == deployment.heads("second")[-1]["seq"]
    assert anchors.other_lines >= 3
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(AnchorsUnusable, match="cannot read"):
        read_anchors(fifo)


def test_a_trail_that_cannot_be_read_for_the_lookup_is_a_failure_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from broker.audit.cli import _held_against
    from broker.audit.store import StoreError

    def gone(instance: str, seq: int) -> str | None:
        raise StoreError("the audit store went away")

    anchors = Anchors(newest={"a": ChainPosition(instance="a", seq=3, hash="a" * 64)}, heads=1)
    assert _held_against(anchors, {"a"}, [gone]) == 1
    assert "FAILED: the trail could not be read to look the log's heads up" in (
        capsys.readouterr().out
    )


def test_chains_the_log_never_names_are_said_to_be_checked_by_the_trail_alone(
    deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    # The log kept only since the second broker started: the first one's lines are gone.
    deployment.logged = [line for line in deployment.logged if line.get("instance") != "first"]
    deployment.write_log()
    assert deployment.verify(str(deployment.trail)) == 0
    printed = capsys.readouterr().out
    assert "head(s) of 1 instance(s)" in printed
    assert "not in the log, so checked by the trail alone: 1 chain(s): first" in printed
