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
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from broker.audit.lineage import chains_in, sealed
from broker.audit.reader import AuditFile, parse_name
from broker.audit.records import MAX_LINE_BYTES
from broker.audit.store import (
    AuditStore,
    LineError,
    Row,
    StoreDataError,
    StoreError,
    row_of,
)
from broker.audit.writer import WrittenLine
from broker.metrics import Metrics
from broker.observability import EveryInterval
from broker.regular_files import open_regular

log = structlog.get_logger("broker.audit.shipping")

_YIELD_EVERY = 32
# Lines kept from the writer for shipping, at most (beyond: read from the files).
_MEMORY_ROWS = 50_000


class ChainStopped(Exception):
    """A chain cannot be shipped further as it is on disk; the message says where and why."""


class _GiveWay(Exception):
    """A pass on the low-priority executor stops between two batches: an urgent one waits,
    or the replica became busy."""


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


class Shipping(Protocol):
    """What the replica sees of shipping, in this process (``Shipper``, sync mode) or in a
    process of its own (``ship_supervisor.ShipperProcess``, async mode)."""

    @property
    def status(self) -> ShipStatus: ...

    @property
    def own_shipped(self) -> int: ...

    def start(self) -> None: ...

    async def shipped(self, seq: int) -> None: ...

    async def close(self, *, final_pass: bool = True) -> None: ...


class ShipProgress:
    """How far the store holds this replica's own chain, as readers, ``/readyz`` and the
    metrics see it: the lag, whether the last pass reached the store (one warning a minute
    while it cannot), and the readers and tokens waiting for a seq to be stored. One for
    each way of shipping: in this process (sync mode) or from the shipping process."""

    def __init__(
        self,
        store_description: str,
        written_seq: Callable[[], int],
        metrics: Metrics,
        *,
        report_outages: bool = True,
        age_of_oldest: Callable[[int, int], float] | None = None,
    ) -> None:
        self._description = store_description
        self._written_seq = written_seq
        self._metrics = metrics
        self._report_outages = report_outages
        # The lag in time from (written seq, stored seq): the age of the oldest record not
        # stored, where the one who knows that gives it (the shipping process's
        # supervisor); otherwise the time since the store last held every record.
        self._age_of_oldest = age_of_oldest
        self._caught_up_at = time.monotonic()
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._warn = EveryInterval(60.0)
        self.own_shipped = 0
        self.status = ShipStatus()

    @property
    def waiting(self) -> bool:
        return bool(self._waiters)

    def waiter(self, seq: int) -> asyncio.Future[None] | None:
        """A future resolved once ``seq`` is stored; None if it already is."""
        if self.own_shipped >= seq:
            return None
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((seq, waiter))
        return waiter

    def reached(self) -> None:
        """A pass reached the store."""
        if not self.status.up and self._report_outages:
            log.info("audit_store_recovered", store=self._description)
        self.status.up = True
        self.status.error = None
        self._metrics.audit_store_up.set(1)

    def down(self, error: str) -> None:
        self.status.up = False
        self.status.error = error
        self._metrics.audit_store_up.set(0)
        if self._report_outages and self._warn.due("down"):
            log.warning(
                "audit_store_unreachable",
                store=self._description,
                error=error,
                lag_records=self.status.lag_records,
                lag_seconds=round(self.status.lag_seconds, 1),
            )

    def update(self, own_shipped: int, stopped: dict[str, str]) -> None:
        """The store holds this chain up to ``own_shipped``: the lag and its metrics, and
        the waiters that may go."""
        self.own_shipped = max(self.own_shipped, own_shipped)
        written = self._written_seq()
        lag = max(0, written - self.own_shipped)
        now = time.monotonic()
        if lag == 0:
            self._caught_up_at = now
        self.status.lag_records = lag
        if self._age_of_oldest is not None:
            self.status.lag_seconds = self._age_of_oldest(written, self.own_shipped)
        else:
            self.status.lag_seconds = 0.0 if lag == 0 else now - self._caught_up_at
        self.status.stopped = dict(stopped)
        self._metrics.audit_ship_lag_records.set(lag)
        self._metrics.audit_ship_lag_seconds.set(self.status.lag_seconds)
        remaining = []
        for seq, waiter in self._waiters:
            if waiter.done():
                continue
            if seq <= self.own_shipped:
                waiter.set_result(None)
            else:
                remaining.append((seq, waiter))
        self._waiters = remaining


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
        urgent_executor: Executor | None = None,
        idle_wait_seconds: float = 1.0,
        on_pass: Callable[[ShipStatus], None] | None = None,
        report_outages: bool = True,
        prune_shipped: bool = False,
    ) -> None:
        self._urgent_executor = urgent_executor
        # Delete this replica's own rotated files once the store holds every line of them
        # (audit.store.prune_shipped_files): the store is then the trail of record.
        self._prune = prune_shipped
        # Asked for (a reader waits, the lag passed its bound, the process closes): the next
        # pass runs on the urgent executor, and a pass running on the other stops after its
        # batch so that it does not hold the pass lock (and the store's) at low priority.
        self._urgent = threading.Event()
        # Set while the serving replica is busy: passes on the low-priority executor wait
        # (and one running stops after its batch); urgent ones do not.
        self._held = threading.Event()
        self._idle_wait = idle_wait_seconds
        self._on_pass = on_pass
        self._store = store
        self._dir = directory
        self._own = own_instance
        self._written_seq = written_seq
        self._executor = executor
        self._metrics = metrics
        self._batch = batch_records
        self._min_interval = min_interval_seconds
        self._migrated = False
        self._remade = store.remade
        self._faults = EveryInterval(60.0)
        # Lines the writer handed over: (file, lines), oldest first (appended on the loop,
        # taken in the store's thread: deque operations are atomic).
        self._memory: deque[tuple[str, list[WrittenLine]]] = deque()
        self._memory_rows = 0
        self._memory_lock = threading.Lock()
        self._pass_lock = threading.Lock()
        self._cursors: dict[str, _Cursor] = {}
        self._stopped: dict[str, str] = {}
        # Other instances' chains this shipping found broken once and will read again from
        # the store's position (see _ship_all_locked), until they ship again.
        self._resumed_again: set[str] = set()
        # Written by the store thread, read on the loop after each pass.
        self._own_shipped = 0
        # When the store thread last made progress (a pass begun or ended, a batch read and
        # stored), and whether a pass is under way: how a pass that is slow is told from
        # one that is stuck (the shipping process's watchdog, ``stuck_for``).
        self._step_at = time.monotonic()
        self._passing = False
        self._progress = ShipProgress(
            store.description, written_seq, metrics, report_outages=report_outages
        )
        self._wakeup = asyncio.Event()
        # Set by a reader waiting for its own records: cuts the pause between passes short.
        self._hurry = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- the loop side ----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-shipper")

    @property
    def own_shipped(self) -> int:
        """The last seq of this replica's own chain that the store holds."""
        return self._progress.own_shipped

    @property
    def status(self) -> ShipStatus:
        return self._progress.status

    def stuck_for(self) -> float:
        """Seconds the pass under way has gone without progress; 0 with none under way."""
        return time.monotonic() - self._step_at if self._passing else 0.0

    def hold(self, held: bool) -> None:
        """Hold passes on the low-priority executor back (the replica is busy), or not."""
        if held:
            self._held.set()
        else:
            self._held.clear()
            self._wakeup.set()
            self._hurry.set()

    def hurry(self) -> None:
        """Ship now, on the urgent executor (if there is one), without the pause."""
        if self._urgent_executor is not None:
            self._urgent.set()
        self._wakeup.set()
        self._hurry.set()

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
        waiter = self._progress.waiter(seq)
        if waiter is None:
            return
        self.hurry()
        await waiter

    async def close(self, *, final_pass: bool = True) -> None:
        """Stop; with ``final_pass``, try once more to ship what the files hold (the
        writer's seal among it), bounded by the store's own timeouts."""
        # A pass at low priority gives way to the last one, which runs at normal priority.
        if self._urgent_executor is not None:
            self._urgent.set()
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
            if self._idle_wait:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._idle_wait):
                        await self._wakeup.wait()
            self._wakeup.clear()
            try:
                await self._pass()
            except Exception as exc:
                if isinstance(exc, StoreError):
                    error = str(exc)
                else:
                    # A fault of the broker's own, or the directory unreadable (an OSError
                    # from its listing): it ended the task, and shipping for the life of the
                    # process, unseen (sync mode then refused every token). Tried again, as
                    # a store that failed is.
                    error = f"{type(exc).__name__} while shipping"
                    self._faults.fault("pass", log, "audit_shipping_failed", exc)
                self._progress.down(error)
                self._report()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.5
            # Lines written meanwhile go in the next pass: one batch, not one per write. Not
            # while someone waits for this replica's records (GET /audit/events reads its
            # own writes, and each read writes a record): a reader would wait out the pause
            # on every page.
            if self._min_interval and not self._progress.waiting and not self._urgent.is_set():
                # A hurry from waiters this pass has released is spent (nothing awaited
                # since their release: no new waiter came in between).
                self._hurry.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._min_interval):
                        await self._hurry.wait()
            self._hurry.clear()

    async def _pass(self) -> None:
        loop = asyncio.get_running_loop()
        executor = self._executor
        if self._urgent.is_set() and self._urgent_executor is not None:
            executor = self._urgent_executor
            # A request from here on asks for the pass after this one.
            self._urgent.clear()
        elif self._held.is_set():
            return
        try:
            await loop.run_in_executor(executor, self._ship_all, executor is self._executor)
        finally:
            self._progress.update(self._own_shipped, self._stopped)
        self._progress.reached()
        self._report()

    def _report(self) -> None:
        if self._on_pass is not None:
            self._on_pass(self.status)

    # --- the store thread -------------------------------------------------------------------

    def _ship_all(self, may_give_way: bool = False) -> None:
        # A pass cancelled on the loop goes on in its thread: the next one waits for it.
        with self._pass_lock, contextlib.suppress(_GiveWay):
            self._step_at = time.monotonic()
            self._passing = True
            try:
                self._ship_all_locked(may_give_way)
            finally:
                self._passing = False

    def _ship_all_locked(self, may_give_way: bool) -> None:
        if self._store.remade != self._remade:
            # The store's file was deleted or replaced while open, and is made again empty:
            # every chain from the start of its files (what pruning left of them).
            self._remade = self._store.remade
            self._migrated = False
            self._cursors.clear()
            self._stopped.clear()
            self._resumed_again.clear()
            log.error("audit_store_remade", store=self._store.description)
        if not self._migrated:
            before = self._store.migrate()
            self._migrated = True
            log.info("audit_store_ready", store=self._store.description, schema_was=before)
        for instance, files in chains_in(self._dir).items():
            if instance in self._stopped:
                continue
            try:
                self._ship_chain(instance, files, may_give_way)
                self._resumed_again.discard(instance)
                if self._prune and instance == self._own:
                    self._prune_shipped(files, self._cursors[instance], keep=2)
                elif self._prune and self._finished(files, self._cursors[instance]):
                    self._prune_shipped(files, self._cursors[instance], keep=1)
            except ChainStopped as exc:
                if instance != self._own and instance not in self._resumed_again:
                    # Its own replica (a granian worker, a pod on a shared claim) may have
                    # pruned files this shipping had not read yet, which the store holds:
                    # start again from the store's position before calling it stopped.
                    self._resumed_again.add(instance)
                    self._cursors.pop(instance, None)
                    continue
                self._stopped[instance] = str(exc)
                log.error("audit_chain_not_shipped", instance=instance, reason=str(exc))
            except StoreDataError as exc:
                self._stopped[instance] = str(exc)
                log.error("audit_chain_not_shipped", instance=instance, reason=str(exc))

    def _ship_chain(self, instance: str, files: list[AuditFile], may_give_way: bool) -> None:
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
                added = self._store.insert(rows)
                self._progress.status.shipped += added
                self._metrics.audit_shipped_records.inc(added)
                if instance == self._own:
                    self._own_shipped = rows[-1].seq
            cursor.segment, cursor.offset, cursor.next_seq = (
                after.segment,
                after.offset,
                after.next_seq,
            )
            self._step_at = time.monotonic()
            if not rows:
                return
            if may_give_way and (self._urgent.is_set() or self._held.is_set()):
                raise _GiveWay

    def _finished(self, files: list[AuditFile], cursor: _Cursor) -> bool:
        """Whether another instance's chain is sealed and wholly in the store: an earlier
        process's in this directory (a container restarted in the same pod), which no
        broker writes any more. A crashed chain, or a live one (a granian worker's, a pod's
        on a shared claim), is not: its files stay."""
        last = files[-1]
        try:
            size = os.stat(last.path).st_size
        except OSError:
            return False
        return (
            cursor.segment == last.segment
            and cursor.offset == size
            and sealed(last.instance, files)
        )

    def _prune_shipped(self, files: list[AuditFile], cursor: _Cursor, *, keep: int) -> None:
        """Delete the files before the cursor's (every line of them is in the store), but
        never the newest ``keep``: a running writer writes into the newest, and a chain's
        head (what a restart resumes and the next chain in the directory names) is read
        from them. Another shipping that had read such a chain only partway reads on from
        the store's position (``_ship_all_locked``)."""
        pruned = 0
        for audit_file in files[:-keep]:
            if audit_file.segment >= cursor.segment:
                break
            try:
                audit_file.path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("audit_file_not_pruned", file=audit_file.path.name, error=str(exc))
                return
            pruned += 1
        if pruned:
            log.info("audit_files_pruned", files=pruned, before=f"segment {cursor.segment}")

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
        cursor.next_seq = seq + 1
        index = next(i for i, f in enumerate(files) if f.segment >= cursor.segment)
        cursor.segment, rechecked = files[index].segment, False
        while True:
            audit_file = files[index]
            for end, line in _lines(audit_file.path, cursor.offset):
                if self._row(instance, audit_file, line).seq > seq:
                    return cursor
                cursor.offset = end
            # As in _read: the writer creates the next file before the rotation checkpoint
            # that ends this one. Moving into it while still empty put the cursor at its
            # start, and that checkpoint, written next into this file, was then taken for
            # the new file's first line: every offset after it was wrong, and the chain
            # stopped on a "line" read from mid-record.
            if index == len(files) - 1 or _size(files[index + 1].path) == 0:
                return cursor
            if not rechecked:
                rechecked = True
                continue
            index, rechecked = index + 1, False
            cursor.segment, cursor.offset = files[index].segment, 0

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
