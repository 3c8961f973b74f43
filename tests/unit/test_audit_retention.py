"""Retention in-process, on a SQLite store: a run whose retention record cannot be written
deletes nothing, and the runs after it go on."""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from structlog.testing import capture_logs

from broker.audit.records import RecordType, RetentionBody
from broker.audit.retention import Retention
from broker.audit.store import AuditStore
from broker.audit.writer import AuditUnavailable
from tests.support.audit_replica import run_replica, seqs
from tests.support.trails import new_signer
from tests.support.waiting import eventually


def test_a_run_whose_record_cannot_be_written_deletes_nothing_and_the_next_one_does(
    tmp_path: Path,
) -> None:
    # The record was not caught: it ended the periodic task, and retention for good.
    store = AuditStore.sqlite(tmp_path / "store.sqlite3")
    signer, _ = new_signer(tmp_path / "keys")
    with ThreadPoolExecutor(max_workers=2) as executor:
        run_replica(tmp_path / "a", store, executor, signer, instance="old", events=4)
        rows = seqs(store, "old")
        assert rows
        attempts: list[RecordType] = []
        kept: list[RetentionBody] = []

        async def scenario() -> list[int]:
            allowed, third = asyncio.Event(), asyncio.Event()

            async def record(kind: RecordType, body: RetentionBody) -> None:
                attempts.append(kind)
                if len(attempts) <= 2:
                    raise AuditUnavailable("the audit log cannot be written")
                third.set()
                await allowed.wait()
                kept.append(body)

            # Zero days: every row is past retention at once.
            retention = Retention(
                store, executor=executor, days=0, record=record, every_seconds=0.01
            )
            retention.start()
            await asyncio.wait_for(third.wait(), 5.0)
            before = seqs(store, "old")  # the third run waits on its record
            allowed.set()
            deleted = functools.partial(eventually, lambda: not seqs(store, "old"), what="rows")
            await asyncio.to_thread(deleted)
            await retention.close()
            return before

        with capture_logs() as logs:
            before = asyncio.run(scenario())
    assert before == rows  # nothing deleted without its record
    assert attempts[:3] == ["retention"] * 3
    assert [c.instance for c in kept[0].ranges] == ["old"]
    assert seqs(store, "old") == []
    failed = [entry for entry in logs if entry["event"] == "audit_retention_failed"]
    assert len(failed) == 2
    assert "nothing was deleted" in failed[0]["error"]
