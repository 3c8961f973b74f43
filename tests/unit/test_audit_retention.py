"""Retention in-process, on a SQLite store: a run whose retention record cannot be written
deletes nothing, and the runs after it go on."""

from __future__ import annotations

import asyncio
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from structlog.testing import capture_logs

from broker.audit.records import RecordType, RetentionBody
from broker.audit.retention import Retention
from broker.audit.signing import load_public_key
from broker.audit.store import AuditStore
from broker.audit.store_verify import verify_store
from broker.audit.writer import AuditUnavailable
from tests.support.audit_replica import Replica, event, json_lines, run_replica, seqs
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


def test_a_backlog_goes_in_bounded_passes_each_behind_its_own_record(tmp_path: Path) -> None:
    """However much is past retention, a pass deletes at most ``pass_rows``: the whole
    backlog in one plan and one statement ran past PostgreSQL's statement timeout and
    failed every hour, for good. Each pass's record names its own cut, so the store
    verifies after every one of them."""
    store = AuditStore.sqlite(tmp_path / "store.sqlite3")
    signer, public = new_signer(tmp_path / "keys")
    directory = tmp_path / "a"
    with ThreadPoolExecutor(max_workers=2) as executor:
        run_replica(directory, store, executor, signer, instance="old", events=10)
        run_replica(directory, store, executor, signer, instance="older", events=4)
        rows = len(seqs(store, "old")) + len(seqs(store, "older"))
        after = time.time()

        async def run() -> int:
            replica = Replica(directory, store, executor, signer, instance="new")
            await replica.start()
            retention = Retention(
                store, executor=executor, days=1, record=replica.writer.append_record, pass_rows=4
            )
            deleted = await retention.apply(now=after + 86_400)
            await replica.writer.append(event(1))
            await replica.shipper.shipped(replica.writer.seq)
            await replica.stop()
            return deleted

        assert asyncio.run(run()) == rows
    assert seqs(store, "old") == seqs(store, "older") == []
    passes = [r for r in json_lines(directory) if r["type"] == "retention"]
    assert len(passes) == -(-rows // 4)  # each pass at most 4 rows
    assert all(sum(cut["rows"] for cut in r["ranges"]) <= 4 for r in passes)
    assert sum(cut["rows"] for r in passes for cut in r["ranges"]) == rows
    result = verify_store(store, load_public_key(public), quiet_seconds=3600)
    assert result.ok, result.report.failure
