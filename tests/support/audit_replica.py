"""A writer and its shipper on one audit directory, as Runtime wires them, for tests of the
audit store on SQLite (in-process) and on a real PostgreSQL server alike."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from broker.audit.reader import verify
from broker.audit.records import AuditEvent, ChainPosition
from broker.audit.retention import Retention
from broker.audit.shipping import Shipper
from broker.audit.signing import CheckpointSigner, CheckpointVerifier
from broker.audit.store import AuditStore
from broker.audit.store_verify import verify_store
from broker.audit.writer import AuditWriter
from broker.clock import now_rfc3339_millis
from broker.config import AuditSettings
from broker.metrics import Metrics


def event(n: int, user: str = "u") -> AuditEvent:
    return AuditEvent(
        time=now_rfc3339_millis(),
        request_id=f"r{n}",
        outcome="issued",
        code="issued",
        status=200,
        external_user_id=f"{user}{n}",
        token_sha256=hashlib.sha256(f"{user}{n}".encode()).hexdigest(),
    )


class Replica:
    """A writer and its shipper on one audit directory, as Runtime wires them."""

    def __init__(
        self,
        directory: Path,
        store: AuditStore,
        executor: ThreadPoolExecutor,
        signer: CheckpointSigner,
        *,
        instance: str,
        sync: bool = False,
        write_timeout: float = 2.0,
        ship_interval: float = 0.0,
        prune: bool = False,
    ) -> None:
        settings = AuditSettings(
            dir=str(directory),
            fsync=False,
            rotate_bytes=4096,
            checkpoint_every_records=5,
            write_timeout_seconds=write_timeout,
        )
        self.writer = AuditWriter(settings, signer, instance_id=instance)
        self.shipper_store = store
        writer = self.writer
        self.shipper = Shipper(
            store,
            directory,
            instance,
            lambda: writer.seq,
            executor=executor,
            metrics=Metrics(),
            batch_records=7,
            min_interval_seconds=ship_interval,
            prune_shipped=prune,
        )
        writer.on_durable = self.shipper.notify
        if sync:
            writer.release_after = self.shipper.shipped

    async def start(self, witnessed: Sequence[ChainPosition] = ()) -> None:
        await self.writer.start(witnessed)
        self.shipper.start()

    async def stop(self) -> None:
        await self.writer.close()
        await self.shipper.close()
        self.shipper_store.close()


def run_replica(
    directory: Path,
    store: AuditStore,
    executor: ThreadPoolExecutor,
    signer: CheckpointSigner,
    *,
    instance: str,
    events: int,
    user: str = "u",
    prune: bool = False,
    witnessed: Sequence[ChainPosition] = (),
) -> None:
    """A replica that writes ``events`` decisions for ``user`` and stops cleanly; its start
    record names ``witnessed``, and its shipping prunes if told to."""

    async def run() -> None:
        replica = Replica(directory, store, executor, signer, instance=instance, prune=prune)
        await replica.start(witnessed)
        for n in range(events):
            await replica.writer.append(event(n, user))
        await replica.stop()

    asyncio.run(run())


def audit_lines(directory: Path) -> int:
    """The lines of every chain file in ``directory``: every record written there."""
    return sum(len(p.read_bytes().splitlines()) for p in directory.glob("*.jsonl"))


def seqs(store: AuditStore, instance: str) -> list[int]:
    return [line.seq for line in store.chain(instance)]


def retention_scenario(
    store: AuditStore,
    tmp_path: Path,
    keys: tuple[CheckpointSigner, CheckpointVerifier],
    executor: ThreadPoolExecutor,
) -> int:
    """Two chains shipped into ``store``; retention deletes all of the first and the older
    half of the second; the rest verifies, and nothing deleted is shipped again. Returns
    the first seq kept of the second chain."""
    signer, verifier = keys
    directory = tmp_path / "a"
    run_replica(directory, store, executor, signer, instance="old", events=8)
    old_rows = len(seqs(store, "old"))
    after_old = time.time()
    time.sleep(0.01)

    async def run() -> None:
        replica = Replica(directory, store, executor, signer, instance="new")
        retention = Retention(store, executor=executor, days=1, record=replica.writer.append_record)
        await replica.start()
        for n in range(6):
            await replica.writer.append(event(n, "first"))
        await replica.shipper.shipped(replica.writer.seq)
        middle = time.time()
        await asyncio.sleep(0.01)
        for n in range(6):
            await replica.writer.append(event(n, "second"))
        # A day and a moment later: everything of "old" goes, then the older half of "new".
        assert await retention.apply(now=after_old + 86_400) == old_rows
        assert await retention.apply(now=middle + 86_400) > 0
        await replica.stop()

    asyncio.run(run())
    assert seqs(store, "old") == []
    kept = seqs(store, "new")
    assert kept[0] > 1
    assert kept == list(range(kept[0], kept[0] + len(kept)))
    retentions = [r for r in (json_lines(directory)) if r["type"] == "retention"]
    assert [[c["instance"] for c in r["ranges"]] for r in retentions] == [["old"], ["new"]]
    assert retentions[0]["ranges"][0]["rows"] == old_rows
    result = verify_store(store, verifier, quiet_seconds=3600)
    assert result.ok, result.report.failure
    assert {c.instance: c.first_seq for c in result.report.chains} == {"new": kept[0]}
    # The files keep everything, and verify as they always did.
    assert verify([directory], verifier).ok
    # A later process in the same directory does not ship the deleted records again.
    run_replica(directory, store, executor, signer, instance="later", events=2)
    assert seqs(store, "old") == []
    assert seqs(store, "new")[0] == kept[0]

    return kept[0]


def json_lines(directory: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted(directory.glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
