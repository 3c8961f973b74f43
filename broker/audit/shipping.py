"""Shipping: copy every chain in this replica's audit directory into the audit store.

The files stay the write-ahead record (what a token waits for); the shipper follows them
and copies complete lines into the store in batches, idempotently (instance, seq). It
resumes from what the store holds, reading the local files: after a restart, a crash or a
store outage nothing is lost and nothing is stored twice. Chains of earlier processes in the
same directory (a crash, a restart under a new instance id) are shipped too.

Issuance never waits for the store unless ``mode = "sync"``: an outage shows as a rising lag
(``broker_audit_ship_lag_records`` and ``_seconds``), one warning a minute and the readiness
detail, and shipping catches up by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog

from broker.audit.lineage import chains_in
from broker.audit.reader import MAX_LINE_BYTES, AuditFile, parse_name
from broker.audit.records import RecordType, RetentionBody
from broker.audit.store import (
    AuditStore,
    LineError,
    Row,
    StoreDataError,
    StoreError,
    record_time,
    row_of,
)
from broker.audit.writer import WrittenLine
from broker.clock import now_rfc3339_millis
from broker.metrics import Metrics
from broker.observability import EveryInterval
from broker.regular_files import open_regular

log = structlog.get_logger("broker.audit.shipping")

_YIELD_EVERY = 32
# Lines kept from the writer for shipping, at most (beyond: read from the files).
_MEMORY_ROWS = 50_000


class ChainStopped(Exception):
    """A chain cannot be shipped further as it is on disk; the message says where and why."""


@dataclass
class _Cursor:
    """Where shipping is in one chain: the file (by segment), the byte offset after the last
    shipped line, and the seq the next line must carry."""

    segment: int
    offset: int
    next_seq: int


@dataclass
class ShipStatus:
    up: bool = True
    shipped: int = 0
    lag_records: int = 0
    lag_seconds: float = 0.0
    error: str | None = None
    stopped: dict[str, str] = field(default_factory=dict)


# The longest pause after a batch: however long a batch kept the thread busy, a pass of
# many batches falls behind by no more than this each.
_MAX_PAUSE = 0.05


class Shipper:
    def __init__(
        self,
        store: AuditStore,
        directory: Path,
        own_instance: str,
        written_seq: Callable[[], int],
        *,
        executor: Executor,
        metrics: Metrics,
        batch_records: int = 500,
        min_interval_seconds: float = 0.05,
        retention_days: int | None = None,
        record: Callable[[RecordType, RetentionBody], Awaitable[None]] | None = None,
        retention_every_seconds: float = 3600.0,
        pause: Callable[[float], None] = time.sleep,
    ) -> None:
        self._pause = pause
        self._closing = False
        self._retention_days = retention_days
        self._record = record
        self._retention_every = retention_every_seconds
        self._retention_task: asyncio.Task[None] | None = None
        self._store = store
        self._dir = directory
        self._own = own_instance
        self._written_seq = written_seq
        self._executor = executor
        self._metrics = metrics
        self._batch = batch_records
        self._min_interval = min_interval_seconds
        self._migrated = False
        # Lines the writer handed over: (file, lines), oldest first (appended on the loop,
        # taken in the store's thread: deque operations are atomic).
        self._memory: deque[tuple[str, list[WrittenLine]]] = deque()
        self._memory_rows = 0
        self._memory_lock = threading.Lock()
        self._pass_lock = threading.Lock()
        self._cursors: dict[str, _Cursor] = {}
        self._stopped: dict[str, str] = {}
        self._own_shipped = 0
        self._caught_up_at = time.monotonic()
        self._wakeup = asyncio.Event()
        # Set by a reader waiting for its own records: cuts the pause between passes short.
        self._hurry = asyncio.Event()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self._warn = EveryInterval(60.0)
        self.status = ShipStatus()

    # --- the loop side ----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-shipper")
        if self._retention_days is not None and self._record is not None:
            self._retention_task = asyncio.create_task(self._retain(), name="audit-retention")

    async def _retain(self) -> None:
        while True:
            await asyncio.sleep(self._retention_every)
            try:
                await self.apply_retention()
            except StoreError as exc:
                log.warning("audit_retention_failed", error=str(exc))

    async def apply_retention(self, now: float | None = None) -> int:
        """Delete store rows older than ``retention_days`` (never the files): first a
        retention record in this replica's chain says what goes, then it goes. Without that
        record durable, nothing is deleted. Returns the rows deleted."""
        assert self._retention_days is not None
        assert self._record is not None
        moment = time.time() if now is None else now
        cutoff = record_time(datetime.fromtimestamp(moment - self._retention_days * 86_400, tz=UTC))
        loop = asyncio.get_running_loop()
        plan = await loop.run_in_executor(self._executor, self._store.retention_plan, cutoff)
        if not plan:
            return 0
        body = RetentionBody(time=now_rfc3339_millis(), cutoff=cutoff, ranges=plan)
        await self._record("retention", body)
        deleted = await loop.run_in_executor(self._executor, self._store.delete_retained, plan)
        log.info(
            "audit_retention_applied",
            cutoff=cutoff,
            chains=len(plan),
            rows=deleted,
        )
        return deleted

    def notify(self, file: str, lines: list[WrittenLine]) -> None:
        """New lines of this replica's chain are durable in ``file`` (called by the writer
        after each write). While shipping keeps up they are taken from here, not read back
        from the file; past a bound they are dropped, and the file is read instead."""
        if lines:
            with self._memory_lock:
                if self._memory_rows + len(lines) > _MEMORY_ROWS:
                    self._memory.clear()
                    self._memory_rows = 0
                self._memory.append((file, lines))
                self._memory_rows += len(lines)
        self._wakeup.set()

    async def shipped(self, seq: int) -> None:
        """Return once this instance's records up to ``seq`` are in the store (sync mode).
        Unbounded here: the writer's own deadline bounds the wait."""
        if self._own_shipped >= seq:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((seq, waiter))
        self._wakeup.set()
        self._hurry.set()
        await waiter

    async def close(self, *, final_pass: bool = True) -> None:
        """Stop; with ``final_pass``, try once more to ship what the files hold (the
        writer's seal among it), bounded by the store's own timeouts."""
        # No more pauses between batches (nor in a pass still running): shutdown waits.
        self._closing = True
        if self._retention_task is not None:
            self._retention_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retention_task
            self._retention_task = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if final_pass:
            with contextlib.suppress(StoreError):
                await self._pass()

    async def _run(self) -> None:
        backoff = 0.5
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._wakeup.wait()
            self._wakeup.clear()
            try:
                await self._pass()
            except StoreError as exc:
                self._down(str(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.5
            # Lines written meanwhile go in the next pass: one batch, not one per write. Not
            # while someone waits for this replica's records (GET /audit/events reads its
            # own writes, and each read writes a record): a reader would wait out the pause
            # on every page.
            if self._min_interval and not self._waiters:
                # A hurry from waiters this pass has released is spent (nothing awaited
                # since their release: no new waiter came in between).
                self._hurry.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._min_interval):
                        await self._hurry.wait()
            self._hurry.clear()

    async def _pass(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._ship_all)
        finally:
            self._update_status()
        if not self.status.up:
            log.info("audit_store_recovered", store=self._store.description)
        self.status.up = True
        self.status.error = None
        self._metrics.audit_store_up.set(1)

    def _down(self, error: str) -> None:
        self.status.up = False
        self.status.error = error
        self._metrics.audit_store_up.set(0)
        if self._warn.due("down"):
            log.warning(
                "audit_store_unreachable",
                store=self._store.description,
                error=error,
                lag_records=self.status.lag_records,
                lag_seconds=round(self.status.lag_seconds, 1),
            )

    def _update_status(self) -> None:
        written = self._written_seq()
        lag = max(0, written - self._own_shipped)
        now = time.monotonic()
        if lag == 0:
            self._caught_up_at = now
        self.status.lag_records = lag
        self.status.lag_seconds = 0.0 if lag == 0 else now - self._caught_up_at
        self.status.stopped = dict(self._stopped)
        self._metrics.audit_ship_lag_records.set(lag)
        self._metrics.audit_ship_lag_seconds.set(self.status.lag_seconds)
        remaining = []
        for seq, waiter in self._waiters:
            if waiter.done():
                continue
            if seq <= self._own_shipped:
                waiter.set_result(None)
            else:
                remaining.append((seq, waiter))
        self._waiters = remaining

    # --- the store thread -------------------------------------------------------------------

    def _ship_all(self) -> None:
        # A pass cancelled on the loop goes on in its thread: the next one waits for it.
        with self._pass_lock:
            self._ship_all_locked()

    def _ship_all_locked(self) -> None:
        if not self._migrated:
            before = self._store.migrate()
            self._migrated = True
            log.info("audit_store_ready", store=self._store.description, schema_was=before)
        for instance, files in chains_in(self._dir).items():
            if instance in self._stopped:
                continue
            try:
                self._ship_chain(instance, files)
            except ChainStopped as exc:
                self._stopped[instance] = str(exc)
                log.error("audit_chain_not_shipped", instance=instance, reason=str(exc))
            except StoreDataError as exc:
                self._stopped[instance] = str(exc)
                log.error("audit_chain_not_shipped", instance=instance, reason=str(exc))

    def _ship_chain(self, instance: str, files: list[AuditFile]) -> None:
        cursor = self._cursors.get(instance)
        if cursor is None:
            cursor = self._resume(instance, files)
            self._cursors[instance] = cursor
        while True:
            if instance == self._own:
                rows, after = self._from_memory(instance, cursor)
                if not rows:
                    rows, after = self._read(instance, files, cursor)
            else:
                rows, after = self._read(instance, files, cursor)
            if rows:
                started = time.thread_time()
                added = self._store.insert(rows)
                self.status.shipped += added
                self._metrics.audit_shipped_records.inc(added)
                if instance == self._own:
                    self._own_shipped = rows[-1].seq
                if self._min_interval and len(rows) >= self._batch and not self._closing:
                    # More may follow in this pass. Give the cores back for as long as this
                    # batch kept this thread busy (SQLite works on it; a server's own work
                    # is elsewhere): a pass at once, tens of ms under load, queued the
                    # requests behind it; at half duty the cache hits' p99 fell 10-25% in
                    # paired runs (bench/notes.md), at the same throughput. Async mode only
                    # (in sync mode tokens wait for these rows), and not while closing.
                    self._pause(min(time.thread_time() - started, _MAX_PAUSE))
            cursor.segment, cursor.offset, cursor.next_seq = (
                after.segment,
                after.offset,
                after.next_seq,
            )
            if not rows:
                return

    def _from_memory(self, instance: str, cursor: _Cursor) -> tuple[list[Row], _Cursor]:
        """The writer's lines that follow the cursor exactly, up to a batch, and where they
        end in their file; none if the next line is not among them (read the file then)."""
        rows: list[Row] = []
        at = _Cursor(cursor.segment, cursor.offset, cursor.next_seq)
        # Only the taking holds the lock: the writer's notify waits for it on the event
        # loop, so rows are made after (a pass's worth under it showed as the hits' p99).
        for file, lines in self._take_memory(cursor.next_seq):
            parsed = parse_name(Path(file))
            if parsed is None:
                break  # the rest is read from the files
            if parsed.segment != at.segment:
                at.segment, at.offset = parsed.segment, 0
            for written in lines:
                columns = written.columns
                if columns is None:
                    # Not a decision (a checkpoint, a start, a read): rare, parsed as read.
                    row = self._row(instance, parsed, written.line)
                else:
                    row = Row(instance, written.seq, file, columns, written.sha256, written.line)
                rows.append(row)
                at.offset += len(written.line) + 1
                at.next_seq = written.seq + 1
        return rows, at

    def _take_memory(self, next_seq: int) -> list[tuple[str, list[WrittenLine]]]:
        """The writer's groups of lines from ``next_seq`` on, in order, up to a batch: taken
        out (what is not shipped from them is read from the files)."""
        taken: list[tuple[str, list[WrittenLine]]] = []
        count = 0
        with self._memory_lock:
            memory = self._memory
            while memory and memory[0][1][-1].seq < next_seq:
                _, lines = memory.popleft()
                self._memory_rows -= len(lines)
            while memory and count < self._batch and memory[0][1][0].seq == next_seq:
                group = memory.popleft()
                self._memory_rows -= len(group[1])
                taken.append(group)
                count += len(group[1])
                next_seq = group[1][-1].seq + 1
        return taken

    def _resume(self, instance: str, files: list[AuditFile]) -> _Cursor:
        """Start after the newest record the store holds for this chain, or that retention
        deleted from it (never shipped again)."""
        stored = self._store.last_position(instance)
        retained = self._store.retained_through(instance)
        cursor = _Cursor(segment=files[0].segment, offset=0, next_seq=1)
        seq = max(stored[0] if stored is not None else 0, retained)
        if seq == 0:
            return cursor
        if instance == self._own:
            self._own_shipped = seq
        if stored is not None and stored[0] == seq:
            named = [f for f in files if f.path.name == stored[1]]
            if named:
                cursor.segment = named[0].segment
        for audit_file in files:
            if audit_file.segment < cursor.segment:
                continue
            cursor.segment = audit_file.segment
            cursor.offset = 0
            for end, line in _lines(audit_file.path, 0):
                row = self._row(instance, audit_file, line)
                if row.seq > seq:
                    cursor.next_seq = seq + 1
                    return cursor
                cursor.offset = end
        cursor.next_seq = seq + 1
        return cursor

    def _row(self, instance: str, audit_file: AuditFile, line: bytes) -> Row:
        try:
            row = row_of(line, audit_file.path.name)
        except LineError as exc:
            raise ChainStopped(
                f"{audit_file.path.name}: a line that is not a record: {exc}"
            ) from None
        if row.instance != instance:
            raise ChainStopped(
                f"{audit_file.path.name} seq {row.seq}: a line of instance {row.instance!r}"
            )
        return row

    def _read(
        self, instance: str, files: list[AuditFile], cursor: _Cursor
    ) -> tuple[list[Row], _Cursor]:
        """Up to a batch of lines after ``cursor``, and where they end. The caller moves its
        cursor only once the store has them."""
        rows: list[Row] = []
        at = _Cursor(cursor.segment, cursor.offset, cursor.next_seq)
        index = next((i for i, f in enumerate(files) if f.segment >= at.segment), None)
        if index is None:
            # The cursor is in a file newer than this pass's listing (the writer's lines
            # took it there): nothing to read yet.
            return rows, at
        if files[index].segment != at.segment:
            at.segment, at.offset = files[index].segment, 0
        rechecked = False
        while True:
            audit_file = files[index]
            for end, line in _lines(audit_file.path, at.offset):
                row = self._row(instance, audit_file, line)
                if row.seq != at.next_seq:
                    raise ChainStopped(
                        f"{audit_file.path.name}: seq {row.seq} where {at.next_seq} was "
                        "expected (records missing or out of order)"
                    )
                rows.append(row)
                at.offset, at.next_seq = end, row.seq + 1
                if len(rows) >= self._batch:
                    return rows, at
                if not len(rows) % _YIELD_EVERY:
                    # Let the event loop's thread have the GIL: a pass parses hundreds of
                    # lines, and holding it throughout shows as the requests' p99.
                    time.sleep(0)
            if index == len(files) - 1:
                return rows, at
            # The writer creates the next file before the rotation checkpoint that ends this
            # one, and writes into it only after: move on once it has a line, and only
            # after reading this file once more.
            if _size(files[index + 1].path) == 0:
                return rows, at
            if not rechecked:
                rechecked = True
                continue
            if _size(audit_file.path) > at.offset:
                raise ChainStopped(f"{audit_file.path.name}: ends in an unfinished line")
            index, rechecked = index + 1, False
            at.segment, at.offset = files[index].segment, 0


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        raise ChainStopped(f"{path.name}: removed before it was shipped") from None


def _lines(path: Path, offset: int) -> Iterator[tuple[int, bytes]]:
    """Complete lines from ``offset``, one at a time, each with the offset just after it.
    An unfinished last line (being written, or cut by a crash) is left for later."""
    try:
        with open_regular(path) as handle:
            handle.seek(offset)
            position = offset
            while raw := handle.readline(MAX_LINE_BYTES + 1):
                if not raw.endswith(b"\n"):
                    if len(raw) > MAX_LINE_BYTES:
                        raise ChainStopped(f"{path.name}: a line longer than {MAX_LINE_BYTES}")
                    break
                position += len(raw)
                yield position, raw[:-1]
    except OSError as exc:
        raise ChainStopped(f"{path.name}: cannot read: {exc.strerror}") from None
