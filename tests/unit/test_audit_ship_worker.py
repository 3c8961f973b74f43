"""The shipping process on its own: its thread priorities, and how it ends when the replica
that started it is gone or hands it what it cannot use."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec
import pytest

from broker.audit.ship_worker import EXIT_CONFIG, Start, lower_priority, stuck_after, watch_progress
from broker.audit.store import AuditStore
from broker.config import AuditSettings, AuditStoreSettings
from tests.support.audit_replica import audit_lines, run_replica, seqs
from tests.support.trails import new_signer


def test_only_the_idle_thread_runs_at_idle_priority() -> None:
    got: list[tuple[str, int]] = []

    def lower() -> None:
        got.append((lower_priority(), os.sched_getscheduler(0)))

    thread = threading.Thread(target=lower)
    thread.start()
    thread.join()
    assert got == [("idle", os.SCHED_IDLE)]
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def _spawn(start: bytes) -> tuple[subprocess.Popen[bytes], socket.socket]:
    ours, theirs = socket.socketpair()
    process = subprocess.Popen(
        [sys.executable, "-m", "broker.audit.ship_worker", str(theirs.fileno())],
        pass_fds=(theirs.fileno(),),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    theirs.close()
    ours.sendall(start + b"\n")
    return process, ours


def _start(audit: AuditSettings) -> bytes:
    return msgspec.json.encode(
        Start(audit=audit, instance="one", log_level="info", interval_seconds=3600.0)
    )


def test_with_its_replica_gone_it_makes_a_last_pass_and_exits(tmp_path: Path) -> None:
    signer, _ = new_signer(tmp_path / "keys")
    directory = tmp_path / "audit"
    with ThreadPoolExecutor(max_workers=1) as executor:
        run_replica(
            directory,
            AuditStore.sqlite(tmp_path / "other.sqlite3"),
            executor,
            signer,
            instance="one",
            events=12,
        )
    audit = AuditSettings(dir=str(directory))
    process, ours = _spawn(_start(audit))
    # The first report says it is running; then the replica goes (its socket closes).
    assert ours.makefile("rb").readline()
    ours.close()
    assert process.wait(timeout=20) == 0
    lines = audit_lines(directory)
    assert seqs(AuditStore.sqlite(audit.sqlite_path), "one") == list(range(1, lines + 1))


@pytest.mark.parametrize(
    "start",
    [
        b'{"audit": {}, "instance": "one"}',
        b"\xff\xfe",
        _start(
            AuditSettings(
                dir="/nonexistent",
                store=AuditStoreSettings(backend="postgresql", url_env="BROKER_TEST_UNSET_URL"),
            )
        ),
    ],
    ids=["incomplete", "not-json", "no-url"],
)
def test_settings_it_cannot_use_end_it_with_its_own_status(start: bytes) -> None:
    """The supervisor tells this status apart in what it reports (a restart will not help)."""
    process, ours = _spawn(start)
    with ours:
        assert process.wait(timeout=20) == EXIT_CONFIG
    output = process.stdout.read() if process.stdout else b""
    assert b"Traceback" not in output


def test_the_watch_says_alive_each_interval_until_a_pass_is_stuck_past_its_limit() -> None:
    stalls = iter([0.0, 0.0, 30.0, 59.0, 61.0, 99.0])
    alive: list[None] = []
    stuck: list[float] = []

    async def run() -> None:
        await asyncio.wait_for(
            watch_progress(
                lambda: next(stalls), lambda: alive.append(None), 60.0, stuck.append, 0.001
            ),
            5,
        )

    asyncio.run(run())
    # Slow is not stuck: alive through 59 s without progress; at 61, given up on, once.
    assert len(alive) == 4
    assert stuck == [61.0]


def test_a_pass_is_given_a_minute_or_six_store_timeouts_whichever_is_longer() -> None:
    assert stuck_after(AuditSettings()) == 60.0
    slow = AuditSettings(store=AuditStoreSettings(timeout_seconds=30.0))
    assert stuck_after(slow) == 180.0
