"""The durable audit writer: one task, group commit, signed checkpoints, fail closed.

Concurrent requests hand their events to one writer task, which chains them, writes the
batch with a single ``write`` and ``fsync`` in a worker thread, and only then wakes the
requests. A request waits at most ``write_timeout_seconds``; a failing or hung disk turns
into AuditUnavailable, never into a token without a record.

Every ``checkpoint_every_records`` records or ``checkpoint_interval_seconds``, at each file
rotation and at a clean shutdown, a checkpoint record signs the chain head with Ed25519.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import os
import re
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import structlog

from broker import __version__
from broker.audit.lineage import ChainHead, newest_other_chain, own_chain
from broker.audit.records import (
    ANCHOR_EVENT,
    GENESIS,
    SCHEMA_VERSION,
    AuditEvent,
    ChainHeader,
    ChainPosition,
    CheckpointHead,
    CheckpointReason,
    RecordType,
    StartBody,
    encode_line,
)
from broker.audit.signing import CheckpointSigner
from broker.audit.store import decision_columns
from broker.clock import now_rfc3339_millis
from broker.config import AuditSettings
from broker.daemon_executor import DaemonThreadExecutor
from broker.metrics import Metrics
from broker.observability import OUT

log = structlog.get_logger("broker.audit")

_ENCODER = msgspec.json.Encoder()


class AuditUnavailable(Exception):
    """The record could not be made durable in time. ``queued``: it was in a batch, so it
    may still land (a write that outlives its deadline) or was cut with a failed write;
    otherwise it was never queued (the writer was stalled) and never lands."""

    def __init__(self, message: str, *, queued: bool = True) -> None:
        super().__init__(message)
        self.queued = queued


def default_instance_id() -> str:
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:63] or "host"
    # Start time before pid, so that a directory's files sort by start, restart after restart.
    return f"{host}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"


def segment_name(instance_id: str, segment: int) -> str:
    return f"audit-{instance_id}-{segment:06d}.jsonl"


class WrittenLine(msgspec.Struct, frozen=True):
    """A line as the writer made it durable, for a follower (the shipper) that would
    otherwise read it back from the file: its bytes, its hash, and for a decision the
    store's indexed columns (taken from the event, so no line is parsed again). A Struct:
    one per record on the event loop, where a frozen dataclass's __init__ cost 1.3 us."""

    seq: int
    kind: RecordType
    line: bytes
    sha256: str
    columns: tuple[str | None, ...] | None


@dataclass(frozen=True)
class _ChainState:
    seq: int = 0
    prev: str = GENESIS
    since_checkpoint: int = 0


@dataclass
class _Batch:
    events: list[bytes] = field(default_factory=list)
    # The record type of each event that is not a decision, by its index in ``events``.
    kinds: dict[int, RecordType] = field(default_factory=dict)
    # With a follower: each decision's indexed columns, by its index in ``events``.
    columns: dict[int, tuple[str | None, ...]] = field(default_factory=dict)
    # Told, once, whether each record became durable (see ``AuditWriter.submit``).
    waiters: list[Durable] = field(default_factory=list)
    # One deadline for the whole batch (armed by its first record): a timer per batch, not
    # a timeout context per record, on the hot path.
    deadline: asyncio.TimerHandle | None = None
    settled: bool = False

    def settle(self, ok: bool) -> None:
        """Tell every record's waiter, once: the deadline and the write race for it."""
        if self.settled:
            return
        self.settled = True
        if self.deadline is not None:
            self.deadline.cancel()
        for done in self.waiters:
            try:
                done(ok)
            except Exception as exc:
                # One waiter's failure must not leave the rest of the batch waiting.
                log.error("audit_waiter_failed", error_type=type(exc).__name__, exc_info=exc)


# Told True once a record is durable; False once it cannot be within its deadline (it may
# still land late, or a failed write cut it); None if it was never queued (the writer was
# stalled): it never lands.
Durable = Callable[[bool | None], None]


def _unwaited(ok: bool | None) -> None:
    pass


def _resolve(waiter: asyncio.Future[None], ok: bool | None) -> None:
    if waiter.done():
        return  # the request was cancelled meanwhile
    if ok:
        waiter.set_result(None)
    elif ok is None:
        waiter.set_exception(AuditUnavailable("audit writer stalled", queued=False))
    else:
        waiter.set_exception(AuditUnavailable("audit write failed or timed out"))


@dataclass
class _OpenFile:
    fd: int
    path: Path
    opened_at: float
    size: int = 0


# Loop turns a batch may wait for more records before its write (see _run).
_GATHER_TURNS = 4


class AuditWriter:
    def __init__(
        self,
        settings: AuditSettings,
        signer: CheckpointSigner | None = None,
        instance_id: str | None = None,
        metrics: Metrics | None = None,
        config_digest: str | None = None,
    ) -> None:
        self._settings = settings
        self._config_digest = config_digest
        self._metrics = metrics or Metrics()
        self._dir = Path(settings.dir)
        self._signer = signer
        self.instance_id = instance_id or settings.instance_id or default_instance_id()
        self._chain = _ChainState()
        self._pending = _Batch()
        self._wakeup = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._file: _OpenFile | None = None
        self._segment = 0
        # The segment a failed write left empty (its path and inode): the next write goes
        # there again rather than into a new one (see _reopen_empty).
        self._empty: tuple[Path, int] | None = None
        self._last_checkpoint = time.monotonic()
        self._failing = False
        self._closing = False
        # Told after each durable write, with the file and the lines written to it (the
        # shipper follows the files, and takes the lines from here while it keeps up).
        self.on_durable: Callable[[str, list[WrittenLine]], None] | None = None
        self._chained: list[WrittenLine] = []
        # When set (audit.store.mode = "sync"): a batch's requests are released only once
        # this returns for the batch's last seq, within the same write deadline.
        self.release_after: Callable[[int], Awaitable[None]] | None = None
        self._releases: set[asyncio.Task[None]] = set()
        self._io: DaemonThreadExecutor | None = None

    @property
    def seq(self) -> int:
        """The last seq made durable."""
        return self._chain.seq

    @property
    def signing_key_id(self) -> str | None:
        return self._signer.key_id if self._signer is not None else None

    async def start(self, witnessed: Sequence[ChainPosition] = ()) -> None:
        """Open the chain: continue this instance's own chain if its files exist (a fixed
        ``instance_id`` across restarts), else begin one; either way with a start record
        naming the chain before it (and the other chains ``witnessed`` running), signed at
        once by a start checkpoint."""
        predecessor: ChainPosition | None = None
        truncated = 0
        if self._settings.sink == "file":
            try:
                own, other = await asyncio.to_thread(self._find_heads)
            except OSError as exc:
                self._fail(exc)
                own = other = None
            if own is not None:
                truncated = own.truncated_bytes
                self._segment = own.segment
                if own.position is not None:
                    predecessor = own.position
                    self._chain = _ChainState(seq=own.position.seq, prev=own.position.hash)
                log.info(
                    "audit_chain_continued",
                    instance=self.instance_id,
                    seq=self._chain.seq,
                    truncated_bytes=truncated,
                )
            elif other is not None:
                predecessor = other.position
        body = StartBody(
            time=now_rfc3339_millis(),
            version=__version__,
            key_id=self._signer.key_id if self._signer is not None else None,
            predecessor=predecessor,
            truncated_bytes=truncated,
            config_digest=self._config_digest,
            witnessed=list(witnessed),
        )
        async with self._lock:
            lines, chain = self._chain_lines("start", [_ENCODER.encode(body)], self._chain)
            if await self._write(lines, chain):
                await self._checkpoint("start")
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    def _find_heads(self) -> tuple[ChainHead | None, ChainHead | None]:
        """This instance's own chain head (an unfinished last line cut away, durably), and
        the newest other chain's head in the directory."""
        own = own_chain(self._dir, self.instance_id, cut_partial=True)
        other = None if own is not None else newest_other_chain(self._dir, self.instance_id)
        return own, other

    async def close(self) -> None:
        """Flush what is pending and seal the chain with a shutdown checkpoint, always: a
        clean stop is told from a crash by that seal, whether or not records came since the
        last checkpoint."""
        if self._task is not None:
            # Let the writer task finish the write it is in: cancelled mid-write, the line
            # would land in the file without the chain state moving on, and the seal would
            # reuse its seq. A hung disk is the only reason to cut it short.
            self._closing = True
            self._wakeup.set()
            try:
                async with asyncio.timeout(self._settings.write_timeout_seconds + 5):
                    await asyncio.shield(self._task)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        async with self._lock:
            await self._write_batch(self._take(), checkpoint=False)
            for task in list(self._releases):
                # Released or refused within the write deadline, before the seal.
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            sealed = not self._failing and await self._checkpoint("shutdown")
        file = self._file.path.name if self._file is not None else None
        self._close_file()
        if self._io is not None:
            self._io.shutdown(wait=False)
            self._io = None
        if sealed:
            log.info(
                "audit_chain_sealed", instance=self.instance_id, seq=self._chain.seq, file=file
            )
        else:
            log.warning(
                "audit_chain_not_sealed",
                instance=self.instance_id,
                seq=self._chain.seq,
                why="no signing key" if self._signer is None else "the audit log is failing",
            )

    async def append(self, event: AuditEvent) -> None:
        """Return once ``event`` is durable; raise AuditUnavailable if it cannot be."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.submit(event, functools.partial(_resolve, waiter))
        await waiter

    def submit(self, event: AuditEvent, done: Durable, *, behind_stall: bool = False) -> None:
        """Queue ``event``; ``done`` is told, exactly once and on the loop, True once it is
        durable, False once it cannot be (within ``write_timeout_seconds``), None if it was
        never queued (see ``Durable``). ``append`` without a future per record, for a caller
        that answers from a callback (the server's cache-hit path). ``behind_stall``: queue
        it even behind a batch that has told its waiters no (see ``submit_unwaited``)."""
        columns = decision_columns(event) if self.on_durable is not None else None
        self._queue(_ENCODER.encode(event), None, done, columns, behind_stall=behind_stall)

    def submit_unwaited(self, event: AuditEvent) -> None:
        """Queue a decision that nobody waits for, even behind a batch that has told its
        waiters no (its deadline passed): it must follow their records in the chain, as the
        record of a withheld token follows the token's own (``TokenService._withheld``)."""
        self.submit(event, _unwaited, behind_stall=True)

    async def append_record(self, kind: RecordType, body: msgspec.Struct) -> None:
        """A record of another type than a decision (a config reload, a read of the trail),
        chained and made durable the same way."""
        await self._append(_ENCODER.encode(body), kind)

    async def _append(self, encoded: bytes, kind: RecordType | None) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue(encoded, kind, functools.partial(_resolve, waiter))
        await waiter

    def _queue(
        self,
        encoded: bytes,
        kind: RecordType | None,
        done: Durable,
        columns: tuple[str | None, ...] | None = None,
        *,
        behind_stall: bool = False,
    ) -> None:
        batch = self._pending
        if batch.settled and not behind_stall:
            # The pending batch waited out its whole deadline without the writer taking it:
            # the disk is stalled. A record queued here would never be told (the batch has
            # told its own), and the queue would grow for as long as the disk hangs: told
            # at once, on the next turn of the loop, that it was never queued.
            asyncio.get_running_loop().call_soon(done, None)
            return
        if batch.deadline is None:
            # The batch's first record sets the bound; later ones wait less, never more.
            batch.deadline = asyncio.get_running_loop().call_later(
                self._settings.write_timeout_seconds, batch.settle, False
            )
        index = len(batch.events)
        if kind is not None:
            batch.kinds[index] = kind
        if columns is not None:
            batch.columns[index] = columns
        batch.events.append(encoded)
        batch.waiters.append(done)
        self._wakeup.set()

    async def probe(self) -> bool:
        """While failing, try to write again (a recovery checkpoint) so that readiness can
        come back without traffic; return whether the log is writable."""
        if not self._failing or self._lock.locked():
            return not self._failing
        async with self._lock:
            if self._signer is not None:
                await self._checkpoint("recovery")
            else:
                await self._write(b"", self._chain)
        return not self._failing

    def _take(self) -> _Batch:
        batch, self._pending = self._pending, _Batch()
        return batch

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._checkpoint_due_in()):
                    await self._wakeup.wait()
            self._wakeup.clear()
            if self._closing:
                return  # close() flushes and seals
            # A few turns of the loop first, while records keep coming: the requests that
            # are ready now append theirs too, so one fsync serves them all (an fsync costs
            # the CPU of several cache hits here: bench/notes.md). Alone, a record waits one
            # turn: microseconds.
            for _ in range(_GATHER_TURNS):
                waiting = len(self._pending.events)
                await asyncio.sleep(0)
                if len(self._pending.events) == waiting:
                    break
            async with self._lock:
                await self._write_batch(self._take(), checkpoint=True)

    async def _write_batch(self, batch: _Batch, *, checkpoint: bool) -> None:
        try:
            await self._flush(batch)
            if checkpoint:
                await self._checkpoint_if_due()
        except Exception as exc:
            # A fault of the broker's own (a line that cannot be made, a follower that
            # raised): it ended the writer's task, and with it the trail and every token
            # until a restart, with nothing said; and close() raised it instead of sealing.
            # The batch is refused (its records may have landed: a token then has its
            # withheld record), and the writer goes on.
            batch.settle(False)
            self._metrics.audit_failures.inc()  # what the chart's alert reads
            log.error("audit_writer_fault", error_type=type(exc).__name__, exc_info=exc)

    async def _checkpoint_if_due(self) -> None:
        if not self._checkpoint_wanted():
            return
        if self._chain.since_checkpoint >= self._settings.checkpoint_every_records:
            await self._checkpoint("count")
        elif time.monotonic() - self._last_checkpoint >= self._checkpoint_wait():
            await self._checkpoint("interval" if self._chain.since_checkpoint else "heartbeat")

    def _checkpoint_wanted(self) -> bool:
        """Whether a checkpoint is to be written at all: a signing key, the log writable, and
        a chain that is not sealed (a heartbeat needs no records since the last one)."""
        return self._signer is not None and not self._failing and not self._closing

    def _checkpoint_wait(self) -> float:
        """How long after the last checkpoint the next is due: the interval with records
        since it, else the heartbeat; never longer than the heartbeat, so that a running
        writer's last signed time is never older than that."""
        heartbeat = self._settings.heartbeat_seconds
        if self._chain.since_checkpoint:
            return min(self._settings.checkpoint_interval_seconds, heartbeat)
        return heartbeat

    def _checkpoint_due_in(self) -> float | None:
        """Seconds until the next checkpoint, or None when none is wanted: then only a record
        wakes the writer. A deadline in the past here made the loop wake every millisecond
        for as long as the broker stayed idle (or unsigned, or failing)."""
        if not self._checkpoint_wanted():
            return None
        return max(self._last_checkpoint + self._checkpoint_wait() - time.monotonic(), 0.001)

    async def _flush(self, batch: _Batch) -> None:
        if not batch.events:
            return
        if self._rotation_due() and not self._failing:
            await self._rotate()
        lines, chain = self._chain_lines(
            "decision", batch.events, self._chain, batch.kinds, batch.columns
        )
        ok = await self._write(lines, chain)
        if ok and self.release_after is not None:
            # Not awaited here: the writer goes on with the next batch meanwhile.
            task = asyncio.create_task(self._release(self.release_after, chain.seq, batch))
            self._releases.add(task)
            task.add_done_callback(self._releases.discard)
            return
        batch.settle(ok)

    async def _release(
        self, release_after: Callable[[int], Awaitable[None]], seq: int, batch: _Batch
    ) -> None:
        try:
            async with asyncio.timeout(self._settings.write_timeout_seconds):
                await release_after(seq)
        except Exception as exc:
            log.warning("audit_store_commit_failed", error=type(exc).__name__)
            batch.settle(False)
            return
        batch.settle(True)

    def _write_stdout(self, data: bytes) -> None:
        # On the loop thread, through the same buffer as the logs, so that a log line and an
        # audit line never interleave mid-line; the log pipeline owns durability from here.
        if self._file is None:
            self._segment = 1
            self._file = _OpenFile(
                fd=-1,
                path=self._dir / segment_name(self.instance_id, 1),
                opened_at=time.monotonic(),
            )
        OUT.write(data.decode())
        OUT.flush()
        self._file.size += len(data)

    def _rotation_due(self) -> bool:
        current = self._file
        if current is None or self._settings.sink == "stdout":
            return False
        return (
            current.size >= self._settings.rotate_bytes
            or time.monotonic() - current.opened_at >= self._settings.rotate_seconds
        )

    async def _rotate(self) -> None:
        # The next file exists before the checkpoint that names it: a crash in between
        # leaves an empty file, never a checkpoint naming a file that is not there.
        try:
            following = await asyncio.to_thread(self._create_segment)
        except OSError as exc:
            self._fail(exc)
            return
        if self._signer is None:
            # Nothing to sign the hand-over with: the chain simply goes on in the next file.
            self._close_file()
            self._file = following
            return
        if await self._checkpoint("rotation", next_file=following.path.name):
            self._close_file()
            self._file = following
        else:
            with contextlib.suppress(OSError):
                # Named by no durable checkpoint, and empty: the next write goes there.
                self._empty = (following.path, os.fstat(following.fd).st_ino)
                os.close(following.fd)

    async def _checkpoint(self, reason: CheckpointReason, next_file: str | None = None) -> bool:
        if self._signer is None:
            return False
        # With no file open, the checkpoint goes where the next write opens one.
        file_name = self._file.path.name if self._file is not None else self._next_file_name()
        head = CheckpointHead(
            instance=self.instance_id,
            file=file_name,
            seq=self._chain.seq,
            hash=self._chain.prev,
            reason=reason,
            time=now_rfc3339_millis(),
            next=next_file,
        )
        body = head.body(self._signer.key_id, self._signer.sign(head.message()))
        lines, chain = self._chain_lines("checkpoint", [_ENCODER.encode(body)], self._chain)
        if await self._write(lines, chain, checkpoint=True):
            self._last_checkpoint = time.monotonic()
            # Durable now: the head leaves the host with the logs, for `broker audit verify
            # --anchors` to find in the trail (broker/audit/anchors.py).
            log.info(
                ANCHOR_EVENT,
                instance=self.instance_id,
                seq=chain.seq,
                line_sha256=chain.prev,
                reason=reason,
                file=file_name,
            )
            return True
        return False

    def _chain_lines(
        self,
        kind: RecordType,
        bodies: list[bytes],
        state: _ChainState,
        kinds: dict[int, RecordType] | None = None,
        columns: dict[int, tuple[str | None, ...]] | None = None,
    ) -> tuple[bytes, _ChainState]:
        seq, prev = state.seq, state.prev
        out = bytearray()
        follow = self.on_durable is not None
        chained: list[WrittenLine] = []
        for index, body in enumerate(bodies):
            seq += 1
            line_kind = kinds.get(index, kind) if kinds else kind
            header = ChainHeader(
                v=SCHEMA_VERSION, type=line_kind, instance=self.instance_id, seq=seq, prev=prev
            )
            line = encode_line(header, body)
            prev = hashlib.sha256(line).hexdigest()
            out += line
            out += b"\n"
            if follow:
                found = columns.get(index) if columns and line_kind == "decision" else None
                chained.append(WrittenLine(seq, line_kind, line, prev, found))
        self._chained = chained
        since = 0 if kind == "checkpoint" else state.since_checkpoint + len(bodies)
        return bytes(out), _ChainState(seq=seq, prev=prev, since_checkpoint=since)

    async def _write(self, data: bytes, chain: _ChainState, *, checkpoint: bool = False) -> bool:
        started = time.perf_counter()
        try:
            if self._settings.sink == "stdout":
                self._write_stdout(data)
            else:
                # A thread of its own, without to_thread's context copy per batch. Even with
                # fsync off: a write into the page cache can still block (dirty-page
                # throttling, a hung or remote disk), and on the loop it would stop every
                # request and the very deadlines that turn a hung disk into 503s.
                if self._io is None:
                    self._io = DaemonThreadExecutor(1, thread_name_prefix="audit-write")
                await asyncio.get_running_loop().run_in_executor(
                    self._io, self._write_durably, data
                )
        except OSError as exc:
            self._fail(exc)
            return False
        self._metrics.audit_write_seconds.observe(time.perf_counter() - started)
        self._chain = chain
        chained, self._chained = self._chained, []
        if self.on_durable is not None and data and self._file is not None:
            self.on_durable(self._file.path.name, chained)
        if self._failing:
            log.warning("audit_write_recovered", checkpoint=checkpoint)
        self._failing = False
        return True

    def _fail(self, exc: OSError) -> None:
        self._close_file(truncate=True)
        self._metrics.audit_failures.inc()
        if not self._failing:
            log.error("audit_write_failed", error=exc.strerror or type(exc).__name__)
        self._failing = True

    def _next_file_name(self) -> str:
        """The file the next write opens: the one a failed write left empty, or a new one."""
        if self._empty is not None:
            return self._empty[0].name
        return segment_name(self.instance_id, self._segment + 1)

    def _open_file(self) -> _OpenFile:
        self._file = self._reopen_empty() if self._empty is not None else self._create_segment()
        return self._file

    def _reopen_empty(self) -> _OpenFile:
        """The segment a failed write left empty, open again. A new segment for every try
        left an empty file per batch and per readiness probe for as long as a disk stayed
        full (51 after 36 requests), until the inodes ran out too. A checkpoint may already
        name this file (see _next_file_name), so failing to reopen it fails the write: the
        next one starts a new segment, named by then."""
        assert self._empty is not None
        (path, inode), self._empty = self._empty, None
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        status = os.fstat(fd)
        if status.st_ino != inode or status.st_size != 0:
            os.close(fd)
            raise OSError(errno.EEXIST, "the empty audit segment was replaced", str(path))
        return _OpenFile(fd=fd, path=path, opened_at=time.monotonic())

    def _create_segment(self) -> _OpenFile:
        self._dir.mkdir(parents=True, exist_ok=True)
        self._segment += 1
        path = self._dir / segment_name(self.instance_id, self._segment)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o640)
        segment = _OpenFile(fd=fd, path=path, opened_at=time.monotonic())
        if self._settings.fsync:
            # The new name must survive a crash too, or the chain loses a whole file.
            try:
                dir_fd = os.open(self._dir, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
            except OSError:
                # Not left open for each try (the descriptors would run out): used again.
                self._empty = (path, os.fstat(fd).st_ino)
                os.close(fd)
                raise
        return segment

    def _write_durably(self, data: bytes) -> None:
        current = self._file if self._file is not None else self._open_file()
        view = memoryview(data)
        while view:
            written = os.write(current.fd, view)
            view = view[written:]
        if self._settings.fsync:
            os.fsync(current.fd)
        if os.fstat(current.fd).st_nlink == 0:
            # Deleted while open (the audit directory removed, a clean-up gone wrong): what
            # it takes is in no file anyone can read, and was acknowledged until the next
            # rotation, up to a day later. Refused as a failed write: the next batch starts
            # a new file, and the trail shows the gap.
            raise OSError(errno.ENOENT, "the audit file was deleted while open", str(current.path))
        current.size += len(data)

    def _close_file(self, *, truncate: bool = False) -> None:
        current, self._file = self._file, None
        if current is None or current.fd < 0:
            return
        with contextlib.suppress(OSError):
            if truncate:
                # Drop a partly written batch so the file ends on a whole, chained line; the
                # next batch starts a new file that links to the last durable record, or
                # this one again if nothing in it was durable.
                os.ftruncate(current.fd, current.size)
                if current.size == 0:
                    self._empty = (current.path, os.fstat(current.fd).st_ino)
            os.close(current.fd)
