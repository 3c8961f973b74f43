"""The audit store on SQLite, in-process: schema, idempotent inserts, keyset pages, lookups,
and the lines it refuses to hold."""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest

from broker.audit import store as audit_store
from broker.audit.store import (
    SCHEMA_VERSION,
    AuditStore,
    LineError,
    Position,
    Row,
    StoreDataError,
    StoreError,
    StoreFilters,
    open_url,
    record_time,
    row_of,
    url_problem,
)

AUDIENCE_URL = "https://api.example.com"
T = TypeVar("T")


def _line(instance: str, seq: int, **fields: object) -> bytes:
    record: dict[str, object] = {
        "v": 1,
        "type": "decision",
        "instance": instance,
        "seq": seq,
        "prev": "0" * 64,
        "time": "2026-11-28T10:00:00.000Z",
        "outcome": "issued",
    }
    record.update(fields)
    return json.dumps(record, separators=(",", ":")).encode()


def _rows(instance: str, seqs: range, **fields: object) -> list[Row]:
    return [
        row_of(_line(instance, seq, **fields), f"audit-{instance}-000001.jsonl") for seq in seqs
    ]


def _sqlite_work(store: AuditStore, call: Callable[[], T]) -> tuple[T, int]:
    """What ``call`` returns, and SQLite's own count of the work it did, in thousands of
    instructions (a progress handler every 1,000): work done, not time taken."""
    steps = 0

    def counted() -> int:
        nonlocal steps
        steps += 1
        return 0  # go on

    connection = store._sqlite_connection()
    connection.set_progress_handler(counted, 1000)
    try:
        return call(), steps
    finally:
        connection.set_progress_handler(None, 0)


def _two_pages(
    store: AuditStore, filters: StoreFilters, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """The first two pages' records, and SQLite's count of the work for both."""

    def read() -> list[dict[str, Any]]:
        first = store.page(filters, limit=limit, before=None)
        return first.records + store.page(filters, limit=limit, before=first.next).records

    return _sqlite_work(store, read)


@pytest.fixture
def store(tmp_path: Path) -> AuditStore:
    opened = AuditStore.sqlite(tmp_path / "store.sqlite3")
    opened.migrate()
    return opened


def test_migrations_run_once_and_record_the_version(tmp_path: Path) -> None:
    store = AuditStore.sqlite(tmp_path / "s.sqlite3")
    assert store.migrate() == 0
    assert store.migrate() == SCHEMA_VERSION == 2
    assert store.instances() == []


def test_inserts_are_idempotent_and_count_only_new_rows(store: AuditStore) -> None:
    assert store.insert(_rows("a", range(1, 5))) == 4
    assert store.insert(_rows("a", range(1, 9))) == 4
    assert store.last_position("a") == (8, "audit-a-000001.jsonl")
    assert store.last_position("b") is None
    [summary] = store.instances()
    assert (summary.first_seq, summary.last_seq, summary.rows) == (1, 8, 8)


def test_another_record_under_a_stored_seq_is_a_conflict_and_stores_nothing(
    store: AuditStore,
) -> None:
    store.insert(_rows("a", range(1, 4)))
    forged = _rows("a", range(3, 6), code="forged")
    with pytest.raises(StoreDataError, match="seq 3"):
        store.insert(forged)
    assert store.last_position("a") == (3, "audit-a-000001.jsonl")


def test_pages_newest_first_visit_every_record_exactly_once(store: AuditStore) -> None:
    # Equal times across instances: the keyset (time, instance, seq) still orders them all.
    for instance in ("a", "b", "c"):
        store.insert(_rows(instance, range(1, 35)))
    seen: list[tuple[str, int]] = []
    before = None
    while True:
        page = store.page(StoreFilters(), limit=7, before=before)
        seen += [(r["instance"], r["seq"]) for r in page.records]
        if page.next is None:
            break
        before = Position.from_cursor(page.next.cursor())
    assert len(seen) == len(set(seen)) == 102
    assert seen[0] == ("c", 34)
    assert seen[-1] == ("a", 1)


def test_filters_select_by_every_indexed_field(store: AuditStore) -> None:
    store.insert(_rows("a", range(1, 3), externalUserId="u1", tokenSha256="ab" * 32))
    store.insert(_rows("b", range(1, 3), externalUserId="u2", tokenId="jti-1", cache="hit"))
    store.insert(
        [
            row_of(
                _line("c", 1, time="2026-11-28T12:00:00.000Z", outcome="denied"),
                "audit-c-000001.jsonl",
            ),
            row_of(_line("c", 2, type="checkpoint"), "audit-c-000001.jsonl"),
        ]
    )

    def seqs(**given: object) -> list[tuple[str, int]]:
        found = store.query(StoreFilters(**given))  # type: ignore[arg-type]
        return [(r["instance"], r["seq"]) for r in found]

    assert seqs(subject="u1") == [("a", 1), ("a", 2)]
    assert seqs(token_sha256="ab" * 32) == [("a", 1), ("a", 2)]
    assert seqs(token_id="jti-1", cache="hit") == [("b", 1), ("b", 2)]
    assert seqs(instance="c") == [("c", 1)]  # checkpoints are not decisions
    assert seqs(outcome="denied") == [("c", 1)]
    noon_in_paris = datetime(2026, 11, 28, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    assert seqs(since=noon_in_paris) == [("c", 1)]
    assert seqs(until=noon_in_paris) == [("a", 1), ("a", 2), ("b", 1), ("b", 2)]


def test_find_token_by_fingerprint_or_jti_says_which_matched(store: AuditStore) -> None:
    store.insert(_rows("a", range(1, 2), tokenSha256="cd" * 32, tokenId="j1"))
    store.insert(_rows("b", range(1, 2), outcome="denied", tokenSha256="cd" * 32))
    assert [m for _, m in store.find_token(sha256="CD" * 32)] == ["tokenSha256"]
    assert [m for _, m in store.find_token(jti="j1")] == ["tokenId"]
    assert store.find_token(jti="nope") == []


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        # Nested deeper than msgspec recurses, in a field a row does not even read.
        _line("a", 1)[:-1] + b',"x":' + b"[" * 3000 + b"]" * 3000 + b"}",
        b'{"type":"decision","time":"2026-11-28T10:00:00.000Z"}',
        _line("bad id", 1),
        _line("a", True),
        _line("a", 0),
        _line("a", 1, time="yesterday"),
        _line("a", 1, time="2026-11-28T10:00:00Z"),
    ],
)
def test_lines_the_writer_never_writes_are_not_rows(line: bytes) -> None:
    with pytest.raises(LineError):
        row_of(line, "audit-a-000001.jsonl")


@pytest.mark.parametrize(
    "cursor",
    ["", "0", "2026-11-28T10:00:00.000Z~a", "2026-11-28T10:00:00.000Z~a~x", "x~a~1"],
)
def test_a_cursor_is_only_what_a_page_gave(cursor: str) -> None:
    with pytest.raises(StoreDataError):
        Position.from_cursor(cursor)


def test_times_compare_as_records_write_them() -> None:
    moment = datetime(2026, 11, 28, 10, 0, 0, 123456, tzinfo=UTC)
    assert record_time(moment) == "2026-11-28T10:00:00.123Z"
    position = Position("2026-11-28T10:00:00.123Z", "host-1", 42)
    assert Position.from_cursor(position.cursor()) == position


def test_the_embedded_store_is_as_private_as_the_chain_files(tmp_path: Path) -> None:
    import os
    import stat

    previous = os.umask(0)
    try:
        store = AuditStore.sqlite(tmp_path / "store.sqlite3")
        store.migrate()
        store.insert(_rows("a", range(1, 3)))
    finally:
        os.umask(previous)
    for path in tmp_path.glob("store.sqlite3*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path
    store.close()


def test_a_decisions_columns_from_its_event_are_those_its_line_gives() -> None:
    from broker.audit.records import AuditEvent, ChainHeader, encode_line
    from broker.audit.store import decision_columns

    event = AuditEvent(
        time="2026-11-28T10:00:00.000Z",
        request_id="r",
        outcome="issued",
        code="issued",
        status=200,
        caller="billing",
        auth_method="client_key",
        external_user_id="u1",
        audience=AUDIENCE_URL,
        token_sha256="ab" * 32,
        token_id="jti-1",
        cache="hit",
    )
    header = ChainHeader(v=1, type="decision", instance="a", seq=1, prev="0" * 64)
    line = encode_line(header, msgspec.json.encode(event))
    assert decision_columns(event) == row_of(line, "audit-a-000001.jsonl").columns
    assert None not in decision_columns(event)


def test_a_large_batch_goes_in_whole_in_statements_of_a_few_sizes(store: AuditStore) -> None:
    # 256 + 64 + 16 + 4 + 1 rows, then a batch overlapping it: each row once, none lost.
    assert store.insert(_rows("big", range(1, 342))) == 341
    assert store.insert(_rows("big", range(300, 700))) == 358
    assert len(store._insert_statements) <= 5
    with store._connection() as connection:
        seqs = [
            seq
            for (seq,) in connection.execute(
                "SELECT seq FROM audit_records WHERE instance = 'big' ORDER BY seq"
            )
        ]
    assert seqs == list(range(1, 700))


def test_a_new_embedded_store_has_large_pages_and_an_old_one_keeps_its_own(
    tmp_path: Path,
) -> None:
    import sqlite3

    from broker.audit.store import SQLITE_PAGE_SIZE

    def page_size(path: Path) -> int:
        with sqlite3.connect(path) as connection:
            return int(connection.execute("PRAGMA page_size").fetchone()[0])

    new = AuditStore.sqlite(tmp_path / "new.sqlite3")
    new.migrate()
    new.insert(_rows("a", range(1, 3)))
    new.close()
    assert page_size(tmp_path / "new.sqlite3") == SQLITE_PAGE_SIZE == 16_384

    # A store made before: 4 KiB pages, WAL, rows in it. Opening it changes nothing.
    old_path = tmp_path / "old.sqlite3"
    with sqlite3.connect(old_path) as connection:
        connection.execute("PRAGMA page_size=4096")
        connection.execute("PRAGMA journal_mode=WAL")
    old = AuditStore.sqlite(old_path)
    old.migrate()
    old.insert(_rows("a", range(1, 3)))
    old.close()
    reopened = AuditStore.sqlite(old_path)
    assert reopened.insert(_rows("a", range(1, 5))) == 2
    assert reopened.last_position("a") == (4, "audit-a-000001.jsonl")
    reopened.close()
    assert page_size(old_path) == 4096


def test_the_write_ahead_log_stays_small_under_many_commits(tmp_path: Path) -> None:
    from broker.audit.store import SQLITE_PAGE_SIZE, SQLITE_WAL_PAGES

    path = tmp_path / "store.sqlite3"
    store = AuditStore.sqlite(path)
    store.migrate()
    padding = "x" * 600  # about a hit's line
    seq = 0
    # 80 commits of 100 rows: about 8 MB through the log, which SQLite's default (1000
    # pages, 16 MB here) would keep in one growing file.
    for _ in range(80):
        store.insert(_rows("a", range(seq + 1, seq + 101), reason=padding))
        seq += 100
    wal = path.with_name(path.name + "-wal").stat().st_size
    # What the log may hold before a checkpoint, plus the commit that went past it (each
    # frame is a page and a 24-byte header; the file has a 32-byte one).
    assert wal <= 2 * SQLITE_WAL_PAGES * (SQLITE_PAGE_SIZE + 24) + 32
    assert store.last_position("a") == (8000, "audit-a-000001.jsonl")
    store.close()


def _bytes_written() -> int:
    # What this process has passed to write(2) and its kin, page cache or not.
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/self/io")


def test_an_insert_writes_its_pages_to_the_log_and_the_file_and_nowhere_else(
    tmp_path: Path,
) -> None:
    # A statement journal (a temp file of every page a statement changes, to undo it half
    # done) had more than doubled what an insert wrote: 6.6 times what the file grew.
    path = tmp_path / "store.sqlite3"
    store = AuditStore.sqlite(path)
    store.migrate()
    padding = "x" * 600  # about a hit's line
    store.insert(_rows("a", range(1, 501), reason=padding))
    size_before, written_before = path.stat().st_size, _bytes_written()
    for start in range(501, 10_501, 500):
        store.insert(_rows("a", range(start, start + 500), reason=padding))
    written = _bytes_written() - written_before
    grown = path.stat().st_size - size_before
    store.close()
    # Each page goes through the write-ahead log, then into the file: twice what the file
    # grew, and the pages each commit rewrites (the B-trees' last leaves). Measured: 3.1x.
    assert grown > 0
    assert written < 4 * grown, (written, grown)


def test_find_token_also_finds_the_record_that_says_the_token_was_withheld(
    store: AuditStore,
) -> None:
    from broker.audit.records import WITHHELD_CODE

    store.insert(_rows("a", range(1, 2), tokenSha256="cd" * 32, tokenId="j1", requestId="r"))
    store.insert(
        _rows(
            "a",
            range(2, 3),
            outcome="failed",
            code=WITHHELD_CODE,
            tokenSha256="cd" * 32,
            tokenId="j1",
            requestId="r",
        )
    )
    # Another failure that names the token's fingerprint is not about handing it out.
    store.insert(_rows("a", range(3, 4), outcome="failed", code="upstream_error", tokenId="j1"))
    found = store.find_token(sha256="cd" * 32)
    assert [(r["seq"], r["outcome"], m) for r, m in found] == [
        (1, "issued", "tokenSha256"),
        (2, "failed", "tokenSha256"),
    ]
    assert [r["seq"] for r, _ in store.find_token(jti="j1")] == [1, 2]


@pytest.mark.parametrize("edited", [b"not json", b'{"x":' + b"[" * 3000 + b"]" * 3000 + b"}"])
def test_a_row_edited_into_a_line_that_is_no_record_is_a_store_data_error(
    store: AuditStore, edited: bytes
) -> None:
    store.insert(_rows("a", range(1, 3), tokenSha256="cd" * 32))
    with store._connection() as connection:
        connection.execute("UPDATE audit_records SET line = ? WHERE seq = 2", (edited,))
    for read in (
        lambda: store.page(StoreFilters(), limit=10, before=None),
        lambda: store.query(StoreFilters()),
        lambda: store.find_token(sha256="cd" * 32),
    ):
        with pytest.raises(StoreDataError, match="not a JSON object"):
            read()


@pytest.mark.parametrize(
    ("url", "said"),
    [
        (
            "postgresql://u:s3cret-pw@[bad/db",
            'matching "]" in IPv6 host address in URI: "<the URL>"',
        ),
        ("postgresql://u:s3cret-pw@h/db?colour=red", 'invalid URI query parameter: "colour"'),
        ("mysql://u:s3cret-pw@h/db", "must start with postgresql://"),
    ],
)
def test_a_url_libpq_cannot_read_is_said_without_the_url(url: str, said: str) -> None:
    # libpq quotes the URL in its error, password and all.
    problem = url_problem(url)
    assert problem is not None
    assert said in problem
    assert "s3cret" not in problem
    with pytest.raises(StoreError) as refused:
        open_url(url)
    assert "s3cret" not in str(refused.value)


def test_a_url_libpq_reads_has_no_problem() -> None:
    assert url_problem("postgresql://broker:pw@db.internal:5432/audit?sslmode=require") is None


def test_check_config_refuses_a_malformed_store_url_with_exit_2_and_no_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from broker.cli import main

    settings = tmp_path / "broker.toml"
    settings.write_text(
        '[upstream]\napi_key_env = "CHECK_MKA1_KEY"\n\n[audit]\nsink = "file"\n'
        f'dir = "{tmp_path / "audit"}"\n\n'
        '[audit.store]\nbackend = "postgresql"\nurl_env = "CHECK_STORE_URL"\n'
    )
    monkeypatch.setenv("CHECK_MKA1_KEY", "mka1_check_key")
    monkeypatch.setenv("CHECK_STORE_URL", "postgresql://u:s3cret-pw@[bad/db")
    assert main(["check-config", str(settings)]) == 2
    said = capsys.readouterr().err
    assert "audit.store.url_env: the audit store URL is not one PostgreSQL reads" in said
    assert "s3cret" not in said


def test_a_row_longer_than_any_line_is_never_fetched_whole(
    store: AuditStore, tmp_path: Path
) -> None:
    # Put there by hand: a page of 500 such rows was read whole into the broker's memory.
    import sqlite3

    store.insert(_rows("a", range(1, 4), outcome="issued", code="issued"))
    huge = b'{"v":1,"type":"decision","x":"' + b"x" * (1024 * 1024) + b'"}'
    with sqlite3.connect(tmp_path / "store.sqlite3") as connection:
        connection.execute("UPDATE audit_records SET line = ? WHERE seq = 2", (huge,))
    with pytest.raises(StoreDataError, match="longer than 1048576 bytes"):
        store.page(StoreFilters(), limit=10, before=None)
    with pytest.raises(StoreDataError, match="longer than 1048576 bytes"):
        store.query(StoreFilters())
    with pytest.raises(StoreDataError, match="instance 'a' seq 2: the store holds a line longer"):
        list(store.chain("a"))
    # The rows around it are read as ever.
    assert [stored.seq for stored in store.chain("a", last=1)] == [1]


# SQLite keeps what a hand edit puts in a column, whatever its declared type: every reader
# that meets such a value says where the store was edited, and none computes with it
# (int('abc') was a ValueError; bytes(1000000000), an integer line whose length() is that of
# its ten digits, a gigabyte of zeros).
_LINE_READERS = frozenset({"chain", "page", "query"})
# The edit, and which readers meet it (a page and a query read only the line; a chain does
# not reach a seq of text, which sorts after every number).
_EDITED_COLUMNS = {
    "line as text": ("line", "CAST(line AS TEXT)", _LINE_READERS),
    "line as an integer": ("line", "1000000000", _LINE_READERS),
    "line as a float": ("line", "1.5", _LINE_READERS),
    "seq as text": ("seq", "'abc'", {"instances", "files_of"}),
    # Neither the first nor the last seq: only the walk of the chain meets it.
    "seq as a float": ("seq", "2.5", {"chain"}),
    "file as a blob": ("file", "x'07'", {"chain", "files_of"}),
    "line_sha256 as a blob": ("line_sha256", "x'00'", {"chain"}),
}
_SAID = {
    "line": "a line that is not bytes (edited)",
    "seq": "a seq of instance 'a' that is not an integer (edited)",
    "file": "a file column",
    "line_sha256": "a line_sha256 column at instance 'a' seq 2 that is not text (edited)",
}


def _readers(store: AuditStore) -> dict[str, Callable[[], object]]:
    return {
        "chain": lambda: list(store.chain("a")),
        "page": lambda: store.page(StoreFilters(), limit=10, before=None),
        "query": lambda: store.query(StoreFilters()),
        "instances": store.instances,
        "files_of": lambda: store.files_of("a"),
    }


@pytest.mark.parametrize("edit", sorted(_EDITED_COLUMNS))
def test_a_column_of_another_type_is_an_edit_named_by_every_reader(
    store: AuditStore, tmp_path: Path, edit: str
) -> None:
    import sqlite3

    column, value, meet = _EDITED_COLUMNS[edit]
    store.insert(_rows("a", range(1, 4), outcome="issued", code="issued"))
    with sqlite3.connect(tmp_path / "store.sqlite3") as connection:
        connection.execute(f"UPDATE audit_records SET {column} = {value} WHERE seq = 2")  # noqa: S608
    for name, read in _readers(store).items():
        if name in meet:
            with pytest.raises(StoreDataError) as refused:
                read()
            assert _SAID[column] in str(refused.value), name
            continue
        read()


def _revocation_rows(instance: str, times: list[str]) -> list[Row]:
    return [
        row_of(
            _line(instance, seq, type="revocation", time=at, action="bar", value=f"u{seq}"),
            f"audit-{instance}-000001.jsonl",
        )
        for seq, at in enumerate(times, 1)
    ]


def test_revocation_lines_are_the_newest_oldest_first(store: AuditStore) -> None:
    store.insert(_rows("a", range(1, 4)))
    store.insert(_revocation_rows("b", ["2026-12-07T10:00:00.002Z", "2026-12-07T10:00:00.009Z"]))
    store.insert(_revocation_rows("c", ["2026-12-07T10:00:00.005Z"]))
    values = [json.loads(line)["value"] for line in store.revocation_lines(2)]
    assert values == ["u2", "u1"]  # b's second (at .009), then c's (at .005)
    # In pages, each after the last: every line once, in order.
    paged = [json.loads(line) for line in store.revocation_lines(10, page=1)]
    assert [(r["instance"], r["seq"]) for r in paged] == [("b", 2), ("c", 1), ("b", 1)]
    assert len(list(store.revocation_lines(2, page=1))) == 2


def test_a_revocation_row_longer_than_any_revocation_record_is_passed_over(
    store: AuditStore, tmp_path: Path
) -> None:
    """Put there by hand: a starting replica reads up to 40,000 of these, and a line may be
    1 MiB; as long as a revocation record can be is all it takes in."""
    store.insert(_revocation_rows("b", ["2026-12-07T10:00:00.002Z", "2026-12-07T10:00:00.009Z"]))
    long = b'{"v":1,"type":"revocation","x":"' + b"x" * (32 * 1024) + b'"}'
    with sqlite3.connect(tmp_path / "store.sqlite3") as connection:
        connection.execute("UPDATE audit_records SET line = ? WHERE seq = 2", (long,))
    assert [json.loads(line)["seq"] for line in store.revocation_lines(10)] == [1]


def test_the_revocation_index_is_made_by_any_migration_and_not_as_a_schema_version(
    tmp_path: Path,
) -> None:
    """An index an older broker does not mind: a version would have made an older broker
    (a rollback) refuse the store, and stop its shipping."""
    path = tmp_path / "s.sqlite3"
    store = AuditStore.sqlite(path)
    store.migrate()

    def indexes() -> set[str]:
        with sqlite3.connect(path) as db:
            found = db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
            return {str(name) for (name,) in found}

    assert "audit_records_revocation" in indexes()
    # A store made by a broker before this index: the next migration adds it, at version 2.
    with sqlite3.connect(path) as db:
        db.execute("DROP INDEX audit_records_revocation")
    assert AuditStore.sqlite(path).migrate() == SCHEMA_VERSION == 2
    assert "audit_records_revocation" in indexes()


def test_a_store_not_made_yet_holds_no_revocation_record(tmp_path: Path) -> None:
    # The first start of a deployment: its replicas read the bars before any shipping has
    # made the schema, which is no reason to warn that the trail could not be read.
    assert list(AuditStore.sqlite(tmp_path / "new.sqlite3").revocation_lines(10)) == []


def test_a_store_not_made_yet_shows_no_chain_running(tmp_path: Path) -> None:
    # The first start of a deployment names the chains running beside it before any
    # shipping has made the schema: none, not a failure ("no such table" logged at start).
    since = datetime.now(UTC) - timedelta(minutes=1)
    assert AuditStore.sqlite(tmp_path / "new.sqlite3").recent_heads(since, 256) == []


_ENDLESS_ROWS = (
    "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT 'a' AS instance, "
    "x AS seq, 'audit-a-000001.jsonl' AS file, 'decision' AS type, "
    "'2026-11-28T10:00:00.000Z' AS time, NULL AS outcome, NULL AS code, NULL AS caller, "
    "NULL AS auth_method, NULL AS external_user_id, NULL AS audience, NULL AS token_sha256, "
    "NULL AS token_id, NULL AS cache, '0' AS line_sha256, x'7b7d' AS line, 0.0 AS stored_at "
    "FROM n"
)

_FOREIGN_OBJECTS = {
    # Made before any broker opened the file: a table of that name then never is.
    "an endless view": ("view", "audit_records", f"CREATE VIEW audit_records AS {_ENDLESS_ROWS}"),
    "a trigger": (
        "trigger",
        "t",
        "CREATE TABLE audit_records (instance TEXT, seq BIGINT); "
        "CREATE TRIGGER t AFTER INSERT ON audit_records BEGIN DELETE FROM audit_records; END",
    ),
    "a virtual table": (
        "virtual table",
        "audit_retained",
        "CREATE VIRTUAL TABLE audit_retained USING fts5(x)",
    ),
}


@pytest.mark.parametrize("made", sorted(_FOREIGN_OBJECTS))
def test_a_store_holding_what_no_broker_makes_is_refused_unread_by_every_caller(
    tmp_path: Path, made: str
) -> None:
    kind, name, sql = _FOREIGN_OBJECTS[made]
    path = tmp_path / "store.sqlite3"
    with sqlite3.connect(path) as connection:
        connection.executescript(sql)
    said = f"it holds a {kind} named {name!r}, which no broker makes"
    for call in ("migrate", "insert", "chain", "query", "instances"):
        store = AuditStore.sqlite(path)
        calls: dict[str, Callable[[], object]] = {
            "migrate": store.migrate,
            "insert": functools.partial(store.insert, _rows("a", range(1, 3))),
            **_readers(store),
        }
        with pytest.raises(StoreDataError, match="no broker makes") as refused:
            calls[call]()
        assert said in str(refused.value), call
        store.close()


def test_a_store_the_broker_made_is_no_foreign_object(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    made = AuditStore.sqlite(path)
    made.migrate()
    made.insert(_rows("a", range(1, 3)))
    made.close()
    again = AuditStore.sqlite(path)
    assert [summary.instance for summary in again.instances()] == ["a"]
    again.close()


def _delete(path: Path) -> None:
    for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
        (path.parent / name).unlink(missing_ok=True)


def _replace(path: Path) -> None:
    other = AuditStore.sqlite(path.parent / "other.sqlite3")
    other.migrate()
    other.close()
    # A restore done right: the old file's write-ahead log goes with it (SQLite would
    # apply it to whatever file has the name).
    _delete(path)
    (path.parent / "other.sqlite3").replace(path)


def _delete_directory(path: Path) -> None:
    import shutil

    shutil.rmtree(path.parent)


@pytest.mark.parametrize("lose", [_delete, _replace, _delete_directory])
def test_a_store_file_lost_while_open_is_said_once_then_made_again_empty(
    tmp_path: Path, lose: Callable[[Path], None]
) -> None:
    # SQLite went on writing into the unlinked file: rows nothing could ever read again.
    path = tmp_path / "store" / "store.sqlite3"
    store = AuditStore.sqlite(path)
    store.migrate()
    store.insert(_rows("a", range(1, 4)))
    lose(path)
    with pytest.raises(StoreError, match="the file was deleted or replaced while open"):
        store.insert(_rows("a", range(4, 6)))
    assert store.remade == 1
    store.migrate()
    assert store.insert(_rows("a", range(4, 6))) == 2
    assert [line.seq for line in store.chain("a")] == [4, 5]
    store.close()
    reopened = AuditStore.sqlite(path)
    assert [line.seq for line in reopened.chain("a")] == [4, 5]  # on disk, under its name
    reopened.close()
    assert store.remade == 1


def test_the_chains_running_are_each_ones_newest_line_read_without_the_window(
    store: AuditStore,
) -> None:
    def at(minute: int) -> str:
        return f"2026-11-28T10:{minute:02d}:00.000Z"

    store.insert(_rows("a", range(1, 6), time=at(0)))  # quiet since 10:00
    store.insert(_rows("b", range(1, 4), time=at(5)))
    store.insert(_rows("c", range(1, 4), time=at(3)) + _rows("c", range(4, 5), time=at(9)))
    # A chain that wrote a great deal within the window: each of its lines was read once
    # a heartbeat by every replica (the time index's range), where its newest one is enough.
    busy = 20_000
    store.insert(_rows("d", range(1, busy + 1), time=at(8)))
    since = datetime(2026, 11, 28, 10, 4, tzinfo=UTC)

    def head(instance: str, seq: int, minute: int) -> tuple[str, int, str]:
        line = _line(instance, seq, time=at(minute))
        return instance, seq, hashlib.sha256(line).hexdigest()

    heads, steps = _sqlite_work(store, lambda: store.recent_heads(since, 256))
    assert [(h.instance, h.seq, h.hash) for h in heads] == [
        head("b", 3, 5),
        head("c", 4, 9),
        head("d", busy, 8),
    ]
    # SQLite's own count of the work, in thousands of instructions: a few seeks per chain,
    # not a step per line of the window (the time index's range took 260 thousand here).
    assert steps < 20, steps
    assert [h.instance for h in store.recent_heads(since, 2)] == ["b", "c"]
    assert store.recent_heads(datetime(2026, 11, 28, 10, 10, tzinfo=UTC), 256) == []


def _witness_rows(instance: str, seqs: range, chains: list[dict[str, object]]) -> list[Row]:
    return _rows(instance, seqs, type="witness", chains=chains)


def test_witnessing_records_come_a_page_at_a_time_each_once_in_chain_order(
    store: AuditStore,
) -> None:
    store.insert(
        _rows("a", range(1, 3), type="start", witnessed=[])
        + _witness_rows("a", range(3, 8), [])
        + _rows("a", range(8, 10))
    )
    store.insert(_rows("b", range(1, 4)) + _witness_rows("b", range(4, 6), []))
    store.insert(_rows("c", range(1, 4)))  # a chain without any
    pages = list(store.witnessing_records(page=2))
    assert [[(r["instance"], r["seq"]) for r in page] for page in pages] == [
        [("a", 1), ("a", 2)],
        [("a", 3), ("a", 4)],
        [("a", 5), ("a", 6)],
        [("a", 7)],
        [("b", 4), ("b", 5)],
    ]
    # No connection is held between pages: the caller looks lines up meanwhile (SQLite's
    # lock is not reentrant, so a held one would hang this).
    for _ in store.witnessing_records(page=1):
        assert store.line_sha256s("c", [1]) == {1: _rows("c", range(1, 2))[0].line_sha256}


def test_witnessing_records_of_an_empty_store_are_none(tmp_path: Path) -> None:
    assert list(AuditStore.sqlite(tmp_path / "new.sqlite3").witnessing_records()) == []


def test_line_hashes_are_looked_up_many_a_statement(store: AuditStore) -> None:
    rows = _rows("a", range(1, 1201))
    store.insert(rows)
    wanted = [*range(0, 1300, 2), 1200, 1200]
    statements: list[str] = []
    connection = store._sqlite_connection()
    connection.set_trace_callback(statements.append)
    found = store.line_sha256s("a", wanted)
    connection.set_trace_callback(None)
    assert found == {seq: rows[seq - 1].line_sha256 for seq in set(wanted) if 1 <= seq <= 1200}
    assert len(statements) == 2  # 650 distinct seqs: 500 a statement, not one each
    assert store.line_sha256s("a", []) == {}
    assert store.line_sha256s("nobody", [1, 2]) == {}


def test_matching_reads_a_page_at_a_time_in_order_and_ties_break_by_instance_and_seq(
    store: AuditStore,
) -> None:
    # Many lines share a time (a busy replica writes several a millisecond, and replicas
    # write at the same moments): the keyset must neither skip nor repeat any of them.
    for instance in ("b", "a", "c"):
        store.insert(_rows(instance, range(1, 8), time="2026-11-28T10:00:00.000Z"))
    store.insert(_rows("a", range(8, 11), time="2026-11-28T09:00:00.000Z"))
    everything = [(r["instance"], r["seq"]) for r in store.query(StoreFilters())]
    assert everything[:3] == [("a", 8), ("a", 9), ("a", 10)]
    assert everything[3:] == [(i, s) for i in ("a", "b", "c") for s in range(1, 8)]
    for page in (1, 2, 4, 24, 25, 1000):
        paged = [(r["instance"], r["seq"]) for r in store.matching(StoreFilters(), page=page)]
        assert paged == everything, page
    assert [r["seq"] for r in store.query(StoreFilters(instance="c"), limit=3)] == [1, 2, 3]
    # No connection is held between pages: the caller may use the store meanwhile.
    for record in store.matching(StoreFilters(instance="b"), page=2):
        assert store.last_position("b") == (7, "audit-b-000001.jsonl"), record


def test_a_page_of_refusals_reads_the_refusals_not_every_issued_record_between_them(
    store: AuditStore,
) -> None:
    issued = 30_000
    store.insert(
        [
            row_of(
                _line(
                    "a",
                    seq,
                    time=f"2026-11-28T10:{seq // 1000:02d}:{seq % 1000 // 20:02d}.{seq % 20:03d}Z",
                    outcome="denied" if seq % 5000 == 0 else "issued",
                ),
                "audit-a-000001.jsonl",
            )
            for seq in range(1, issued + 1)
        ]
    )
    records, steps = _two_pages(store, StoreFilters(outcome="denied"), 4)
    assert [r["seq"] for r in records] == [
        30_000,
        25_000,
        20_000,
        15_000,
        10_000,
        5000,
    ]
    # SQLite's count of the work, in thousands of instructions: the six refusals through
    # their own index (the time index's range passed over 30,000 issued records: 270).
    assert steps < 20, steps
    assert [r["seq"] for r in store.matching(StoreFilters(outcome="denied"), page=2)] == [
        5000, 10_000, 15_000, 20_000, 25_000, 30_000
    ]  # fmt: skip
    assert len(store.query(StoreFilters(outcome="issued"))) == issued - 6


def test_a_page_of_one_chain_is_read_in_time_order_not_sorted_whole(store: AuditStore) -> None:
    # Two replicas' chains side by side; a page of one of them.
    for instance in ("a", "b"):
        store.insert(
            [
                row_of(
                    _line(
                        instance, seq, time=f"2026-11-28T10:{seq // 1000:02d}:00.{seq % 1000:03d}Z"
                    ),
                    f"audit-{instance}-000001.jsonl",
                )
                for seq in range(1, 15_001)
            ]
        )
    records, steps = _two_pages(store, StoreFilters(instance="b"), 3)
    assert [(r["instance"], r["seq"]) for r in records] == [
        ("b", seq) for seq in range(15_000, 14_994, -1)
    ]
    # SQLite's count of the work, in thousands of instructions: a few seeks, where the
    # primary key read the chain's 15,000 rows and sorted them for each page (660).
    assert steps < 20, steps


def test_a_retention_plan_is_bounded_in_rows_and_in_chains(
    store: AuditStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = "2026-11-28T10:00:00.000Z", "2026-11-28T12:00:00.000Z"
    store.insert(_rows("a", range(1, 11), time=old))
    store.insert(_rows("b", range(1, 4), time=old) + _rows("b", range(4, 6), time=new))
    store.insert(_rows("c", range(1, 4), time=new))
    cutoff = "2026-11-28T11:00:00.000Z"

    def cuts(**bounds: int) -> list[tuple[str, int, int, int]]:
        plan = store.retention_plan(cutoff, **bounds)
        return [(cut.instance, cut.first_seq, cut.last_seq, cut.rows) for cut in plan]

    assert cuts(max_rows=4) == [("a", 1, 4, 4)]
    assert cuts(max_rows=12) == [("a", 1, 10, 10), ("b", 1, 2, 2)]
    assert cuts(max_rows=100) == [("a", 1, 10, 10), ("b", 1, 3, 3)]
    monkeypatch.setattr(audit_store, "RETENTION_PASS_CHAINS", 1)
    assert cuts(max_rows=100) == [("a", 1, 10, 10)]
    plan = store.retention_plan(cutoff)
    assert plan[0].last_hash == _rows("a", range(10, 11), time=old)[0].line_sha256
