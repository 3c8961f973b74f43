"""The audit store: every replica's chain in one indexed place that auditors query.

SQLite (stdlib, WAL) under ``audit.dir`` by default; PostgreSQL (psycopg 3) for a deployment
whose replicas all ship into one database. One schema for both, created and migrated at
start. Each row keeps its record's exact line bytes beside the columns that readers filter
on: a chain verifies from the store as it does from its files, and a column edited in the
store no longer matches its line.

Synchronous on purpose: the CLI uses it as it is, the server on the store's own threads
(never the loop's default executor, which the audit writer's fsync needs: a hung database
must not take the file chain down with it).
"""

# SQL here is built only from this module's constants (table, column and clause names);
# every value a caller gives travels as a bound parameter.
# ruff: noqa: S608
from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import operator
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec

from broker.audit.records import (
    MAX_LINE_BYTES,
    WITHHELD_CODE,
    AuditEvent,
    ChainPosition,
    RetainedRange,
)
from broker.decoding import decode_untrusted
from broker.observability import url_passwords

SCHEMA_TABLE = "broker_audit_schema"
RECORDS = "audit_records"
RETAINED = "audit_retained"
# Row columns that readers filter on, each taken from the line's field of the same meaning.
INDEXED = (
    ("type", "type"),
    ("time", "time"),
    ("outcome", "outcome"),
    ("code", "code"),
    ("caller", "caller"),
    ("auth_method", "authMethod"),
    ("external_user_id", "externalUserId"),
    ("audience", "audience"),
    ("token_sha256", "tokenSha256"),
    ("token_id", "tokenId"),
    ("cache", "cache"),
)
_COLUMNS = ("instance", "seq", "file", *(c for c, _ in INDEXED), "line_sha256", "line", "stored_at")
# Rows a multi-row INSERT: fewer, longer statements cost less a row. A batch goes in
# statements of these sizes, largest first, so that only a few distinct statements are ever
# built and prepared; each within the server's limit on parameters a statement (SQLite's is
# its build's, 999 before 3.32; PostgreSQL's is 65535). Measured in bench/RESULTS.md.
_INSERT_SIZES = (256, 64, 16, 4, 1)
_POSTGRES_PARAMETERS = 65_535
SQLITE_PAGE_SIZE = 16_384
# Pages the embedded store's write-ahead log may hold before SQLite copies them into the
# database (its default is 1000: 16 MB at our page size). Under load a pass's commit is
# larger than this, so each pass is checkpointed as it commits and the log is reused from its
# start, instead of growing to 16 MB and being copied in one go every few passes. Same CPU in
# isolation; beside the event loop, cache hits' p99 10-25% lower (bench/notes.md).
SQLITE_WAL_PAGES = 100
# What the writer puts in every line: shipping refuses lines that differ, so that every row's
# time sorts as a time and every page's cursor is one that CURSOR_PATTERN describes.
TIME_PATTERN = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z"
INSTANCE_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}"
CURSOR_PATTERN = rf"^({TIME_PATTERN})~({INSTANCE_PATTERN})~(\d{{1,18}})\Z"
_TIME = re.compile(TIME_PATTERN)
INSTANCE = re.compile(INSTANCE_PATTERN)
_CURSOR = re.compile(CURSOR_PATTERN)
_DECODER = msgspec.json.Decoder(dict[str, Any])
_ENCODER = msgspec.json.Encoder()


class StoreError(Exception):
    """The store could not answer; the message is safe to log (no URL, no password)."""


class StoreDataError(StoreError):
    """The store holds something a record cannot be: a conflicting row, a malformed cursor."""


# A row's line, if it is no longer than a line can be: a row of a gigabyte, put there by
# hand, is never fetched (a page of 500 such rows would have been read whole into memory).
_LINE = f"CASE WHEN length(line) <= {MAX_LINE_BYTES} THEN line END"
# The distinct instances the store holds, each the next one after the last: a seek each
# through the primary key, however many rows each chain has.
_CHAINS = f"""WITH RECURSIVE chains(instance) AS (
    SELECT min(instance) FROM {RECORDS}
    UNION ALL
    SELECT (SELECT min(instance) FROM {RECORDS} AS later WHERE later.instance > chains.instance)
    FROM chains WHERE chains.instance IS NOT NULL
)"""
_TOO_LONG = f"the store holds a line longer than {MAX_LINE_BYTES} bytes (edited)"
# A revocation record's line: a value of at most 2048 characters and a reason of 500, each
# escaped at most 6 bytes to a character, and the rest.
MAX_REVOCATION_LINE_BYTES = 32 * 1024


def _stored_line(line: object, where: str = "") -> bytes:
    """A row's line as the store gave it. SQLite keeps whatever a hand edit puts in a column,
    whatever its declared type: text, a float, or an integer, whose ``length()`` is that of
    its digits, so that 1000000000 passed the length bound and ``bytes()`` of it was a
    gigabyte of zeros."""
    if isinstance(line, bytes):
        return line
    if isinstance(line, memoryview):
        return line.tobytes()
    if line is None:
        raise StoreDataError(f"{where}{_TOO_LONG}")
    raise StoreDataError(f"{where}the store holds a line that is not bytes (edited)")


def _readable_line(line: object) -> bytes | None:
    """A row's line, or None where ``_stored_line`` would refuse it."""
    try:
        return _stored_line(line)
    except StoreDataError:
        return None


def _stored_int(value: object, what: str) -> int:
    """An integer column as the store gave it; int() would refuse 'abc' with a ValueError,
    and round 2.5 to a seq that the row does not hold."""
    if type(value) is int:
        return value
    raise StoreDataError(f"the store holds {what} that is not an integer (edited)")


def _stored_text(value: object, what: str) -> str:
    if type(value) is str:
        return value
    raise StoreDataError(f"the store holds {what} that is not text (edited)")


def _stored(line: object) -> dict[str, Any]:
    """A row's line as its record. Shipping stores only lines that are records: anything
    else was put there by hand (``broker audit verify --database`` says where)."""
    try:
        return decode_untrusted(_DECODER, _stored_line(line))
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise StoreDataError("the store holds a line that is not a JSON object (edited)") from None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


class Row(msgspec.Struct, frozen=True):
    """One record as the store keeps it (a Struct: one per shipped record, on the thread
    that competes with the event loop; a frozen dataclass's __init__ cost 1.3 us)."""

    instance: str
    seq: int
    file: str
    columns: tuple[str | None, ...]
    line_sha256: str
    line: bytes

    def values(self, stored_at: float) -> tuple[object, ...]:
        return (
            self.instance,
            self.seq,
            self.file,
            *self.columns,
            self.line_sha256,
            self.line,
            stored_at,
        )


class LineError(ValueError):
    pass


# A decision's columns straight from its event (the writer has it; nothing to parse): each
# column after ``type`` is named as the AuditEvent attribute it comes from.
_EVENT_COLUMNS = operator.attrgetter(*(column for column, _ in INDEXED[1:]))


def decision_columns(event: AuditEvent) -> tuple[str | None, ...]:
    """A decision's indexed columns: what parsing its line would give."""
    return ("decision", *_EVENT_COLUMNS(event))


# Only the fields a row indexes: decoding skips the rest of the line (a third of the time of
# decoding it whole). Any type: a field of another type is a NULL column, as
# ``as_columns`` makes it.
_Indexed = msgspec.defstruct(
    "_Indexed",
    [("instance", Any, None), ("seq", Any, None), *((field, Any, None) for _, field in INDEXED)],
)
_INDEXED_DECODER = msgspec.json.Decoder(_Indexed)


def writes_position(instance: str, seq: int) -> bool:
    """Whether a writer can write a line with this instance id and seq."""
    return INSTANCE.fullmatch(instance) is not None and 0 < seq < 10**18


def line_fields(line: bytes) -> tuple[Any, ...]:
    """A line's instance, seq and indexed fields, as decoded (of any type), the rest of the
    line skipped; LineError if it is not a JSON object."""
    try:
        return msgspec.structs.astuple(decode_untrusted(_INDEXED_DECODER, line))
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise LineError("not a JSON object") from None


def as_columns(fields: Sequence[object]) -> tuple[str | None, ...]:
    """Indexed fields as the store's columns keep them: a field that is not text is NULL."""
    return tuple(_text(value) for value in fields)


def row_of(line: bytes, file: str) -> Row:
    """The store's row for one line of a chain file."""
    instance, seq, *fields = line_fields(line)
    if not isinstance(instance, str) or not isinstance(seq, int) or isinstance(seq, bool):
        raise LineError("no instance and seq")
    if not writes_position(instance, seq):
        raise LineError("an instance id or seq the writer never writes")
    columns = as_columns(fields)
    if columns[0] is None or columns[1] is None or _TIME.fullmatch(columns[1]) is None:
        raise LineError("no type, or no time as the writer writes it")
    return Row(instance, seq, file, columns, hashlib.sha256(line).hexdigest(), line)


# --- reading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreFilters:
    subject: str | None = None
    audience: str | None = None
    caller: str | None = None
    outcome: str | None = None
    token_sha256: str | None = None
    token_id: str | None = None
    instance: str | None = None
    cache: str | None = None
    since: datetime | None = None
    until: datetime | None = None


_EQUALS = (
    ("external_user_id", "subject"),
    ("audience", "audience"),
    ("caller", "caller"),
    ("outcome", "outcome"),
    ("token_sha256", "token_sha256"),
    ("token_id", "token_id"),
    ("instance", "instance"),
    ("cache", "cache"),
)


def record_time(moment: datetime) -> str:
    """A time as records carry it (UTC, milliseconds, Z): such strings sort as times."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class Position:
    """Where a newest-first page stopped: the last record's time, instance and seq."""

    time: str
    instance: str
    seq: int

    def cursor(self) -> str:
        return f"{self.time}~{self.instance}~{self.seq}"

    @classmethod
    def from_cursor(cls, cursor: str) -> Position:
        match = _CURSOR.fullmatch(cursor)
        if match is None:
            raise StoreDataError("not a cursor from a previous page")
        return cls(match.group(1), match.group(2), int(match.group(3)))


@dataclass(frozen=True)
class StoredPage:
    records: list[dict[str, Any]]
    next: Position | None


@dataclass(frozen=True)
class InstanceSummary:
    instance: str
    first_seq: int
    last_seq: int
    rows: int
    first_time: str
    last_time: str


@dataclass(frozen=True)
class StoredLine:
    seq: int
    file: str
    columns: tuple[str | None, ...]
    line_sha256: str
    line: bytes


# --- dialects -----------------------------------------------------------------------------


class _Connection(Protocol):
    def execute(self, sql: str, params: Sequence[object] = ...) -> Any: ...


@dataclass(frozen=True)
class Dialect:
    name: Literal["sqlite", "postgresql"]
    placeholder: str
    blob: str
    # Times and instances compare byte by byte, whatever the database's locale.
    collate: str

    def sql(self, text: str) -> str:
        return text.replace("?", self.placeholder)


SQLITE = Dialect("sqlite", "?", "BLOB", "")
POSTGRESQL = Dialect("postgresql", "%s", "BYTEA", ' COLLATE "C"')


def _migrations(dialect: Dialect) -> list[list[str]]:
    """Versioned schema changes, applied in order, each once, in one transaction."""
    c = dialect.collate
    return [
        [
            f"""CREATE TABLE {RECORDS} (
                instance TEXT{c} NOT NULL,
                seq BIGINT NOT NULL,
                file TEXT NOT NULL,
                type TEXT NOT NULL,
                time TEXT{c} NOT NULL,
                outcome TEXT, code TEXT, caller TEXT, auth_method TEXT,
                external_user_id TEXT, audience TEXT, token_sha256 TEXT, token_id TEXT,
                cache TEXT,
                line_sha256 TEXT NOT NULL,
                line {dialect.blob} NOT NULL,
                stored_at DOUBLE PRECISION NOT NULL,
                PRIMARY KEY (instance, seq)
            )""",
            f"CREATE INDEX audit_records_time ON {RECORDS} (time, instance, seq)",
            f"CREATE INDEX audit_records_subject ON {RECORDS} (external_user_id, time)",
            f"CREATE INDEX audit_records_caller ON {RECORDS} (caller, time)",
            f"CREATE INDEX audit_records_audience ON {RECORDS} (audience, time)",
            f"CREATE INDEX audit_records_token_sha256 ON {RECORDS} (token_sha256)",
            f"CREATE INDEX audit_records_token_id ON {RECORDS} (token_id)",
        ],
        [
            # Where retention cut each chain: shipping never sends those records again.
            f"""CREATE TABLE {RETAINED} (
                instance TEXT{c} PRIMARY KEY,
                last_seq BIGINT NOT NULL,
                deleted_at DOUBLE PRECISION NOT NULL
            )""",
            # Partial: only the few retention records; an index on every row's type would
            # tempt the planner away from the token and subject indexes.
            f"CREATE INDEX audit_records_retention ON {RECORDS} (seq) WHERE type = 'retention'",
        ],
    ]


SCHEMA_VERSION = 2

# Rows one retention pass deletes at most (its plan, its record, its one transaction): well
# within the store's statement timeout (5 s; 4 million rows took 2.7 s to delete on the
# test PostgreSQL, which does not sync). A larger backlog takes more passes.
RETENTION_PASS_ROWS = 50_000
# And chains a pass names at most: its record names each one's cut (about 250 bytes), and a
# line is at most 1 MiB (MAX_LINE_BYTES).
RETENTION_PASS_CHAINS = 1000

# The refusals index's condition, which a query repeats word for word: SQLite uses a partial
# index only for a query that has its condition as a term (``outcome = 'denied'`` implies it,
# but SQLite does not reason so).
_NOT_ISSUED = "outcome <> 'issued'"

# Indexes that no query of an older broker needs and none minds, made (if absent) with every
# migration rather than as a schema version: an older broker refuses a newer version, so a
# rollback to it would have stopped its shipping for the sake of an index.
# Each is looked for first: CREATE INDEX takes a lock that holds every replica's inserts back,
# even when IF NOT EXISTS then finds it made.
_ADDITIVE_INDEXES = (
    (
        # Partial, as the retention one: the few revocation records, read at each start.
        "audit_records_revocation",
        f"CREATE INDEX IF NOT EXISTS audit_records_revocation ON {RECORDS} "
        "(time, instance, seq) WHERE type = 'revocation'",
    ),
    (
        # One chain's records in time order (GET /audit/events?instance=). SQLite knows no
        # chain's share of the rows, and took the primary key and sorted the whole chain
        # for every page: 0.4 s for a third of 2 million rows here, a page.
        "audit_records_instance_time",
        f"CREATE INDEX IF NOT EXISTS audit_records_instance_time ON {RECORDS} "
        "(instance, time, seq)",
    ),
    (
        # Partial: the decisions that issued nothing, a small share of them, in time order.
        # Without it a query for an outcome but "issued" read the time index and passed
        # over every issued record between two matches: a page of 50 refusals one in
        # 10,000 read half a million rows (0.2 s here), one in a million, fifty million.
        "audit_records_refusals",
        f"CREATE INDEX IF NOT EXISTS audit_records_refusals ON {RECORDS} "
        f"(time, instance, seq) WHERE {_NOT_ISSUED}",
    ),
)


def _identity(path: Path) -> tuple[int, int] | None:
    """The file ``path`` names now, as (device, inode); None if none."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _refuse_foreign_objects(connection: sqlite3.Connection, description: str) -> None:
    """Refuse an SQLite file holding what no broker makes: a view, a trigger or a virtual
    table. The file is anyone's with the disk, and SQLite has no statement timeout: a view
    named audit_records over a recursive query is endless, and ``query`` and ``export`` read
    it until interrupted; a trigger runs its own SQL inside the broker's inserts. Tables and
    indexes hold only rows, which every reader checks (and ``verify`` against the chain)."""
    # Functions in a schema run only if innocuous, whatever a build's default.
    connection.execute("PRAGMA trusted_schema=OFF")
    for kind, name, sql in connection.execute("SELECT type, name, sql FROM sqlite_master"):
        if (
            kind == "table"
            and isinstance(sql, str)
            and sql.lstrip()[:14].upper() == "CREATE VIRTUAL"
        ):
            kind = "virtual table"
        elif kind in ("table", "index"):
            continue
        shown = name[:64] if isinstance(name, str) else "?"
        raise StoreDataError(
            f"audit store ({description}): it holds a {kind} named {shown!r}, which no broker "
            "makes: refused unread (a view or trigger can run without end)"
        )


def _redact(message: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return message.splitlines()[0][:300] if message else "error"


class AuditStore:
    """One database: SQLite file or PostgreSQL URL. Thread-safe; each call is short."""

    def __init__(
        self,
        dialect: Dialect,
        *,
        sqlite_path: Path | None = None,
        url: str | None = None,
        timeout_seconds: float = 5.0,
        pool_size: int = 4,
        read_only: bool = False,
    ) -> None:
        self.dialect = dialect
        self._sqlite_path = sqlite_path
        self._url = url
        self._timeout = timeout_seconds
        self._pool_size = pool_size
        # SQLite: one connection, one call at a time (it serialises writers anyway).
        self._sqlite: sqlite3.Connection | None = None
        # The file the connection has open, as (device, inode): a path that names another
        # file, or none, is a store deleted or replaced while open (see _sqlite_connection).
        self._sqlite_file: tuple[int, int] | None = None
        # The auditor's commands: never a write (see _sqlite_reader, _postgres_options).
        self._read_only = read_only
        # How many times the SQLite file was found gone and made again (empty): the shipping
        # then ships every chain again from the files.
        self.remade = 0
        self._sqlite_lock = threading.Lock()
        self._pool: Any = None
        self._single: Any = None
        # What a driver's error must not show: the URL (the whole one first), its password.
        self._secrets = (url, *url_passwords(url)) if url else ()
        # A multi-row INSERT per chunk size, built once.
        self._insert_statements: dict[int, str] = {}

    @classmethod
    def sqlite(
        cls, path: Path, *, timeout_seconds: float = 5.0, read_only: bool = False
    ) -> AuditStore:
        return cls(SQLITE, sqlite_path=path, timeout_seconds=timeout_seconds, read_only=read_only)

    @classmethod
    def postgresql(
        cls, url: str, *, timeout_seconds: float = 5.0, pool_size: int = 4, read_only: bool = False
    ) -> AuditStore:
        return cls(
            POSTGRESQL,
            url=url,
            timeout_seconds=timeout_seconds,
            pool_size=pool_size,
            read_only=read_only,
        )

    @property
    def description(self) -> str:
        """Where the store is, without credentials."""
        if self.dialect is SQLITE:
            return f"sqlite:{self._sqlite_path}"
        return f"postgresql:{_host_of(self._url or '')}"

    # --- connections ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        try:
            if self.dialect is SQLITE:
                with self._sqlite_lock:
                    yield self._sqlite_connection()
            elif self._pool_size == 1:
                # One command's worth of queries (the CLI): one connection, no pool thread.
                with self._sqlite_lock:
                    try:
                        yield self._postgres_single()
                    except Exception:
                        self._drop_single()
                        raise
            else:
                with self._postgres_pool().connection(timeout=self._timeout) as connection:
                    yield connection
        except StoreError:
            raise
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"audit store ({self.description}): {exc}") from None
        except Exception as exc:
            if _is_driver_error(exc):
                detail = _redact(str(exc), self._secrets)
                raise StoreError(f"audit store ({self.description}): {detail}") from None
            raise

    def _sqlite_connection(self) -> sqlite3.Connection:
        assert self._sqlite_path is not None
        connection = self._sqlite
        if self._read_only:
            if connection is None:
                connection = self._sqlite = self._sqlite_reader()
            return connection
        if connection is not None and self._sqlite_file != _identity(self._sqlite_path):
            # Deleted (or its directory), or renamed over: SQLite went on writing into the
            # unlinked file, and nothing that reads the store by its name (a query, a backup)
            # saw a row of it. Said once; the next call makes the store again.
            self._sqlite = None
            connection.close()
            self.remade += 1
            raise StoreError(
                f"audit store ({self.description}): the file was deleted or replaced while "
                "open; an empty one is made and every chain shipped again from the audit files"
            )
        if connection is None:
            self._sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            # As private as the chain files (0640): end users and callers are in it. SQLite
            # gives its -wal and -shm files the database file's mode.
            fd = os.open(self._sqlite_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o640)
            os.close(fd)
            connection = self._sqlite_opened(str(self._sqlite_path), uri=False)
            # Pages of 16 KiB (SQLite's default is 4): an insert of a batch touches fewer
            # pages of the table and its seven B-trees, 28% less CPU a row (bench/notes.md).
            # Only a new, empty file takes it; an existing store keeps the pages it has.
            connection.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
            connection.execute("PRAGMA journal_mode=WAL")
            # The files are the durable record; the store is its index, rebuilt from them.
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(f"PRAGMA wal_autocheckpoint={SQLITE_WAL_PAGES}")
            self._sqlite_file = _identity(self._sqlite_path)
            self._sqlite = connection
        return connection

    def _sqlite_reader(self) -> sqlite3.Connection:
        """The file as it is, never written: a store kept as evidence (a copy, a read-only
        mount, a file made immutable) reads the same afterwards. Opened as the broker opens
        it, a read was refused where the file could not be opened for writing, and a store
        in rollback-journal mode was turned to write-ahead logging. Read-only first (a live
        store: SQLite then reads each page the broker has committed); where even that cannot
        be (a write-ahead log's shared memory file cannot be made beside it), as immutable,
        which a file nothing can write to is."""
        assert self._sqlite_path is not None
        uri = self._sqlite_path.resolve().as_uri()
        try:
            return self._sqlite_opened(uri + "?mode=ro", uri=True)
        except sqlite3.OperationalError as exc:
            # Only where it cannot be opened at all: a store that is busy ("locked") is a
            # live one, which immutable would read without its locks, half written.
            if getattr(exc, "sqlite_errorname", "") != "SQLITE_CANTOPEN":
                raise
            return self._sqlite_opened(uri + "?mode=ro&immutable=1", uri=True)

    def _sqlite_opened(self, target: str, *, uri: bool) -> sqlite3.Connection:
        """A connection to ``target`` (a path, or a file: URI) whose schema holds nothing
        foreign (its first read), for the broker and the auditor's commands alike."""
        connection = sqlite3.connect(
            target, uri=uri, timeout=self._timeout, isolation_level=None, check_same_thread=False
        )
        try:
            _refuse_foreign_objects(connection, self.description)
        except BaseException:
            connection.close()
            raise
        return connection

    def _postgres_options(self) -> dict[str, Any]:
        milliseconds = int(self._timeout * 1000)
        seconds = max(1, int(self._timeout))
        return {
            "connect_timeout": seconds,
            # statement_timeout is the server's: across a network that drops every packet
            # (a partition, a server host gone without a reset), a call waited for an
            # answer for ever, a store thread or the shipping process with it. Unanswered
            # keepalives, or data unacknowledged for twice the timeout, end the connection.
            "keepalives": 1,
            "keepalives_idle": seconds,
            "keepalives_interval": 1,
            "keepalives_count": 3,
            "tcp_user_timeout": 2 * milliseconds,
            "options": f"-c statement_timeout={milliseconds} "
            f"-c lock_timeout={milliseconds} "
            f"-c idle_in_transaction_session_timeout={milliseconds * 2}"
            # Read-only by the server's own rule: the tools that check the trail cannot change it.
            + (" -c default_transaction_read_only=on" if self._read_only else ""),
            "application_name": "mka1-token-broker",
        }

    def _postgres_single(self) -> Any:
        if self._single is None:
            import psycopg

            assert self._url is not None
            self._single = psycopg.connect(self._url, autocommit=True, **self._postgres_options())
        return self._single

    def _drop_single(self) -> None:
        single, self._single = self._single, None
        if single is not None:
            with contextlib.suppress(Exception):
                single.close()

    def _postgres_pool(self) -> Any:
        if self._pool is None:
            from psycopg_pool import ConnectionPool

            assert self._url is not None
            self._pool = ConnectionPool(
                self._url,
                min_size=0,
                max_size=self._pool_size,
                timeout=self._timeout,
                kwargs=self._postgres_options(),
                open=True,
                name="audit-store",
            )
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        self._drop_single()
        with self._sqlite_lock:
            if self._sqlite is not None:
                self._sqlite.close()
                self._sqlite = None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Any]:
        with self._connection() as connection:
            if self.dialect is SQLITE:
                connection.execute("BEGIN IMMEDIATE")
                try:
                    yield connection
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
                connection.execute("COMMIT")
            else:
                with connection.transaction():
                    yield connection

    def _execute(self, connection: _Connection, sql: str, params: Sequence[object] = ()) -> Any:
        return connection.execute(self.dialect.sql(sql), params)

    # --- schema -----------------------------------------------------------------------------

    def migrate(self) -> int:
        """Bring the schema to this version; return the version found before. Safe to run
        from every replica at once (one waits for the other's transaction)."""
        with self._transaction() as connection:
            if self.dialect is POSTGRESQL:
                # Any fixed number: replicas starting together take turns.
                self._execute(connection, "SELECT pg_advisory_xact_lock(7411)")
            self._execute(
                connection,
                f"CREATE TABLE IF NOT EXISTS {SCHEMA_TABLE} "
                "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)",
            )
            found = self._execute(connection, f"SELECT max(version) FROM {SCHEMA_TABLE}")
            before = found.fetchone()[0] or 0
            if before > SCHEMA_VERSION:
                raise StoreDataError(
                    f"audit store schema version {before} is newer than this broker's "
                    f"{SCHEMA_VERSION}: upgrade the broker"
                )
            for version, statements in enumerate(_migrations(self.dialect), start=1):
                if version <= before:
                    continue
                for statement in statements:
                    self._execute(connection, statement)
                self._execute(
                    connection,
                    f"INSERT INTO {SCHEMA_TABLE} (version, applied_at) VALUES (?, ?)",
                    (version, time.time()),
                )
            for name, statement in _ADDITIVE_INDEXES:
                if not self._has(connection, "index", name):
                    self._execute(connection, statement)
        return int(before)

    def _has(self, connection: _Connection, kind: Literal["index", "table"], name: str) -> bool:
        if self.dialect is POSTGRESQL:
            found = self._execute(connection, "SELECT to_regclass(?)", (name,)).fetchone()
            return found[0] is not None
        found = self._execute(
            connection, "SELECT 1 FROM sqlite_master WHERE type = ? AND name = ?", (kind, name)
        ).fetchone()
        return found is not None

    # --- writing ----------------------------------------------------------------------------

    def _insert_sql(self, count: int) -> str:
        sql = self._insert_statements.get(count)
        if sql is None:
            group = "(" + ", ".join("?" for _ in _COLUMNS) + ")"
            values = ", ".join(group for _ in range(count))
            if self.dialect is SQLITE:
                # Not ON CONFLICT DO NOTHING: that leaves the NOT NULL columns' ABORT, so a
                # statement of many rows could fail half done, and SQLite first copies every
                # page it changes into a statement journal (a temp file) to undo it: 47% of
                # the bytes an insert wrote (bench/notes.md). OR IGNORE fails no row half
                # way (an I/O error rolls the whole transaction back); a row it skipped for
                # a NULL is one fewer inserted, checked below like a conflict (and Row has
                # no NULL to give).
                verb, new_only = "INSERT OR IGNORE INTO", ""
            else:
                verb, new_only = "INSERT INTO", " ON CONFLICT (instance, seq) DO NOTHING"
            sql = self.dialect.sql(
                f"{verb} {RECORDS} ({', '.join(_COLUMNS)}) VALUES {values}{new_only}"
            )
            self._insert_statements[count] = sql
        return sql

    def _chunks(self, connection: Any, rows: Sequence[Row]) -> Iterator[Sequence[Row]]:
        if self.dialect is SQLITE:
            limit = int(connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
        else:
            limit = _POSTGRES_PARAMETERS
        sizes = [size for size in _INSERT_SIZES if size * len(_COLUMNS) <= limit]
        start = 0
        for size in sizes:
            while len(rows) - start >= size:
                yield rows[start : start + size]
                start += size

    def insert(self, rows: Sequence[Row]) -> int:
        """Store rows idempotently (instance, seq); return how many were new. A row already
        there with other bytes is a conflict: StoreDataError, nothing stored."""
        if not rows:
            return 0
        now = time.time()
        by_instance: dict[str, list[Row]] = {}
        for row in rows:
            by_instance.setdefault(row.instance, []).append(row)
        with self._transaction() as connection:
            cursor = connection.cursor()
            added = 0
            for chunk in self._chunks(connection, rows):
                # One statement for the chunk, not one per row: SQLite then runs the whole
                # insert with the GIL released, where a row at a time took the GIL back and
                # forth with the server's event loop (bench/notes.md).
                cursor.execute(
                    self._insert_sql(len(chunk)),
                    [value for row in chunk for value in row.values(now)],
                )
                # Both drivers report the rows an INSERT inserted (conflicts: none).
                added += int(max(cursor.rowcount, 0))
            if added == len(rows):
                # Every row was new: none can differ from what the store holds.
                return added
            for instance, group in by_instance.items():
                low, high = group[0].seq, group[-1].seq
                stored = dict(
                    self._execute(
                        connection,
                        f"SELECT seq, line_sha256 FROM {RECORDS} "
                        "WHERE instance = ? AND seq BETWEEN ? AND ?",
                        (instance, low, high),
                    ).fetchall()
                )
                for row in group:
                    if stored.get(row.seq) != row.line_sha256:
                        raise StoreDataError(
                            f"the store holds another record for instance {instance!r} seq "
                            f"{row.seq}: two writers share that instance id, or the store "
                            "was edited"
                        )
        return added

    def retained_through(self, instance: str) -> int:
        """The last seq of ``instance`` that retention deleted from the store (0: none)."""
        with self._connection() as connection:
            return self._retained_through(connection, instance)

    def _retained_through(self, connection: _Connection, instance: object) -> int:
        found = self._execute(
            connection, f"SELECT last_seq FROM {RETAINED} WHERE instance = ?", (instance,)
        ).fetchone()
        return _stored_int(found[0], "a retained seq") if found else 0

    def _chain_names(self, connection: _Connection) -> list[object]:
        """Every instance the store holds rows of (``_CHAINS``: a seek each)."""
        rows = self._execute(
            connection, f"{_CHAINS} SELECT instance FROM chains WHERE instance IS NOT NULL"
        ).fetchall()
        return [instance for (instance,) in rows]

    def retention_plan(
        self, cutoff: str, *, max_rows: int = RETENTION_PASS_ROWS
    ) -> list[RetainedRange]:
        """For each chain whose first row is older than ``cutoff``, its oldest records up to
        the last one older than ``cutoff`` among its next ``max_rows``, until the plan holds
        ``max_rows`` rows or ``RETENTION_PASS_CHAINS`` chains: always a prefix of what the
        store holds, so the rest still verifies. Bounded, so that one pass's statements stay
        within the store's timeout however large the backlog: the whole backlog in one plan
        read the time index's range (3.5 s of PostgreSQL's 5 for 4 million rows here) and
        deleted it in one statement, and past that failed every hour, for good. Each chain
        is found through the primary key."""
        plan: list[RetainedRange] = []
        room = max_rows
        with self._connection() as connection:
            for instance in self._chain_names(connection):
                if room <= 0 or len(plan) >= RETENTION_PASS_CHAINS:
                    break
                # From where retention last cut it: PostgreSQL keeps a deleted row's index
                # entries until a vacuum, and a scan from the chain's start walked every one
                # (750,000 of them after 15 passes here, past the statement timeout).
                head = self._execute(
                    connection,
                    f"SELECT seq, time FROM {RECORDS} WHERE instance = ? AND seq > ? "
                    "ORDER BY seq LIMIT 1",
                    (instance, self._retained_through(connection, instance)),
                ).fetchone()
                where = f"of instance {instance!r}"
                if head is None or _stored_text(head[1], f"a time {where}") >= cutoff:
                    continue  # its oldest row is recent: a seek, not a look at its rows
                first = head[0]
                older = self._execute(
                    connection,
                    f"SELECT max(seq) FROM (SELECT seq, time FROM {RECORDS} "
                    "WHERE instance = ? AND seq >= ? ORDER BY seq LIMIT ?) AS oldest "
                    "WHERE time < ?",
                    (instance, first, room, cutoff),
                ).fetchone()
                if older[0] is None:
                    continue  # nothing of it is past retention among its oldest rows
                last = older[0]
                rows = self._execute(
                    connection,
                    f"SELECT count(*) FROM {RECORDS} WHERE instance = ? AND seq >= ? AND seq <= ?",
                    (instance, first, last),
                ).fetchone()[0]
                digest = self._line_sha256(connection, instance, last)
                if digest is None:
                    continue  # deleted meanwhile (another replica's retention)
                plan.append(
                    RetainedRange(
                        instance=_stored_text(instance, "an instance"),
                        first_seq=_stored_int(first, f"a seq {where}"),
                        last_seq=_stored_int(last, f"a seq {where}"),
                        last_hash=digest,
                        rows=_stored_int(rows, "a count"),
                    )
                )
                room -= rows
        return plan

    def delete_retained(self, ranges: Sequence[RetainedRange]) -> int:
        """Delete each range (as a retention record has already said) and remember where
        each chain was cut; return the rows deleted."""
        deleted = 0
        now = time.time()
        with self._transaction() as connection:
            for cut in ranges:
                cursor = self._execute(
                    connection,
                    f"DELETE FROM {RECORDS} WHERE instance = ? AND seq >= ? AND seq <= ?",
                    (cut.instance, cut.first_seq, cut.last_seq),
                )
                deleted += max(cursor.rowcount, 0)
                self._execute(
                    connection,
                    f"INSERT INTO {RETAINED} (instance, last_seq, deleted_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (instance) DO UPDATE SET last_seq = excluded.last_seq, "
                    "deleted_at = excluded.deleted_at "
                    f"WHERE {RETAINED}.last_seq < excluded.last_seq",
                    (cut.instance, cut.last_seq, now),
                )
        return deleted

    def retention_records(self) -> list[dict[str, Any]]:
        """Every retention record the store holds (their chains vouch for them)."""
        with self._connection() as connection:
            rows = self._execute(
                connection, f"SELECT {_LINE} FROM {RECORDS} WHERE type = 'retention' ORDER BY seq"
            ).fetchall()
        return [_stored(row[0]) for row in rows]

    def recent_heads(self, since: datetime, limit: int) -> list[ChainPosition]:
        """The newest line of each chain whose newest line is from ``since`` on (at most
        ``limit`` chains, by instance; a running broker signs a heartbeat at least every
        audit.heartbeat_seconds, idle or not): what a replica that starts now sees running
        beside it, and names in its start record and its witness records, so that a chain
        deleted whole later is found missing.

        Found through the primary key, a seek or two per chain the store holds, whatever the
        traffic: the time index's range over the last two heartbeats held every line of
        every replica written meanwhile (640 ms for a million lines in SQLite here, and a
        7 MiB step in the broker's memory), read at every heartbeat by every replica. The
        seeks grow with the chains the store holds (retention removes ended ones with their
        rows): 10,000 ended chains beside three running ones cost 0.1 s a call on
        PostgreSQL here, once a heartbeat."""
        # The distinct instances, each the next one after the last (a seek each), then each
        # one's newest line by its key: one statement, so one round trip to a remote store.
        newest = f"""
            {_CHAINS}
            SELECT line.instance, line.seq, line.line_sha256
            FROM chains JOIN {RECORDS} AS line ON line.instance = chains.instance
                AND line.seq = (SELECT max(seq) FROM {RECORDS} AS own
                                WHERE own.instance = chains.instance)
            WHERE line.time >= ? ORDER BY line.instance LIMIT ?"""
        with self._connection() as connection:
            if not self._has(connection, "table", RECORDS):
                return []  # not made yet (the first start of a deployment): none running
            rows = self._execute(connection, newest, (record_time(since), limit)).fetchall()
        return [
            ChainPosition(
                instance=_stored_text(instance, "an instance column"),
                seq=_stored_int(seq, f"a seq of instance {instance!r}"),
                hash=_stored_text(digest, f"a line_sha256 of instance {instance!r}"),
            )
            for instance, seq, digest in rows
        ]

    def witnessing_records(self, *, page: int = 500) -> Iterator[list[dict[str, Any]]]:
        """Every start and witness record the store holds (their chains vouch for them), a
        page at a time, chain by chain, and no connection held between pages (the caller
        looks lines up meanwhile). A replica writes one each heartbeat: ten replicas hold a
        quarter of a million after 90 days, and read at once 100,000 of them held 590 MiB
        here. Each page is read through the primary key (its chain's rows after the last
        page's), whatever a planner makes of so rare a type."""
        with self._connection() as connection:
            if not self._has(connection, "table", RECORDS):
                return
            chains = self._chain_names(connection)
        for instance in chains:
            after = 0
            while True:
                with self._connection() as connection:
                    found = self._execute(
                        connection,
                        f"SELECT seq, {_LINE} FROM {RECORDS} WHERE instance = ? AND seq > ? "
                        "AND type IN ('start', 'witness') ORDER BY seq LIMIT ?",
                        (instance, after, page),
                    ).fetchall()
                if found:
                    yield [_stored(line) for _, line in found]
                if len(found) < page:
                    break
                after = _stored_int(found[-1][0], f"a seq of instance {instance!r}")

    def line_sha256s(self, instance: str, seqs: Iterable[int]) -> dict[int, str]:
        """The line_sha256 of each of ``instance``'s rows in ``seqs`` that the store holds:
        a statement for up to 500 of them, not a round trip each."""
        wanted = sorted(set(seqs))
        held: dict[int, str] = {}
        with self._connection() as connection:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                rows = self._execute(
                    connection,
                    f"SELECT seq, line_sha256 FROM {RECORDS} WHERE instance = ? "
                    f"AND seq IN ({', '.join('?' * len(chunk))})",
                    (instance, *chunk),
                ).fetchall()
                for seq, digest in rows:
                    where = f"of instance {instance!r}"
                    held[_stored_int(seq, f"a seq {where}")] = _stored_text(
                        digest, f"a line_sha256 {where}"
                    )
        return held

    def revocation_lines(self, limit: int, *, page: int = 1000) -> Iterator[bytes]:
        """The lines of the newest ``limit`` revocation records (bars, lifts, write-backs),
        newest first: what the kill switch was told, for a replica that finds the shared
        store has lost it. Read a page at a time, and a line longer than any revocation
        record is left out (a hand edit), so that what the store holds cannot make a reader
        hold more than a page of short lines. Consume it on the store's own thread."""
        line = f"CASE WHEN length(line) <= {MAX_REVOCATION_LINE_BYTES} THEN line END"
        before: tuple[object, ...] | None = None
        with self._connection() as connection:
            if not self._has(connection, "table", RECORDS):
                return  # not made yet (the first start of a deployment): no record at all
            while limit > 0:
                where = "type = 'revocation'"
                if before is not None:
                    where += " AND (time, instance, seq) < (?, ?, ?)"
                rows = self._execute(
                    connection,
                    f"SELECT time, instance, seq, {line} FROM {RECORDS} WHERE {where} "
                    "ORDER BY time DESC, instance DESC, seq DESC LIMIT ?",
                    (*(before or ()), min(page, limit)),
                ).fetchall()
                for row in rows:
                    if (found := _readable_line(row[3])) is not None:
                        yield found
                if len(rows) < min(page, limit):
                    return
                limit -= len(rows)
                before = tuple(rows[-1][:3])

    def line_sha256_at(self, instance: str, seq: int) -> str | None:
        """The line_sha256 of ``instance``'s row ``seq``, or None if the store holds none."""
        with self._connection() as connection:
            return self._line_sha256(connection, instance, seq)

    def _line_sha256(self, connection: _Connection, instance: object, seq: object) -> str | None:
        found = self._execute(
            connection,
            f"SELECT line_sha256 FROM {RECORDS} WHERE instance = ? AND seq = ?",
            (instance, seq),
        ).fetchone()
        return None if found is None else _stored_text(found[0], "a line_sha256 column")

    def last_position(self, instance: str) -> tuple[int, str] | None:
        """The newest seq the store holds for ``instance``, and its file."""
        with self._connection() as connection:
            found = self._execute(
                connection,
                f"SELECT seq, file FROM {RECORDS} WHERE instance = ? ORDER BY seq DESC LIMIT 1",
                (instance,),
            ).fetchone()
        if found is None:
            return None
        return (
            _stored_int(found[0], f"a seq of instance {instance!r}"),
            _stored_text(found[1], f"a file column of instance {instance!r}"),
        )

    # --- reading ----------------------------------------------------------------------------

    def _where(self, filters: StoreFilters) -> tuple[list[str], list[object]]:
        clauses = ["type = 'decision'"]
        params: list[object] = []
        for column, name in _EQUALS:
            value = getattr(filters, name)
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if filters.outcome is not None and filters.outcome != "issued":
            clauses.append(_NOT_ISSUED)  # so that the refusals index serves it
        if filters.since is not None:
            clauses.append("time >= ?")
            params.append(record_time(filters.since))
        if filters.until is not None:
            clauses.append("time < ?")
            params.append(record_time(filters.until))
        return clauses, params

    def page(self, filters: StoreFilters, *, limit: int, before: Position | None) -> StoredPage:
        """Up to ``limit`` matching decisions, newest first, strictly after ``before`` in
        that order. Keyset paging: each page costs the same, however deep."""
        clauses, params = self._where(filters)
        if before is not None:
            clauses.append("(time, instance, seq) < (?, ?, ?)")
            params += [before.time, before.instance, before.seq]
        sql = (
            f"SELECT time, instance, seq, {_LINE} FROM {RECORDS} WHERE {' AND '.join(clauses)} "
            "ORDER BY time DESC, instance DESC, seq DESC LIMIT ?"
        )
        with self._connection() as connection:
            rows = self._execute(connection, sql, [*params, limit + 1]).fetchall()
        records = [_stored(row[3]) for row in rows[:limit]]
        last = rows[limit - 1] if len(rows) > limit else None
        following = (
            Position(
                _stored_text(last[0], "a time"),
                _stored_text(last[1], "an instance"),
                _stored_int(last[2], f"a seq of instance {last[1]!r}"),
            )
            if last is not None
            else None
        )
        return StoredPage(records, following)

    def query(self, filters: StoreFilters, *, limit: int | None = None) -> list[dict[str, Any]]:
        """Matching decisions, oldest first, as a list (see ``matching``)."""
        return list(itertools.islice(self.matching(filters), limit))

    def matching(self, filters: StoreFilters, *, page: int = 1000) -> Iterator[dict[str, Any]]:
        """Matching decisions, oldest first, read a page at a time (keyset, no connection
        held between pages): a broad query over a long trail held every match at once
        (a million matches from files took 2.3 GB here, the store's rows as much). Each
        record comes once, in order; one shipped meanwhile with a time before the page
        being read is left out, as one shipped just after a single read would be."""
        clauses, params = self._where(filters)
        after: list[object] = []
        while True:
            where = [*clauses, "(time, instance, seq) > (?, ?, ?)"] if after else clauses
            sql = (
                f"SELECT time, instance, seq, {_LINE} FROM {RECORDS} "
                f"WHERE {' AND '.join(where)} ORDER BY time, instance, seq LIMIT ?"
            )
            with self._connection() as connection:
                rows = self._execute(connection, sql, [*params, *after, page]).fetchall()
            for row in rows:
                yield _stored(row[3])
            if len(rows) < page:
                return
            after = list(rows[-1][:3])

    def find_token(
        self, *, sha256: str | None = None, jti: str | None = None
    ) -> list[tuple[dict[str, Any], str]]:
        """Issuance records of a token, by fingerprint or ``jti``, each with what matched;
        and the records that say such a token was withheld (``names_a_token``)."""
        found: list[tuple[dict[str, Any], str]] = []
        for column, field, value in (
            ("token_sha256", "tokenSha256", sha256.lower() if sha256 else None),
            ("token_id", "tokenId", jti),
        ):
            if value is None:
                continue
            sql = (
                f"SELECT {_LINE} FROM {RECORDS} WHERE {column} = ? AND type = 'decision' "
                "AND (outcome = 'issued' OR (outcome = 'failed' AND code = ?)) "
                "ORDER BY time, instance, seq"
            )
            with self._connection() as connection:
                rows = self._execute(connection, sql, (value, WITHHELD_CODE)).fetchall()
            found += [(_stored(row[0]), field) for row in rows]
        return found

    def instances(self) -> list[InstanceSummary]:
        sql = (
            f"SELECT instance, min(seq), max(seq), count(*), min(time), max(time), "
            f"max(stored_at) FROM {RECORDS} GROUP BY instance ORDER BY min(time), instance"
        )
        with self._connection() as connection:
            rows = self._execute(connection, sql).fetchall()
        return [_summary(r) for r in rows]

    def files_of(self, instance: str) -> list[tuple[str, int, int]]:
        """The files an instance's rows came from, in chain order: name, first and last seq."""
        sql = (
            f"SELECT file, min(seq), max(seq) FROM {RECORDS} WHERE instance = ? "
            "GROUP BY file ORDER BY min(seq)"
        )
        with self._connection() as connection:
            rows = self._execute(connection, sql, (instance,)).fetchall()
        where = f"a seq of instance {instance!r}"
        return [
            (
                _stored_text(r[0], f"a file column of instance {instance!r}"),
                _stored_int(r[1], where),
                _stored_int(r[2], where),
            )
            for r in rows
        ]

    def chain(
        self, instance: str, *, first: int = 0, last: int | None = None, batch: int = 5000
    ) -> Iterator[StoredLine]:
        """One instance's rows in seq order from ``first`` to ``last``, read ``batch`` at a
        time (keyset, so a chain of any length costs one batch of memory)."""
        columns = ", ".join(c for c, _ in INDEXED)
        after = first - 1
        end = last if last is not None else 2**62
        while True:
            sql = (
                f"SELECT seq, file, {columns}, line_sha256, {_LINE} FROM {RECORDS} "
                "WHERE instance = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?"
            )
            with self._connection() as connection:
                rows = self._execute(connection, sql, (instance, after, end, batch)).fetchall()
            for row in rows:
                seq, file, digest, line = row[0], row[1], row[_DIGEST], row[_DIGEST + 1]
                if not (
                    type(seq) is int
                    and type(file) is str
                    and type(digest) is str
                    and type(line) is bytes
                ):
                    # Said column by column only here: a verify walks millions of rows,
                    # and the messages cost more than the checks.
                    seq, file, digest, line = _chain_row(instance, row)
                yield StoredLine(
                    seq=seq,
                    file=file,
                    columns=tuple(row[2:_DIGEST]),
                    line_sha256=digest,
                    line=line,
                )
            if len(rows) < batch:
                return
            after = _stored_int(rows[-1][0], f"a seq of instance {instance!r}")


# Where a chain row's line_sha256 is (its line follows): after seq, file and the indexed columns.
_DIGEST = 2 + len(INDEXED)


def _chain_row(instance: str, row: Sequence[object]) -> tuple[int, str, str, bytes]:
    """A chain row's seq, file, line_sha256 and line, each checked for its type and named
    where it is not what a writer stores."""
    seq = _stored_int(row[0], f"a seq of instance {instance!r}")
    at = f"instance {instance!r} seq {seq}"
    return (
        seq,
        _stored_text(row[1], f"a file column at {at}"),
        _stored_text(row[_DIGEST], f"a line_sha256 column at {at}"),
        _stored_line(row[_DIGEST + 1], f"{at}: "),
    )


def _summary(row: Sequence[object]) -> InstanceSummary:
    instance = _stored_text(row[0], "an instance")
    where = f"of instance {instance!r}"
    stored_at = row[6]
    if (
        not isinstance(stored_at, int | float)
        or isinstance(stored_at, bool)
        or not math.isfinite(stored_at)
    ):
        # No shipper writes one (PostgreSQL takes inf and NaN): the store was edited. Only
        # checked: "quiet" is read from the signed checkpoints (store_verify), not from here.
        raise StoreDataError(
            f"the store holds a stored_at {where} that is not a finite number (edited)"
        )
    return InstanceSummary(
        instance,
        _stored_int(row[1], f"a seq {where}"),
        _stored_int(row[2], f"a seq {where}"),
        _stored_int(row[3], "a count"),
        # Shown, never compared: whatever the column holds, as text.
        str(row[4]),
        str(row[5]),
    )


def _is_driver_error(exc: Exception) -> bool:
    try:
        import psycopg
        import psycopg_pool
    except ImportError:  # pragma: no cover - a dependency of the package
        return False
    return isinstance(exc, psycopg.Error | psycopg_pool.PoolTimeout)


def _host_of(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        return f"{parts.hostname}:{parts.port or 5432}{parts.path}"
    except ValueError:
        return "?"


def url_problem(url: str) -> str | None:
    """Why libpq cannot read ``url`` as a PostgreSQL URL, without the URL itself (libpq
    quotes it, password and all), or None. Asked before any connection: a malformed URL
    is the settings' mistake, said at start, not a store that is away."""
    if not url.startswith(("postgresql://", "postgres://")):
        return "the audit store URL must start with postgresql://"
    from psycopg import conninfo

    try:
        conninfo.conninfo_to_dict(url)
    except Exception as exc:  # whatever the parser says of a hostile URL
        said = str(exc).replace(url, "<the URL>").strip().splitlines()
        return f"the audit store URL is not one PostgreSQL reads: {said[0] if said else '?'}"
    return None


def open_url(
    url: str, *, timeout_seconds: float = 5.0, pool_size: int = 4, read_only: bool = False
) -> AuditStore:
    """A PostgreSQL store from its URL (never printed: it may hold a password)."""
    if (problem := url_problem(url)) is not None:
        raise StoreError(problem)
    return AuditStore.postgresql(
        url, timeout_seconds=timeout_seconds, pool_size=pool_size, read_only=read_only
    )
