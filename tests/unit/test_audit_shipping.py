"""Shipping a real writer's chain into a SQLite store on a temp dir, and verifying the
deployment from the store: resumption without loss or duplicates, chains of earlier
processes, sync mode, tampering in the store, and export back to files."""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from broker.audit.export import export_chains
from broker.audit.reader import verify
from broker.audit.shipping import Shipper
from broker.audit.signing import (
    CheckpointSigner,
    CheckpointVerifier,
    load_public_key,
)
from broker.audit.store import AuditStore, Row, StoreError, StoreFilters, row_of
from broker.audit.store_verify import verify_store
from broker.audit.writer import AuditWriter, WrittenLine
from broker.clock import rfc3339
from broker.config import AuditSettings
from broker.metrics import Metrics
from tests.support.audit_replica import (
    Replica,
    audit_lines,
    event,
    retention_scenario,
    run_replica,
    seqs,
)
from tests.support.trails import new_signer, store_of


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[CheckpointSigner, CheckpointVerifier]:
    signer, public = new_signer(tmp_path_factory.mktemp("keys"))
    return signer, load_public_key(public)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield pool


def test_a_sealed_chain_arrives_whole_and_verifies_from_the_store(
    tmp_path: Path, keys: tuple[CheckpointSigner, CheckpointVerifier], executor: ThreadPoolExecutor
) -> None:
    store = AuditStore.sqlite(tmp_path / "store.sqlite3")
    signer, verifier = keys
    run_replica(tmp_path / "a", store, executor, signer, instance="one", events=40)
    lines = audit_lines(tmp_path / "a")
    assert seqs(store, "one") == list(range(1, lines + 1))
    assert len(store.query(StoreFilters(instance="one"))) == 40
    result = verify_store(store, verifier, quiet_seconds=3600)
    assert result.ok, result.report.failure
    assert [chain.sealed for chain in result.report.chains] == [True]
    assert result.report.files > 1  # rotated, and the rotations verified from the store


def test_a_restart_resumes_from_the_store_without_loss_or_duplicates(
    tmp_path: Path, keys: tuple[CheckpointSigner, CheckpointVerifier], executor: ThreadPoolExecutor
) -> None:
    store = AuditStore.sqlite(tmp_path / "store.sqlite3")
    signer, verifier = keys
    run_replica(tmp_path / "a", store, executor, signer, instance="fixed", events=12, user="first")
    # The store loses its newest rows (restored from an older backup, say): they come back.
    with sqlite3.connect(tmp_path / "store.sqlite3") as db:
        db.execute("DELETE FROM audit_records WHERE seq > 9")
    run_replica(tmp_path / "a", store, executor, signer, instance="fixed", events=12, user="second")
    stored = seqs(store, "fixed")
    assert stored == list(range(1, len(stored) + 1))
    assert len(store.query(StoreFilters())) == 24
    assert verify_store(store, verifier, quiet_seconds=3600).ok


def test_chains_of_earlier_processes_in_the_directory_are_shipped_too(
    tmp_path: Path, keys: tuple[CheckpointSigner, CheckpointVerifier], executor: ThreadPoolExecutor
) -> None:
    signer, verifier = keys
    directory = tmp_path / "a"
    # Written while no store was there (or before this broker had one).
    offline = AuditStore.sqlite(tmp_path / "elsewhere.sqlite3")
    run_replica(directory, offline, executor, signer, instance="before", events=6)
    store = AuditStore.sqlite(tmp_path / "store.sqlite3")
    run_replica(directory, store, executor, signer, instance="after", events=3)
    assert {summary.instance for summary in store.instances()} == {"before", "after"}
    result = verify_store(store, verifier, quiet_seconds=3600)
    assert result.ok, result.report.failure
    assert {c.instance: c.predecessor for c in result.report.chains} == {
        "before": None,
        "after": "before",
    }


def test_pruning_deletes_shipped_files_of_this_chain_and_of_finished_ones_only(
    tmp_path: Path, keys: tuple[CheckpointSigner, CheckpointVerifier], executor: ThreadPoolExecutor
) -> None:
    signer, verifier = keys
    directory, path = tmp_path / "a", tmp_path / "s.sqlite3"
    # Two earlier processes' chains in the same directory (a container restarted in its
    # pod): one sealed, no broker writes it any more; one that ends without its seal (as a
    # crashed one, or one still written by another process) must stay whole.
    for instance in ("sealed", "unsealed"):
        run_replica(
            directory, AuditStore.sqlite(path), executor, signer, instance=instance, events=30
        )
    unsealed = sorted(directory.glob("audit-unsealed-*"))
    last = unsealed[-1]
    last.write_bytes(b"".join(last.read_bytes().splitlines(keepends=True)[:-1]))
    sealed_files = sorted(p.name for p in directory.glob("audit-sealed-*"))
    written: list[str] = []

    async def run() -> None:
        replica = Replica(
            directory, AuditStore.sqlite(path), executor, signer, instance="own", prune=True
        )
        await replica.start()
        for n in range(60):
            await replica.writer.append(event(n))
            written.extend(p.name for p in directory.glob("audit-own-*") if p.name not in written)
        await replica.stop()

    asyncio.run(run())
    own = sorted(p.name for p in directory.glob("audit-own-*"))
    assert len(written) > 4  # rotated many times over
    assert own == sorted(written)[-2:]  # the newest two stay, the rest are gone
    assert len(sealed_files) > 1
    assert sorted(p.name for p in directory.glob("audit-sealed-*")) == sealed_files[-1:]
    assert sorted(directory.glob("audit-unsealed-*")) == unsealed
    # Every line of the chains is in the store, and it verifies whole.
    store = AuditStore.sqlite(path)
    assert seqs(store, "own") == list(range(1, seqs(store, "own")[-1] + 1))
    assert len(store.query(StoreFilters(instance="own"))) == 60
    result = verify_store(store, verifier, quiet_seconds=3600)
    assert result.ok, result.report.failure
    assert [chain.sealed for chain in result.report.chains] == [True, True, True]


def test_pruned_files_verify_beside_the_store_that_holds_what_they_lost(
    tmp_path: Path, executor: ThreadPoolExecutor, capsys: pytest.CaptureFixture[str]
) -> None:
    from broker.cli import main

    signer, public = new_signer(tmp_path / "keys")
    directory, path = tmp_path / "a", tmp_path / "s.sqlite3"
    run_replica(
        directory, AuditStore.sqlite(path), executor, signer, instance="pr", events=40, prune=True
    )
    assert len(list(directory.glob("*.jsonl"))) == 2
    verify_files = ["audit", "verify", str(directory), "--public-key", str(public)]
    # The files alone are missing their beginning, and say so.
    assert main(verify_files) == 1
    assert "missing file before it" in capsys.readouterr().out
    # Beside the store, which holds the line their first one links to: verified from there,
    # and held against the store.
    assert main([*verify_files, "--database", str(path)]) == 0
    said = capsys.readouterr().out
    assert "only in the store (its files were pruned)" in said
    assert "agree: pr: files and store" in said


def test_a_chain_pruned_ahead_of_another_shipping_is_read_on_from_the_store(
    tmp_path: Path, keys: tuple[CheckpointSigner, CheckpointVerifier], executor: ThreadPoolExecutor
) -> None:
    # Two shippings read one directory (a granian worker's each, or pods on a shared
    # claim): one chain's own replica prunes files the other had not read yet.
    signer, verifier = keys
    directory, path = tmp_path / "a", tmp_path / "s.sqlite3"

    async def run() -> dict[str, str]:
        own = Replica(
            directory, AuditStore.sqlite(path), executor, signer, instance="pruner", prune=True
        )
        other = Shipper(
            AuditStore.sqlite(path), directory, "other", lambda: 0,
            executor=executor, metrics=Metrics(), batch_records=3,
        )  # fmt: skip
        await own.start()
        for n in range(5):
            await own.writer.append(event(n))
        other._ship_all()  # partway along the chain
        for n in range(5, 45):
            await own.writer.append(event(n))
        own.shipper._ship_all()  # ships the rest, and prunes all but the newest two
        assert len(list(directory.glob("audit-pruner-*"))) == 2
        for _ in range(3):
            other._ship_all()
        await own.stop()
        return other._stopped

    assert asyncio.run(run()) == {}
    store = AuditStore.sqlite(path)
    result = verify_store(store, verifier, quiet_seconds=3600)
    assert result.ok, result.report.failure


def test_a_resume_before_a_rotations_checkpoint_lands_reads_it_from_the_file_it_ends(
    tmp_path: Path, keys: tuple[CheckpointSigner, CheckpointVerifier], executor: ThreadPoolExecutor
) -> None:
    # The writer creates the next file, then writes the rotation checkpoint that ends the
    # current one. A shipping resuming its own chain from the store in between (a sibling
    # had shipped it first) put its cursor at the empty new file's start; the checkpoint,
    # then shipped from memory, moved it to a wrong offset in the old file, and the next
    # read from there stopped the chain on half a record (seen in `make test` under load).
    signer, verifier = keys
    directory, path = tmp_path / "a", tmp_path / "s.sqlite3"
    groups: list[tuple[str, list[WrittenLine]]] = []

    async def write() -> None:
        settings = AuditSettings(
            dir=str(directory), fsync=False, rotate_bytes=4096, checkpoint_every_records=1000
        )
        writer = AuditWriter(settings, signer, instance_id="own")
        writer.on_durable = lambda file, lines: groups.append((file, lines))
        await writer.start()
        n = 0
        while not second.exists() or not second.stat().st_size:
            await writer.append(event(n))
            n += 1
        await writer.close()

    first, second = directory / "audit-own-000001.jsonl", directory / "audit-own-000002.jsonl"
    asyncio.run(write())
    ending = [g for g in groups if g[0] == first.name][-1]
    assert [line.kind for line in ending[1]] == ["checkpoint"]  # the rotation's, alone
    checkpoint = ending[1][0].line + b"\n"
    whole_first, whole_second = first.read_bytes(), second.read_bytes()
    assert whole_first.endswith(checkpoint)
    first.write_bytes(whole_first[: -len(checkpoint)])  # the moment between the two
    second.write_bytes(b"")

    Shipper(
        AuditStore.sqlite(path), directory, "sibling", lambda: 0,
        executor=executor, metrics=Metrics(),
    )._ship_all()  # fmt: skip
    assert seqs(AuditStore.sqlite(path), "own")[-1] == ending[1][0].seq - 1
    own = Shipper(
        AuditStore.sqlite(path), directory, "own", lambda: 0, executor=executor, metrics=Metrics()
    )
    own._ship_all()  # resumes from the sibling's position: nothing new to ship
    first.write_bytes(whole_first)
    own.notify(first.name, ending[1])
    second.write_bytes(whole_second)  # not in memory (dropped past its bound): read back
    own._ship_all()
    assert own._stopped == {}
    store = AuditStore.sqlite(path)
    assert seqs(store, "own") == list(range(1, audit_lines(directory) + 1))
    result = verify_store(store, verifier, quiet_seconds=3600)
    assert result.ok, result.report.failure


def test_a_pass_that_fails_unexpectedly_is_said_and_shipping_goes_on(
    tmp_path: Path, keys: tuple[CheckpointSigner, CheckpointVerifier], executor: ThreadPoolExecutor
) -> None:
    # Anything but a StoreError (a bug, the directory's listing failing) ended the shipping
    # task for the life of the process, unseen: sync mode then refused every token.
    signer, verifier = keys
    store = AuditStore.sqlite(tmp_path / "store.sqlite3")
    insert, faults = store.insert, [RuntimeError("a bug")]

    def failing_once(rows: Sequence[Row]) -> int:
        if faults:
            raise faults.pop()
        return insert(rows)

    store.insert = failing_once  # type: ignore[method-assign]

    async def run() -> None:
        replica = Replica(tmp_path / "a", store, executor, signer, instance="goes-on")
        await replica.start()
        for n in range(3):
            await replica.writer.append(event(n))
        await asyncio.wait_for(replica.shipper.shipped(replica.writer.seq), 10.0)
        await replica.stop()

    with capture_logs() as logs:
        asyncio.run(run())
    assert faults == []
    assert seqs(AuditStore.sqlite(tmp_path / "store.sqlite3"), "goes-on") == list(
        range(1, audit_lines(tmp_path / "a") + 1)
    )
    assert verify_store(
        AuditStore.sqlite(tmp_path / "store.sqlite3"), verifier, quiet_seconds=3600
    ).ok
    failed = [entry for entry in logs if entry["event"] == "audit_shipping_failed"]
    assert [(entry["error_type"], entry["events"]) for entry in failed] == [("RuntimeError", 1)]


def test_a_store_deleted_while_shipping_is_made_again_from_the_files(
    tmp_path: Path, keys: tuple[CheckpointSigner, CheckpointVerifier], executor: ThreadPoolExecutor
) -> None:
    # SQLite went on writing into the unlinked file: what backups and `broker audit query
    # --database` read under the store's name held nothing written after, until a restart.
    signer, verifier = keys
    directory, path = tmp_path / "a", tmp_path / "store" / "store.sqlite3"

    async def run() -> None:
        replica = Replica(directory, AuditStore.sqlite(path), executor, signer, instance="own")
        await replica.start()
        for n in range(20):
            await replica.writer.append(event(n, "before"))
        await asyncio.wait_for(replica.shipper.shipped(replica.writer.seq), 10.0)
        shutil.rmtree(path.parent)
        for n in range(20):
            await replica.writer.append(event(n, "after"))
        await asyncio.wait_for(replica.shipper.shipped(replica.writer.seq), 10.0)
        # Read under its name while the broker runs, not after the restart that rebuilt it.
        assert seqs(AuditStore.sqlite(path), "own") == list(range(1, replica.writer.seq + 1))
        await replica.stop()

    with capture_logs() as logs:
        asyncio.run(run())
    assert [entry["event"] for entry in logs].count("audit_store_remade") == 1
    store = AuditStore.sqlite(path)
    assert seqs(store, "own") == list(range(1, audit_lines(directory) + 1))
    result = verify_store(store, verifier, quiet_seconds=3600)
    assert result.ok, result.report.failure


def test_a_chain_deleted_whole_from_the_store_is_missing_a_line_a_later_start_saw(
    tmp_path: Path, keys: tuple[CheckpointSigner, CheckpointVerifier], executor: ThreadPoolExecutor
) -> None:
    # Two replicas, each its own directory, one store. Deleting every row of one chain left
    # nothing to find it by: no chain in another directory names it as its predecessor.
    signer, verifier = keys
    path = tmp_path / "s.sqlite3"
    run_replica(
        tmp_path / "a", AuditStore.sqlite(path), executor, signer, instance="gone", events=8
    )
    since = datetime.now(UTC) - timedelta(minutes=10)
    seen = AuditStore.sqlite(path).recent_heads(since, 256)
    assert [(head.instance, head.seq) for head in seen] == [
        ("gone", seqs(AuditStore.sqlite(path), "gone")[-1])
    ]

    run_replica(
        tmp_path / "b", AuditStore.sqlite(path), executor, signer, instance="saw", events=1,
        witnessed=seen,
    )  # fmt: skip
    store = AuditStore.sqlite(path)
    assert verify_store(store, verifier, quiet_seconds=3600).ok
    with sqlite3.connect(path) as connection:
        connection.execute("DELETE FROM audit_records WHERE instance = 'gone'")
    result = verify_store(AuditStore.sqlite(path), verifier, quiet_seconds=3600)
    assert not result.ok
    assert result.report.failure is not None
    assert result.report.failure.startswith("instance 'gone' seq ")
    assert "which instance 'saw' (its start record, seq 1) saw in the store, is gone" in (
        result.report.failure
    )


def test_sync_mode_releases_a_record_only_once_the_store_has_it(
    tmp_path: Path, keys: tuple[CheckpointSigner, CheckpointVerifier], executor: ThreadPoolExecutor
) -> None:
    signer, _ = keys
    store_path = tmp_path / "store.sqlite3"
    store = AuditStore.sqlite(store_path)

    async def run() -> None:
        replica = Replica(
            tmp_path / "a", store, executor, signer, instance="s", sync=True, write_timeout=0.5
        )
        await replica.start()
        await replica.writer.append(event(1))
        # Released: so its record is in the store already.
        assert [r["externalUserId"] for r in store.query(StoreFilters())] == ["u1"]
        # The store becomes unwritable: the next record is durable in the file but not
        # released, and the caller hears AuditUnavailable within the write timeout.
        store.close()
        store_path.chmod(0o400)
        blocked = sqlite3.connect(store_path)
        blocked.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(Exception, match="audit"):
                await replica.writer.append(event(2))
        finally:
            blocked.rollback()
            blocked.close()
            store_path.chmod(0o600)
        await replica.stop()

    asyncio.run(run())


def test_a_reader_waiting_for_its_own_records_cuts_the_pause_between_passes_short(
    tmp_path: Path, keys: tuple[CheckpointSigner, CheckpointVerifier], executor: ThreadPoolExecutor
) -> None:
    """Async mode pauses between passes so that records ship in batches; a reader of its own
    writes (GET /audit/events, whose every read is a record too) must not wait out the pause
    on each page."""
    signer, _ = keys
    store = AuditStore.sqlite(tmp_path / "store.sqlite3")

    async def run() -> None:
        replica = Replica(
            tmp_path / "a", store, executor, signer, instance="r", ship_interval=3600.0
        )
        await replica.start()
        await replica.writer.append(event(1))
        async with asyncio.timeout(10):
            await replica.shipper.shipped(replica.writer.seq)
        # The pass that shipped it is followed by the pause: nothing written now ships by
        # itself within it.
        await replica.writer.append(event(2))
        await asyncio.sleep(0.3)
        assert [r["externalUserId"] for r in store.query(StoreFilters())] == ["u1"]
        # A reader waiting for it does not wait the hour.
        async with asyncio.timeout(10):
            await replica.shipper.shipped(replica.writer.seq)
        assert [r["externalUserId"] for r in store.query(StoreFilters())] == ["u1", "u2"]
        await replica.stop()

    asyncio.run(run())


def test_tampering_in_the_store_is_named_by_instance_and_seq(
    tmp_path: Path, keys: tuple[CheckpointSigner, CheckpointVerifier], executor: ThreadPoolExecutor
) -> None:
    signer, verifier = keys
    pristine = tmp_path / "pristine.sqlite3"
    run_replica(
        tmp_path / "a", AuditStore.sqlite(pristine), executor, signer, instance="t", events=20
    )
    edits = {
        "a column": "UPDATE audit_records SET external_user_id = 'someone-else' WHERE seq = 7",
        "the line": "UPDATE audit_records SET line = CAST(replace(CAST(line AS TEXT), "
        "'\"u5\"', '\"u9\"') AS BLOB) WHERE seq = 7",
        "a row": "DELETE FROM audit_records WHERE seq = 7",
    }
    for what, statement in edits.items():
        copy = tmp_path / f"copy-{len(what)}.sqlite3"
        copy.write_bytes(pristine.read_bytes())
        with sqlite3.connect(copy) as db:
            assert db.execute(statement).rowcount == 1, what
        result = verify_store(AuditStore.sqlite(copy), verifier, quiet_seconds=3600)
        assert not result.ok, what
        failure = result.report.failure or ""
        assert "instance t" in failure or "instance 't'" in failure, (what, failure)
        assert "seq 7" in failure or "seq 8" in failure, (what, failure)

    # The tail deleted: the chain ends unsealed. While it could be a running replica it is
    # a warning; once it has been quiet for longer than the quiet time, a failure.
    copy = tmp_path / "tail.sqlite3"
    copy.write_bytes(pristine.read_bytes())
    with sqlite3.connect(copy) as db:
        db.execute("DELETE FROM audit_records WHERE seq > 15")
    recent = verify_store(AuditStore.sqlite(copy), verifier, quiet_seconds=3600)
    assert recent.ok
    assert recent.report.warnings
    later = time.time() + 61
    quiet = verify_store(AuditStore.sqlite(copy), verifier, quiet_seconds=60, now=later)
    assert not quiet.ok
    assert "ends unsealed at seq 15, and its last signed checkpoint is 6" in quiet.quiet[0]
    # What the store says of when its rows came does not help: a stored_at set a day ahead
    # (it once kept a cut tail from ever reading as quiet) changes nothing, nor do unsigned
    # records linked on after the cut, for the time that counts is the one signed.
    with sqlite3.connect(copy) as db:
        db.execute("UPDATE audit_records SET stored_at = ? WHERE seq = 15", (later + 86400,))
    ahead = verify_store(AuditStore.sqlite(copy), verifier, quiet_seconds=60, now=later)
    assert ahead.quiet == quiet.quiet
    with sqlite3.connect(pristine) as db:
        kind, line, file = db.execute(
            "SELECT type, line, file FROM audit_records WHERE seq = 16"
        ).fetchone()
    assert kind == "decision"
    stamp = rfc3339(later).replace("Z", ".000Z")  # as the writer writes a time
    fresh = re.sub(rb'"time":"[^"]*"', f'"time":"{stamp}"'.encode(), line, count=1)
    AuditStore.sqlite(copy).insert([row_of(fresh, file)])
    linked = verify_store(AuditStore.sqlite(copy), verifier, quiet_seconds=60, now=later)
    assert linked.report.chains[0].last_seq == 16
    assert linked.report.chains[0].last_time == stamp
    assert "ends unsealed at seq 16, and its last signed checkpoint is 6" in linked.quiet[0]
    with sqlite3.connect(copy) as db:
        db.execute("UPDATE audit_records SET stored_at = ? WHERE seq = 15", (float("inf"),))
    edited = verify_store(AuditStore.sqlite(copy), verifier, quiet_seconds=60)
    assert not edited.ok
    assert edited.report.failure == (
        "the store holds a stored_at of instance 't' that is not a finite number (edited)"
    )


def test_export_writes_files_that_verify_offline(
    tmp_path: Path, keys: tuple[CheckpointSigner, CheckpointVerifier], executor: ThreadPoolExecutor
) -> None:
    signer, verifier = keys
    store = AuditStore.sqlite(tmp_path / "store.sqlite3")
    run_replica(tmp_path / "a", store, executor, signer, instance="x", events=25)
    exported = export_chains(store, tmp_path / "out")
    originals = sorted((tmp_path / "a").glob("*.jsonl"))
    assert exported.files == len(originals)
    for original in originals:
        assert (tmp_path / "out" / original.name).read_bytes() == original.read_bytes()
    assert verify([tmp_path / "out"], verifier).ok
    with pytest.raises(FileExistsError):
        export_chains(store, tmp_path / "out")


def test_an_unreachable_store_is_a_store_error_without_the_password() -> None:
    from broker.audit.store import open_url

    store = open_url("postgresql://broker:s3cret-pw@127.0.0.1:1/audit", timeout_seconds=1)
    with pytest.raises(StoreError) as raised:
        store.migrate()
    assert "s3cret-pw" not in str(raised.value)
    assert "127.0.0.1:1/audit" in str(raised.value)
    store.close()


def test_the_auditor_commands_read_a_store_given_as_database(
    tmp_path: Path,
    keys: tuple[CheckpointSigner, CheckpointVerifier],
    executor: ThreadPoolExecutor,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from broker.cli import main

    signer, _ = keys
    store_path = tmp_path / "store.sqlite3"
    run_replica(
        tmp_path / "a", AuditStore.sqlite(store_path), executor, signer, instance="cli", events=6
    )
    database = str(store_path)
    assert (
        main(["audit", "query", "--database", database, "--subject", "u3", "--format", "json"]) == 0
    )
    assert '"externalUserId":"u3"' in capsys.readouterr().out
    sha = hashlib.sha256(b"u4").hexdigest()
    assert main(["audit", "find-token", "--database", database, "--sha256", sha]) == 0
    found = capsys.readouterr()
    assert "u4" in found.out
    assert "matched by tokenSha256" in found.err
    assert main(["audit", "find-token", "--database", database, "--jti", "none"]) == 1
    capsys.readouterr()

    # The URL itself on the command line is refused: its password would be in `ps`.
    url = "postgresql://broker:pw-in-argv@127.0.0.1:1/db"
    assert main(["audit", "query", "--database", url]) == 2
    refused = capsys.readouterr().err
    assert "env:VAR or file:PATH" in refused
    assert "pw-in-argv" not in refused
    monkeypatch.delenv("NO_SUCH_URL_VAR", raising=False)
    assert main(["audit", "query", "--database", "env:NO_SUCH_URL_VAR"]) == 2
    assert "unset or empty" in capsys.readouterr().err
    assert main(["audit", "query", str(tmp_path / "a"), "--database", database]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["audit", "query"]) == 2
    assert "give audit paths or --database" in capsys.readouterr().err


def test_retention_deletes_old_rows_behind_a_record_and_the_rest_still_verifies(
    tmp_path: Path, keys: tuple[CheckpointSigner, CheckpointVerifier], executor: ThreadPoolExecutor
) -> None:
    store = AuditStore.sqlite(tmp_path / "store.sqlite3")
    kept = retention_scenario(store, tmp_path, keys, executor)
    # Rows deleted without a retention record are still found.
    with sqlite3.connect(tmp_path / "store.sqlite3") as db:
        db.execute("DELETE FROM audit_records WHERE instance = 'new' AND seq = ?", (kept,))
    failed = verify_store(
        AuditStore.sqlite(tmp_path / "store.sqlite3"), keys[1], quiet_seconds=3600
    )
    assert not failed.ok
    assert f"begin at seq {kept + 1}" in (failed.report.failure or "")


def test_a_fifo_among_the_audit_files_is_a_failure_not_a_hang(
    tmp_path: Path, keys: tuple[CheckpointSigner, CheckpointVerifier], executor: ThreadPoolExecutor
) -> None:
    import os

    from broker.audit.writer import segment_name

    store = AuditStore.sqlite(tmp_path / "store.sqlite3")
    signer, verifier = keys
    run_replica(tmp_path / "a", store, executor, signer, instance="one", events=5)
    # Another process's chain whose file is a FIFO: opening it for reading used to wait
    # for a writer for ever, in `broker audit verify` and in the shipper's thread.
    os.mkfifo(tmp_path / "a" / segment_name("two", 1))
    report = verify([tmp_path / "a"], verifier)
    assert report.failure is not None
    assert "is not a regular file" in report.failure
    run_replica(tmp_path / "a", store, executor, signer, instance="three", events=5)
    assert len(store.query(StoreFilters(instance="three"))) == 5
    assert seqs(store, "two") == []


class _WatchedStore(AuditStore):
    """A SQLite store that notes which thread made each insert, and can hold the first one
    back until the test lets it go."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.threads: list[str] = []
        self.entered = threading.Event()
        self.go_on = threading.Event()
        self.go_on.set()

    def insert(self, rows: Sequence[Row]) -> int:
        self.threads.append(threading.current_thread().name.rsplit("_", 1)[0])
        self.entered.set()
        assert self.go_on.wait(10)
        return super().insert(rows)


def _two_speed_shipper(
    store: AuditStore, directory: Path, idle: ThreadPoolExecutor, urgent: ThreadPoolExecutor
) -> Shipper:
    """As the shipping process runs it: passes on ``idle``, urgent ones on ``urgent``, no
    pause between batches, an hour between passes unless hurried or released."""
    return Shipper(
        store,
        directory,
        "one",
        lambda: 0,
        executor=idle,
        urgent_executor=urgent,
        metrics=Metrics(),
        batch_records=7,
        min_interval_seconds=3600.0,
        idle_wait_seconds=0.0,
    )


def _backlog(
    tmp_path: Path, signer: CheckpointSigner, executor: ThreadPoolExecutor, *, events: int
) -> tuple[Path, int, _WatchedStore]:
    """A chain of ``events`` decisions left in a directory by a replica that has stopped
    (its lines counted), and an empty watched store to ship it into."""
    directory = tmp_path / "a"
    run_replica(
        directory,
        AuditStore.sqlite(tmp_path / "x.sqlite3"),
        executor,
        signer,
        instance="one",
        events=events,
    )
    store = _WatchedStore.sqlite(tmp_path / "store.sqlite3")
    assert isinstance(store, _WatchedStore)
    return directory, audit_lines(directory), store


@pytest.fixture
def two_speeds() -> Iterator[tuple[ThreadPoolExecutor, ThreadPoolExecutor]]:
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="idle") as idle,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="urgent") as urgent,
    ):
        yield idle, urgent


def test_an_idle_pass_gives_way_to_an_urgent_one_between_two_batches(
    tmp_path: Path,
    keys: tuple[CheckpointSigner, CheckpointVerifier],
    executor: ThreadPoolExecutor,
    two_speeds: tuple[ThreadPoolExecutor, ThreadPoolExecutor],
) -> None:
    """A pass at idle priority holds the pass lock (and the store's write lock in its
    transaction): one asked for urgently must not wait for all of it."""
    signer, _ = keys
    directory, lines, store = _backlog(tmp_path, signer, executor, events=40)
    store.go_on.clear()

    async def run() -> None:
        shipper = _two_speed_shipper(store, directory, *two_speeds)
        shipper.start()
        await asyncio.get_running_loop().run_in_executor(None, store.entered.wait, 10)
        shipper.hurry()
        store.go_on.set()
        async with asyncio.timeout(10):
            await shipper.shipped(lines)
        await shipper.close(final_pass=False)

    asyncio.run(run())
    assert seqs(store, "one") == list(range(1, lines + 1))
    assert len(store.threads) == -(-lines // 7)
    assert store.threads == ["idle"] + ["urgent"] * (len(store.threads) - 1)


def test_a_held_shipper_ships_nothing_idly_until_released_or_hurried(
    tmp_path: Path,
    keys: tuple[CheckpointSigner, CheckpointVerifier],
    executor: ThreadPoolExecutor,
    two_speeds: tuple[ThreadPoolExecutor, ThreadPoolExecutor],
) -> None:
    """While the serving replica is busy, idle passes wait; the lag bound (a hurry) ships
    all the same, and quiet again the idle passes resume at once."""
    signer, _ = keys
    directory, first, store = _backlog(tmp_path, signer, executor, events=10)

    async def run() -> None:
        shipper = _two_speed_shipper(store, directory, *two_speeds)
        shipper.hold(True)
        shipper.start()
        await asyncio.sleep(0.3)
        assert store.threads == []
        # Past the lag bound the replica hurries the process, busy or not.
        shipper.hurry()
        async with asyncio.timeout(10):
            await shipper.shipped(first)
        assert set(store.threads) == {"urgent"}
        await shipper.close(final_pass=False)
        # A later process in the same directory writes more; quiet again, the held
        # shipper takes it on its idle thread without being hurried.
        store.threads.clear()
        await asyncio.get_running_loop().run_in_executor(
            None,
            lambda: run_replica(
                directory,
                AuditStore.sqlite(tmp_path / "y.sqlite3"),
                executor,
                signer,
                instance="two",
                events=5,
            ),
        )
        shipper = _two_speed_shipper(store, directory, *two_speeds)
        shipper.hold(True)
        shipper.start()
        await asyncio.sleep(0.3)
        assert store.threads == []
        shipper.hold(False)
        for _ in range(500):
            if seqs(store, "two"):
                break
            await asyncio.sleep(0.02)
        await shipper.close(final_pass=False)

    asyncio.run(run())
    assert store.threads
    assert set(store.threads) == {"idle"}
    assert seqs(store, "two") != []


def test_a_pass_blocked_in_the_store_shows_how_long_it_has_made_no_progress(
    tmp_path: Path,
    keys: tuple[CheckpointSigner, CheckpointVerifier],
    executor: ThreadPoolExecutor,
    two_speeds: tuple[ThreadPoolExecutor, ThreadPoolExecutor],
) -> None:
    signer, _ = keys
    directory, lines, store = _backlog(tmp_path, signer, executor, events=20)
    store.go_on.clear()

    async def run() -> None:
        shipper = _two_speed_shipper(store, directory, *two_speeds)
        assert shipper.stuck_for() == 0.0
        shipper.start()
        await asyncio.get_running_loop().run_in_executor(None, store.entered.wait, 10)
        # The first batch waits in the store: no progress since the pass began.
        await asyncio.sleep(0.5)
        blocked = shipper.stuck_for()
        assert 0.4 < blocked < 5
        await asyncio.sleep(0.2)
        assert shipper.stuck_for() > blocked
        store.go_on.set()
        async with asyncio.timeout(10):
            await shipper.shipped(lines)
        # Each batch stored is progress; a pass ended is no pass under way.
        await asyncio.sleep(0.1)
        assert shipper.stuck_for() == 0.0
        await shipper.close(final_pass=False)

    asyncio.run(run())


def test_a_crashed_chain_its_restart_follows_is_not_taken_for_a_cut_tail(
    tmp_path: Path, keys: tuple[CheckpointSigner, CheckpointVerifier]
) -> None:
    # A replica killed and started again in the same directory: its new chain's signed
    # start names the crashed chain's last line, so nothing can have been cut after it.
    # Every such crash was reported as a possible deletion once the quiet time had passed.
    signer, verifier = keys
    trail = tmp_path / "trail"

    async def crash_then_restart() -> None:
        crashed = AuditWriter(AuditSettings(dir=str(trail), fsync=False), signer, instance_id="a")
        await crashed.start()
        await crashed.append(event(1, "u"))
        # Killed: never closed, so never sealed. The next one starts beside it.
        restarted = AuditWriter(AuditSettings(dir=str(trail), fsync=False), signer, instance_id="b")
        await restarted.start()
        await restarted.append(event(2, "u"))
        await restarted.close()

    asyncio.run(crash_then_restart())
    lines = [(path, path.read_bytes().splitlines()) for path in sorted(trail.glob("*.jsonl"))]
    store = AuditStore.sqlite(Path(store_of(tmp_path / "store.sqlite3", lines)))
    later = time.time() + 3600
    result = verify_store(store, verifier, quiet_seconds=60, now=later)
    assert result.ok, (result.report.failure, result.quiet)
    crashed = next(chain for chain in result.report.chains if chain.instance == "a")
    assert not crashed.sealed
    assert crashed.named_through == crashed.last_seq
    # Its last line cut: the successor's start says so.
    with sqlite3.connect(tmp_path / "store.sqlite3") as db:
        db.execute(
            "DELETE FROM audit_records WHERE instance = 'a' AND seq = ?", (crashed.last_seq,)
        )
    cut = verify_store(
        AuditStore.sqlite(tmp_path / "store.sqlite3"), verifier, quiet_seconds=60, now=later
    )
    assert not cut.ok
    assert "deleted" in (cut.report.failure or "")
