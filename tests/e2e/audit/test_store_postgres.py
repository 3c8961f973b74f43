"""The audit store on a real PostgreSQL server: replicas that share it, its outages in both
modes, a replica killed mid-load, and tampering in the database."""

# The tampering test edits rows with SQL built from its own constants.
# ruff: noqa: S608
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from broker.audit.store import AuditStore, row_of
from tests.conftest import (
    AUDIENCE,
    AuditKeys,
    BackgroundLoad,
    Broker,
    BrokerFactory,
    store_config,
)
from tests.support import loopback
from tests.support.audit_cli import run_audit
from tests.support.partition import partitionable
from tests.support.postgres import PostgresServer, store_url_file
from tests.support.trails import new_signer
from tests.support.waiting import eventually


def _stored(url: str) -> list[tuple[str, int]]:
    """The (instance, seq) of every stored row; none before a replica's first shipping pass
    has created the table (a replica may be killed before its first pass, and its successor
    migrates in its own first pass, which the test may look before)."""
    with psycopg.connect(url) as db:
        try:
            rows = db.execute("SELECT instance, seq FROM audit_records ORDER BY instance, seq")
        except psycopg.errors.UndefinedTable:
            return []
        return [(str(r[0]), int(r[1])) for r in rows.fetchall()]


def _in_files(*brokers: Broker) -> set[tuple[str, int]]:
    return {(r["instance"], r["seq"]) for b in brokers for r in b.audit_records()}


def _stop_and_ship(database: str, *replicas: Broker) -> None:
    """Stop ``replicas`` cleanly and wait until the store holds every line of their files."""
    for replica in replicas:
        assert replica.server.stopped_cleanly()
    eventually(
        lambda: _in_files(*replicas) <= set(_stored(database)),
        timeout=15.0,
        what="the seals shipped",
    )


def _delete_chain(database: str, instance: str) -> None:
    """What whoever can edit the store could do: every row of one chain, gone."""
    with psycopg.connect(database) as db:
        db.execute("DELETE FROM audit_records WHERE instance = %s", (instance,))


def _verify_store(database: str, audit_keys: AuditKeys) -> subprocess.CompletedProcess[str]:
    return run_audit(
        "verify", "--database", "env:AUDIT_DB", "--public-key", audit_keys.public,
        env={"AUDIT_DB": database},
    )  # fmt: skip


def _pages(brokers: list[Broker], **params: Any) -> list[dict[str, Any]]:
    """Every page of GET /audit/events, asking each replica in turn with the last cursor."""
    events: list[dict[str, Any]] = []
    cursor = None
    turn = 0
    while True:
        broker = brokers[turn % len(brokers)]
        query = dict(params, limit=7) | ({"cursor": cursor} if cursor else {})
        response = loopback.get(
            broker.url + "/audit/events",
            params=query,
            headers=broker.clients["auditor"].headers(),
            timeout=10,
        )
        assert response.status_code == 200, response.text
        page = response.json()
        events += page["events"]
        cursor = page["nextCursor"]
        turn += 1
        if cursor is None:
            return events


@pytest.fixture
def database(postgres: PostgresServer) -> str:
    return postgres.create_database()


def test_two_replicas_one_store_every_record_paged_exactly_once_from_either(
    start_broker: BrokerFactory, database: str, tmp_path: Path, audit_keys: AuditKeys
) -> None:
    url_file = store_url_file(tmp_path, database)
    replicas = [start_broker(name=f"replica{n}", extra=store_config(url_file)) for n in range(2)]
    # The auditor role belongs to a client of each replica's own config: both replicas
    # here are given the same clients, as a deployment's replicas are.
    for n, replica in enumerate(replicas):
        for index in range(12):
            body = {"audience": AUDIENCE, "externalUserId": f"r{n}-{index}"}
            assert replica.post_token(body=body).status_code == 200
        assert replica.post_token(body={"audience": "https://no.example"}).status_code == 403

    decisions = {(r["instance"], r["seq"]) for b in replicas for r in b.audit_lines()}
    eventually(
        lambda: decisions <= set(_stored(database)),
        timeout=15.0,
        what="both replicas' records in the store",
    )
    events = _pages([replicas[1], replicas[0]])
    seen = [(e["instance"], e["seq"]) for e in events]
    assert len(seen) == len(set(seen))
    assert set(seen) == decisions
    assert {e["instance"] for e in events} == {b.audit_lines()[0]["instance"] for b in replicas}

    # The new filters, from either replica.
    token = replicas[0].post_token(body={"audience": AUDIENCE, "externalUserId": "find-me"})
    sha = token.json()["tokenSha256"]
    eventually(
        lambda: bool(_pages([replicas[1]], tokenSha256=sha)), timeout=15.0, what="token shipped"
    )
    [found] = _pages([replicas[1]], tokenSha256=sha)
    assert found["externalUserId"] == "find-me"
    instance = replicas[1].audit_lines()[0]["instance"]
    assert {e["instance"] for e in _pages(replicas, instance=instance)} == {instance}

    _stop_and_ship(database, *replicas)
    done = run_audit(
        "verify",
        "--database",
        "env:AUDIT_DB",
        "--public-key",
        audit_keys.public,
        env={"AUDIT_DB": database},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK: in the store" in done.stdout
    assert database.split("@")[0].split(":")[-1] not in done.stdout + done.stderr

    # One replica's files beside the store that holds both: its chain agrees, the other's
    # is the store's alone. Then its files' last records cut (as a crash would leave them,
    # so the files alone still verify with --allow-crash-tail): the store has them.
    own, other = (replica.audit_lines()[0]["instance"] for replica in replicas)

    def beside(*extra: str) -> subprocess.CompletedProcess[str]:
        return run_audit(
            "verify",
            replicas[0].audit_dir,
            "--database",
            "env:AUDIT_DB",
            "--public-key",
            audit_keys.public,
            *extra,
            env={"AUDIT_DB": database},
        )

    done = beside()
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"agree: {own}: files and store" in done.stdout
    assert f"store only: {other}: seq 1.." in done.stdout
    (last_file,) = sorted(replicas[0].audit_dir.glob("*.jsonl"))[-1:]
    lines = last_file.read_bytes().splitlines(keepends=True)
    last_file.write_bytes(b"".join(lines[:-3]))
    done = beside("--allow-crash-tail")
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"FAILED: instance {own!r}: the store holds seq" in done.stdout


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server of this test's own, to stop and start."""
    with PostgresServer.running() as server:
        yield server


def test_a_store_outage_in_async_mode_delays_shipping_and_loses_nothing(
    start_broker: BrokerFactory,
    own_postgres: PostgresServer,
    tmp_path: Path,
    audit_keys: AuditKeys,
) -> None:
    database = own_postgres.create_database()
    broker = start_broker(name="outage", extra=store_config(store_url_file(tmp_path, database)))
    with BackgroundLoad(broker, workers=2) as load:
        load.wait_for(20)
        # The store reached once (the shipping process starts beside the broker), then gone.
        eventually(
            lambda: broker.metric("broker_audit_store_up") == 1, timeout=15.0, what="reached"
        )
        own_postgres.stop()
        before = len(load.received)
        load.wait_for(before + 100)
        # Issuance goes on; the lag shows in the metrics and in /readyz, which stays ready.
        assert len(load.received) >= before + 100
        eventually(
            lambda: broker.metric("broker_audit_ship_lag_records") > 0, timeout=15.0, what="lag"
        )
        eventually(lambda: broker.metric("broker_audit_store_up") == 0, timeout=15.0, what="down")
        ready = loopback.get(broker.url + "/readyz")
        assert ready.status_code == 200
        assert ready.json()["detail"]["auditStore"]["state"] == "unreachable"
        own_postgres.start()
        eventually(
            lambda: broker.metric("broker_audit_store_up") == 1, timeout=15.0, what="reconnected"
        )
    assert load.refused == []
    assert broker.server.stopped_cleanly()
    output = broker.server.output()
    assert "audit_store_unreachable" in output
    assert own_postgres.password not in output
    eventually(lambda: _in_files(broker) == set(_stored(database)), timeout=15.0, what="caught up")
    stored = _stored(database)
    assert len(stored) == len(set(stored)) == len(broker.audit_records())
    done = run_audit(
        "verify",
        "--database",
        f"file:{store_url_file(tmp_path, database)}",
        "--public-key",
        audit_keys.public,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_store_outage_in_sync_mode_gives_bounded_503s_and_no_token(
    start_broker: BrokerFactory, own_postgres: PostgresServer, tmp_path: Path
) -> None:
    database = own_postgres.create_database()
    broker = start_broker(
        name="sync",
        extra_audit="write_timeout_seconds = 1.0",
        extra=store_config(store_url_file(tmp_path, database), mode="sync", timeout=1.0),
    )
    assert broker.post_token().status_code == 200
    own_postgres.stop()
    for index in range(3):
        started = time.monotonic()
        refused = broker.post_token(body={"audience": AUDIENCE, "externalUserId": f"s{index}"})
        assert time.monotonic() - started < 3.0
        assert refused.status_code == 503
        assert refused.json()["code"] == "audit_unavailable"
        assert "accessToken" not in refused.text
    eventually(
        lambda: loopback.get(broker.url + "/readyz").status_code == 503,
        timeout=15.0,
        what="unready",
    )
    own_postgres.start()
    eventually(
        lambda: (
            broker.post_token(body={"audience": AUDIENCE, "externalUserId": "back"}).status_code
            == 200
        ),
        timeout=15.0,
        what="issuing again",
    )


def test_a_replica_killed_mid_load_gets_all_its_records_into_the_store_after_restart(
    start_broker: BrokerFactory, database: str, tmp_path: Path, audit_keys: AuditKeys
) -> None:
    url_file = store_url_file(tmp_path, database)
    first = start_broker(name="killed", extra=store_config(url_file))
    with BackgroundLoad(first) as load:
        load.wait_for(60)
        assert first.server.process is not None
        os.kill(first.server.process.pid, signal.SIGKILL)
    first.server.process.wait()
    received = set(load.received)
    # Restarted on the same audit directory (a new instance id, as after a crash).
    second = start_broker(name="restarted", audit_dir=first.audit_dir, extra=store_config(url_file))
    in_files = {(r["instance"], r["seq"]) for r in first.audit_records(killed=True)}
    eventually(
        lambda: in_files <= set(_stored(database)), timeout=15.0, what="the killed chain shipped"
    )
    stored = _stored(database)
    assert len(stored) == len(set(stored))
    with psycopg.connect(database) as db:
        hashes = {
            r[0]
            for r in db.execute(
                "SELECT token_sha256 FROM audit_records WHERE outcome = 'issued'"
            ).fetchall()
        }
    assert received <= hashes
    assert second.server.stopped_cleanly()


def test_tampering_in_the_database_fails_verify_naming_instance_and_seq(
    start_broker: BrokerFactory, database: str, tmp_path: Path, audit_keys: AuditKeys
) -> None:
    broker = start_broker(name="tamper", extra=store_config(store_url_file(tmp_path, database)))
    for index in range(10):
        broker.post_token(body={"audience": AUDIENCE, "externalUserId": f"t{index}"})
    assert broker.server.stopped_cleanly()
    eventually(lambda: _in_files(broker) == set(_stored(database)), timeout=15.0, what="shipped")
    [instance] = {r["instance"] for r in broker.audit_records()}
    seq = broker.audit_lines()[4]["seq"]

    def verify(*extra: str) -> str:
        done = run_audit(
            "verify",
            "--database",
            "env:AUDIT_DB",
            "--public-key",
            audit_keys.public,
            *extra,
            env={"AUDIT_DB": database},
        )
        return f"{done.returncode}\n{done.stdout}{done.stderr}"

    assert verify().startswith("0\n")
    where = "WHERE instance = %s AND seq = %s"
    with psycopg.connect(database, autocommit=True) as db:
        original = db.execute(f"SELECT * FROM audit_records {where}", (instance, seq)).fetchone()
        assert original is not None
        edits = [
            f"UPDATE audit_records SET audience = 'https://evil.example' {where}",
            "UPDATE audit_records SET line = convert_to(replace(convert_from(line, 'UTF8'), "
            f"'\"t4\"', '\"t9\"'), 'UTF8') {where}",
            f"DELETE FROM audit_records {where}",
        ]
        columns = len(original)
        for statement in edits:
            assert db.execute(statement, (instance, seq)).rowcount == 1
            result = verify()
            assert result.startswith("1\n"), (statement, result)
            assert "instance" in result, result
            assert instance in result, result
            assert f"seq {seq}" in result or f"seq {seq + 1}" in result, result
            db.execute(f"DELETE FROM audit_records {where}", (instance, seq))
            marks = ", ".join(["%s"] * columns)
            db.execute(f"INSERT INTO audit_records VALUES ({marks})", original)
            assert verify().startswith("0\n")
        # The tail deleted: unsealed, and quiet for longer than the quiet time.
        last = broker.audit_records()[-1]["seq"]
        db.execute(
            "DELETE FROM audit_records WHERE instance = %s AND seq > %s", (instance, last - 3)
        )
        result = verify("--quiet-seconds", "0")
        assert result.startswith("1\n"), result
        assert f"'{instance}' ends unsealed at seq {last - 3}" in result
        # Its last row's stored_at edited so that it never reads as quiet: NaN and Infinity
        # (which PostgreSQL's max() prefers to any number) are edits; a time far ahead
        # changes nothing, for the quiet time runs from the last signed checkpoint.
        for ahead, said in [
            ("NaN", "not a finite number (edited)"),
            ("Infinity", "not a finite number (edited)"),
            (str(time.time() + 86400), f"'{instance}' ends unsealed at seq {last - 3}, and"),
        ]:
            db.execute(
                f"UPDATE audit_records SET stored_at = %s::float8 {where}",
                (ahead, instance, last - 3),
            )
            result = verify("--quiet-seconds", "0")
            assert result.startswith("1\n"), (ahead, result)
            assert said in result, result


def test_retention_on_postgresql_deletes_behind_a_record_and_the_rest_verifies(
    database: str, tmp_path: Path
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from broker.audit.signing import load_public_key
    from broker.audit.store import AuditStore
    from broker.audit.store_verify import verify_store
    from tests.support.audit_replica import retention_scenario

    signer, public = new_signer(tmp_path / "keys")
    keys = (signer, load_public_key(public))
    store = AuditStore.postgresql(database)
    with ThreadPoolExecutor(max_workers=2) as executor:
        kept = retention_scenario(store, tmp_path, keys, executor)
    with psycopg.connect(database, autocommit=True) as db:
        db.execute("DELETE FROM audit_records WHERE instance = 'new' AND seq = %s", (kept,))
    failed = verify_store(AuditStore.postgresql(database), keys[1], quiet_seconds=3600)
    assert not failed.ok
    assert f"begin at seq {kept + 1}" in (failed.report.failure or "")


@pytest.mark.parametrize("pool_size", [1, 4], ids=["one-connection", "pool"])
def test_a_store_call_across_a_partition_fails_within_its_timeouts(
    database: str, postgres: PostgresServer, pool_size: int
) -> None:
    # One connection: the CLI's and the shipping process's; a pool: a replica's readers.
    timeout = 2.0
    store = AuditStore.postgresql(database, timeout_seconds=timeout, pool_size=1)
    store.migrate()
    store.close()
    with partitionable(postgres.port) as path:
        remote = database.replace(f"127.0.0.1:{postgres.port}", f"{path.address}:{path.port}")
        probe = path.run(
            sys.executable,
            "-m",
            "tests.support.store_probe",
            remote,
            str(pool_size),
            str(timeout),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=str(Path(__file__).parents[3]),
        )
        try:
            assert probe.stdout is not None
            assert probe.stdout.readline() == "ready\n"
            path.cut()
            # Every packet lost, no reset: statement_timeout (the server's) cannot help.
            out, _ = probe.communicate(input="\n", timeout=30)
        finally:
            probe.kill()
    outcome = json.loads(out.splitlines()[0])
    assert outcome["error"].startswith("StoreError: audit store (postgresql:")
    # Within the TCP bounds the store sets (twice its timeout unacknowledged), not never.
    assert outcome["seconds"] < 2 * timeout + 2


def test_pruning_keeps_a_replicas_volume_small_and_the_store_holds_the_whole_trail(
    start_broker: BrokerFactory, database: str, tmp_path: Path, audit_keys: AuditKeys
) -> None:
    # Without it the chain files only grow: a pod's emptyDir past its size limit gets the
    # pod evicted, with whatever it had not shipped yet.
    url_file = store_url_file(tmp_path, database)
    broker = start_broker(
        name="pruned",
        extra_audit="rotate_bytes = 4096\ncheckpoint_every_records = 5",
        extra=store_config(url_file) + "prune_shipped_files = true\n",
    )
    for index in range(40):
        body = {"audience": AUDIENCE, "externalUserId": f"p{index}"}
        assert broker.post_token(body=body).status_code == 200

    def files() -> list[str]:
        return sorted(path.name for path in broker.audit_dir.glob("*.jsonl"))

    eventually(lambda: len(files()) <= 2, timeout=15.0, what="the shipped files pruned")
    assert broker.server.stopped_cleanly()
    eventually(lambda: len(_stored(database)) > 40, timeout=15.0, what="the seal shipped")
    stored = _stored(database)
    assert [seq for _, seq in stored] == list(range(1, len(stored) + 1))
    assert len(files()) <= 2
    done = run_audit(
        "verify", "--database", "env:AUDIT_DB", "--public-key", audit_keys.public,
        env={"AUDIT_DB": database},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sealed" in done.stdout


def test_a_replica_deleted_whole_from_the_store_is_missing_a_line_a_later_start_saw(
    start_broker: BrokerFactory, database: str, tmp_path: Path, audit_keys: AuditKeys
) -> None:
    # Each replica its own directory: no chain names another as its predecessor, and the
    # rows of one could be deleted whole with nothing left to tell.
    url_file = store_url_file(tmp_path, database)
    first = start_broker(name="first", extra=store_config(url_file))
    for index in range(3):
        body = {"audience": AUDIENCE, "externalUserId": f"w{index}"}
        assert first.post_token(body=body).status_code == 200
    gone = first.audit_lines()[0]["instance"]
    eventually(lambda: _in_files(first) <= set(_stored(database)), timeout=15.0, what="shipped")
    second = start_broker(name="second", extra=store_config(url_file))
    [start] = [r for r in second.audit_records() if r["type"] == "start"]
    assert gone in {position["instance"] for position in start["witnessed"]}
    _stop_and_ship(database, first, second)
    done = _verify_store(database, audit_keys)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "In the store, every line that a start or witness record saw there" in done.stdout
    _delete_chain(database, gone)
    done = _verify_store(database, audit_keys)
    assert done.returncode == 1
    assert f"instance {gone!r} seq " in done.stdout
    assert "(its start record, seq 1) saw in the store, is gone" in done.stdout


def test_a_replica_that_started_later_and_was_deleted_whole_is_missing_a_line_a_heartbeat_saw(
    start_broker: BrokerFactory, database: str, tmp_path: Path, audit_keys: AuditKeys
) -> None:
    # No start record names a chain that began after every other replica's start: the
    # replicas already running witness it at their heartbeats.
    url_file = store_url_file(tmp_path, database)
    beat = "heartbeat_seconds = 1"
    earlier = start_broker(name="earlier", extra_audit=beat, extra=store_config(url_file))
    later = start_broker(name="later", extra_audit=beat, extra=store_config(url_file))
    assert later.post_token(body={"audience": AUDIENCE, "externalUserId": "w"}).status_code == 200
    gone = later.audit_lines()[0]["instance"]

    def witnessed() -> bool:
        return any(
            gone in {chain["instance"] for chain in record["chains"]}
            for record in earlier.audit_records()
            if record["type"] == "witness"
        )

    eventually(witnessed, timeout=15.0, what="the earlier replica witnessed the later one")
    _stop_and_ship(database, earlier, later)
    _delete_chain(database, gone)
    done = _verify_store(database, audit_keys)
    assert done.returncode == 1
    assert f"instance {gone!r} seq " in done.stdout
    assert "(its witness record, seq " in done.stdout


def test_the_revocation_index_is_made_on_postgresql_by_any_migration(database: str) -> None:
    store = AuditStore.postgresql(database)
    try:
        assert list(store.revocation_lines(10)) == []  # not made yet: no record
        assert store.recent_heads(datetime.now(UTC), 256) == []  # nor any chain running
        store.migrate()
        with psycopg.connect(database) as db:
            db.execute("DROP INDEX audit_records_revocation")
        assert store.migrate() == 2  # a store from before the index: added, no new version
        with psycopg.connect(database) as db:
            found = db.execute(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'audit_records_revocation'"
            ).fetchone()
        assert found is not None
        assert "WHERE (type = 'revocation'::text)" in found[0]
        assert list(store.revocation_lines(10)) == []
        # Pages after pages, by time and then instance in byte order (the store's collation).
        store.insert(
            [
                row_of(
                    json.dumps(
                        {"v": 1, "type": "revocation", "instance": instance, "seq": seq,
                         "prev": "0" * 64, "time": at, "action": "bar"}
                    ).encode(),
                    f"audit-{instance}-000001.jsonl",
                )
                for instance, seq, at in [
                    ("B", 1, "2026-12-07T10:00:00.001Z"),
                    ("a", 1, "2026-12-07T10:00:00.001Z"),
                    ("B", 2, "2026-12-07T10:00:00.002Z"),
                ]
            ]
        )  # fmt: skip
        paged = [json.loads(line) for line in store.revocation_lines(10, page=1)]
        assert [(r["instance"], r["seq"]) for r in paged] == [("B", 2), ("a", 1), ("B", 1)]
    finally:
        store.close()


def _freeze(server: PostgresServer, sig: signal.Signals) -> None:
    """Stop (or go on with) every process of ``server``: a server that hangs, whose kernel
    still acknowledges every packet, unlike a partition."""
    found = subprocess.run(
        ["pgrep", "-f", str(server.data)], capture_output=True, text=True, check=False
    ).stdout.split()
    children = [
        pid
        for parent in found
        for pid in subprocess.run(
            ["pgrep", "-P", parent], capture_output=True, text=True, check=False
        ).stdout.split()
    ]
    for pid in {*found, *children}:
        os.kill(int(pid), sig)


def test_a_replica_in_sync_mode_stops_while_its_store_hangs(
    start_broker: BrokerFactory, own_postgres: PostgresServer, tmp_path: Path
) -> None:
    """No socket timeout ends a call to a server that hangs: the stop waited for its last
    shipping pass, then for the store's connections to close, then (at the interpreter's
    exit) for the store threads, for ever, until it was killed."""
    database = own_postgres.create_database()
    broker = start_broker(
        name="hung-store",
        extra_audit="write_timeout_seconds = 2.0",
        extra=store_config(store_url_file(tmp_path, database), mode="sync", timeout=1.0),
    )
    assert broker.post_token(body={"audience": AUDIENCE, "externalUserId": "h"}).status_code == 200
    _freeze(own_postgres, signal.SIGSTOP)
    try:
        refused = broker.post_token(body={"audience": AUDIENCE, "externalUserId": "h2"})
        assert (refused.status_code, refused.json()["code"]) == (503, "audit_unavailable")
        started = time.monotonic()
        assert broker.server.stopped_cleanly()
        assert time.monotonic() - started < 10
    finally:
        _freeze(own_postgres, signal.SIGCONT)
    output = broker.server.output()
    assert "audit_chain_sealed" in output
    assert '"step":"the last shipping pass"' in output


def test_the_auditor_commands_connect_read_only(
    database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``--database`` opens reads, and the server refuses it any write: the tools that
    check the trail cannot change it, whatever the database user may do."""
    from broker.audit.cli import open_database
    from broker.audit.store import StoreError

    line = json.dumps(
        {
            "v": 1,
            "type": "decision",
            "instance": "ro",
            "seq": 1,
            "prev": "0" * 64,
            "time": "2026-12-07T10:00:00.000Z",
            "outcome": "issued",
        },
        separators=(",", ":"),
    ).encode()
    writer = AuditStore.postgresql(database, pool_size=1)
    writer.migrate()
    writer.insert([row_of(line, "audit-ro-000001.jsonl")])
    writer.close()
    monkeypatch.setenv("AUDIT_DB", database)
    reader = open_database("env:AUDIT_DB")
    try:
        assert [stored.seq for stored in reader.chain("ro")] == [1]
        with pytest.raises(StoreError, match="read-only transaction"):
            reader.insert([row_of(line.replace(b'"seq":1', b'"seq":2'), "audit-ro-000001.jsonl")])
        with pytest.raises(StoreError, match="read-only transaction"):
            reader.migrate()
    finally:
        reader.close()
    with psycopg.connect(database) as db:
        assert db.execute("SELECT count(*) FROM audit_records").fetchone() == (1,)
