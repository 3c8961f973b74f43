"""A trail an auditor can prove complete, not just unedited: chains name their predecessors,
a clean stop always seals, a restart with a fixed instance id continues its chain, and a
crash tail cannot be forged."""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import AuditKeys, Broker, BrokerFactory
from tests.support.audit_cli import run_audit, verify
from tests.support.waiting import eventually


def _records(directory: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted(directory.glob("audit-*.jsonl"))
        for line in path.read_text().splitlines()
        if line
    ]


def _run_once(start_broker: BrokerFactory, directory: Path, name: str, **options: Any) -> Broker:
    broker = start_broker(name=name, audit_dir=directory, **options)
    assert broker.post_token(fresh=True).status_code == 200
    assert broker.server.stopped_cleanly()
    return broker


def _first_instance(directory: Path) -> str:
    """The chain that follows no other: the first broker that wrote here."""
    (first,) = [
        record["instance"]
        for record in _records(directory)
        if record["type"] == "start" and record["predecessor"] is None
    ]
    return str(first)


def _instances(directory: Path) -> list[str]:
    seen: list[str] = []
    for record in _records(directory):
        if record["instance"] not in seen:
            seen.append(record["instance"])
    return seen


def test_a_deleted_instance_shows_and_the_heads_are_listed(
    start_broker: BrokerFactory, audit_keys: AuditKeys, tmp_path: Path
) -> None:
    trail = tmp_path / "trail"
    _run_once(start_broker, trail, "lineage-a")
    _run_once(start_broker, trail, "lineage-b")
    first = _first_instance(trail)
    result = verify(trail, audit_keys)
    assert result.returncode == 0, result.stdout
    assert "complete means" in result.stdout
    head_lines = [line for line in result.stdout.splitlines() if "[lineage head]" in line]
    assert len(head_lines) == 1
    assert "follows" in head_lines[0]

    for path in trail.glob(f"audit-{first}-*.jsonl"):
        path.unlink()
    result = verify(trail, audit_keys)
    assert result.returncode == 1
    assert f"follows instance {first!r}" in result.stdout
    assert "deleted" in result.stdout


def test_a_chain_cut_back_below_what_its_successor_saw_is_found(
    start_broker: BrokerFactory, audit_keys: AuditKeys, tmp_path: Path
) -> None:
    trail = tmp_path / "trail"
    _run_once(start_broker, trail, "cut-a")
    _run_once(start_broker, trail, "cut-b")
    first = trail / f"audit-{_first_instance(trail)}-000001.jsonl"
    lines = first.read_bytes().splitlines(keepends=True)
    first.write_bytes(b"".join(lines[:-2]))
    result = verify(trail, audit_keys, "--allow-crash-tail")
    assert result.returncode == 1
    assert "were deleted" in result.stdout


def _chain_line(previous: bytes, seq: int, instance: str, **fields: Any) -> bytes:
    record = {
        "v": 1,
        "type": "decision",
        "instance": instance,
        "seq": seq,
        "prev": hashlib.sha256(previous).hexdigest() if previous else "0" * 64,
        "outcome": "issued",
        "code": "issued",
        "status": 200,
    } | fields
    return json.dumps(record, separators=(",", ":")).encode()


def test_a_forged_unsigned_instance_is_no_crash_tail(audit_keys: AuditKeys, tmp_path: Path) -> None:
    trail = tmp_path / "trail"
    trail.mkdir()
    previous = b""
    lines = []
    for seq in (1, 2, 3):
        previous = _chain_line(previous, seq, "forged-host", tokenSha256="ab" * 32)
        lines.append(previous)
    (trail / "audit-forged-host-000001.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    result = verify(trail, audit_keys, "--allow-crash-tail")
    assert result.returncode == 1
    assert "no signed checkpoint" in result.stdout


def test_records_appended_after_a_seal_are_no_crash_tail(
    start_broker: BrokerFactory, audit_keys: AuditKeys, tmp_path: Path
) -> None:
    trail = tmp_path / "trail"
    _run_once(start_broker, trail, "sealed")
    (path,) = trail.glob("audit-*.jsonl")
    lines = path.read_bytes().splitlines()
    last = json.loads(lines[-1])
    assert last["reason"] == "shutdown"
    extra = _chain_line(lines[-1], last["seq"] + 1, last["instance"])
    more = _chain_line(extra, last["seq"] + 2, last["instance"])
    path.write_bytes(path.read_bytes() + extra + b"\n" + more + b"\n")
    result = verify(trail, audit_keys, "--allow-crash-tail")
    assert result.returncode == 1
    assert "after the shutdown checkpoint" in result.stdout


@pytest.mark.parametrize(
    ("extra_audit", "requests", "idle_seconds"),
    [
        ("checkpoint_interval_seconds = 0.3", 1, 1.0),
        ("checkpoint_every_records = 2", 2, 0.0),
        ("", 0, 0.0),
    ],
    ids=["idle after an interval checkpoint", "records a multiple of the count", "no request"],
)
def test_a_clean_stop_always_seals(
    start_broker: BrokerFactory,
    audit_keys: AuditKeys,
    tmp_path: Path,
    extra_audit: str,
    requests: int,
    idle_seconds: float,
) -> None:
    trail = tmp_path / "trail"
    broker = start_broker(name="seal", audit_dir=trail, extra_audit=extra_audit)
    for _ in range(requests):
        assert broker.post_token(fresh=True).status_code == 200
    time.sleep(idle_seconds)
    assert broker.server.stopped_cleanly()
    assert _records(trail)[-1]["reason"] == "shutdown"
    result = verify(trail, audit_keys)
    assert result.returncode == 0, result.stdout
    assert "sealed" in result.stdout


def test_a_fixed_instance_id_continues_its_chain_after_a_restart_and_a_crash(
    start_broker: BrokerFactory, audit_keys: AuditKeys, tmp_path: Path
) -> None:
    trail = tmp_path / "trail"
    fixed = 'instance_id = "broker-0"'
    _run_once(start_broker, trail, "fixed-1", extra_audit=fixed)
    _run_once(start_broker, trail, "fixed-2", extra_audit=fixed)

    crashed = start_broker(name="fixed-3", audit_dir=trail, extra_audit=fixed)
    assert crashed.post_token(fresh=True).status_code == 200
    assert crashed.server.process is not None
    crashed.server.process.send_signal(signal.SIGKILL)
    crashed.server.process.wait()
    # A write cut short by the crash: half a line at the end of the last file.
    last_file = max(trail.glob("audit-*.jsonl"))
    last_file.write_bytes(last_file.read_bytes() + b'{"v":1,"type":"deci')

    _run_once(start_broker, trail, "fixed-4", extra_audit=fixed)
    assert _instances(trail) == ["broker-0"]
    starts = [r for r in _records(trail) if r["type"] == "start"]
    assert [s["seq"] > 1 for s in starts] == [False, True, True, True]
    assert starts[-1]["truncatedBytes"] == len(b'{"v":1,"type":"deci')
    for start in starts[1:]:
        assert start["predecessor"]["instance"] == "broker-0"
        assert start["predecessor"]["seq"] == start["seq"] - 1
    result = verify(trail, audit_keys)
    assert result.returncode == 0, result.stdout
    assert "broker-0: seq 1.." in result.stdout


def test_verify_names_what_it_found(broker: Broker, audit_keys: AuditKeys) -> None:
    result = run_audit(
        "verify", broker.audit_dir, "--public-key", audit_keys.public, "--allow-crash-tail"
    )
    assert result.returncode == 0, result.stdout
    assert "NOT sealed (running or crashed), last signed at 20" in result.stdout


def test_an_idle_replica_is_not_taken_for_a_cut_tail_nor_a_cut_tail_for_an_idle_replica(
    start_broker: BrokerFactory, audit_keys: AuditKeys, tmp_path: Path
) -> None:
    """verify --database reads quiet from the last signed checkpoint's time: a running broker
    signs its head every heartbeat even while idle, so an idle replica stays fresh (once,
    every replica idle for longer than the quiet time was reported as a possible deletion),
    while a store whose last rows were cut does not, whatever its rows say of when they came."""
    trail = tmp_path / "trail"
    broker = start_broker(name="heartbeat", audit_dir=trail, extra_audit="heartbeat_seconds = 1")
    assert broker.post_token(fresh=True).status_code == 200
    store = trail / "audit-store.sqlite3"

    def database(quiet: str) -> subprocess.CompletedProcess[str]:
        return run_audit(
            "verify",
            "--database",
            store,
            "--public-key",
            audit_keys.public,
            "--quiet-seconds",
            quiet,
        )

    def decision_shipped() -> float | None:
        if not store.exists():
            return None
        with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
            try:
                found = db.execute(
                    "SELECT max(stored_at) FROM audit_records WHERE type = 'decision'"
                ).fetchone()
            except sqlite3.OperationalError:  # not made yet
                return None
        return None if found[0] is None else float(found[0])

    eventually(lambda: decision_shipped() is not None, timeout=15, what="the decision shipped")
    decided = decision_shipped()
    assert decided is not None
    # Idle for longer than the quiet time: only heartbeats come, and they are signed.
    eventually(lambda: time.time() - decided > 4, timeout=10, what="four idle seconds")
    idle = database("3")
    assert idle.returncode == 0, idle.stdout + idle.stderr
    with sqlite3.connect(store) as db:
        reasons = [
            r
            for (r,) in db.execute(
                "SELECT json_extract(CAST(line AS TEXT), '$.reason') FROM audit_records "
                "WHERE type = 'checkpoint' ORDER BY seq"
            )
        ]
    assert reasons[0] == "start", reasons
    assert "heartbeat" in reasons, reasons

    # The broker stopped, its tail cut back to the decision, and the rows set to look new.
    assert broker.server.stopped_cleanly()
    with sqlite3.connect(store) as db:
        (decision,) = db.execute(
            "SELECT max(seq) FROM audit_records WHERE type = 'decision'"
        ).fetchone()
        db.execute("DELETE FROM audit_records WHERE seq > ?", (decision,))
        db.execute("UPDATE audit_records SET stored_at = ?", (time.time() + 3600,))
    cut = database("3")
    assert cut.returncode == 1, cut.stdout + cut.stderr
    assert f"ends unsealed at seq {decision}, and its last signed checkpoint is" in cut.stdout
