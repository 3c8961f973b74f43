"""The durable audit writer: one task, group commit, fail closed.

Concurrent requests hand their events to one writer task, which chains them, writes the
batch with a single ``write`` and ``fsync`` in a worker thread, and only then wakes the
requests. A request waits at most ``write_timeout_seconds``; a failing or hung disk turns
into AuditUnavailable, never into a token without a record.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import structlog

from broker.audit.records import GENESIS, SCHEMA_VERSION, AuditEvent, ChainHeader
from broker.config import AuditSettings

log = structlog.get_logger("broker.audit")

_ENCODER = msgspec.json.Encoder()


class AuditUnavailable(Exception):
    """The record could not be made durable in time."""


def default_instance_id() -> str:
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:63] or "host"
    return f"{host}-{os.getpid()}-{int(time.time())}"


@dataclass
class _ChainState:
    seq: int = 0
    prev: str = GENESIS


@dataclass
class _Batch:
    events: list[bytes] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class AuditWriter:
    def __init__(self, settings: AuditSettings, instance_id: str | None = None) -> None:
        self._dir = Path(settings.dir)
        self._fsync = settings.fsync
        self._timeout = settings.write_timeout_seconds
        self.instance_id = instance_id or default_instance_id()
        self._chain = _ChainState()
        self._pending = _Batch()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._fd: int | None = None
        self._good_size = 0
        self._segment = 0
        self._failing = False
        self.current_path: Path | None = None

    @property
    def healthy(self) -> bool:
        return not self._failing

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._pending.events:
            await self._flush(self._take())
        self._close_file()

    async def append(self, event: AuditEvent) -> None:
        """Return once ``event`` is durable; raise AuditUnavailable if it cannot be."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.events.append(_ENCODER.encode(event))
        self._pending.waiters.append(waiter)
        self._wakeup.set()
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self._timeout)
        except TimeoutError:
            raise AuditUnavailable("audit write timed out") from None

    def _take(self) -> _Batch:
        batch, self._pending = self._pending, _Batch()
        return batch

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            if self._pending.events:
                await self._flush(self._take())

    async def _flush(self, batch: _Batch) -> None:
        lines, chain = self._chain_lines(batch.events)
        try:
            await asyncio.to_thread(self._write_durably, lines)
        except OSError as exc:
            self._close_file(truncate=True)
            if not self._failing:
                log.error("audit_write_failed", error=exc.strerror or type(exc).__name__)
            self._failing = True
            for waiter in batch.waiters:
                if not waiter.done():
                    waiter.set_exception(AuditUnavailable("audit write failed"))
            return
        self._chain = chain
        if self._failing:
            log.warning("audit_write_recovered")
        self._failing = False
        for waiter in batch.waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _chain_lines(self, events: list[bytes]) -> tuple[bytes, _ChainState]:
        seq, prev = self._chain.seq, self._chain.prev
        out = bytearray()
        for event in events:
            seq += 1
            header = _ENCODER.encode(
                ChainHeader(v=SCHEMA_VERSION, instance=self.instance_id, seq=seq, prev=prev)
            )
            line = header[:-1] + b"," + event[1:]
            prev = hashlib.sha256(line).hexdigest()
            out += line
            out += b"\n"
        return bytes(out), _ChainState(seq=seq, prev=prev)

    def _open_file(self) -> int:
        self._dir.mkdir(parents=True, exist_ok=True)
        self._segment += 1
        path = self._dir / f"audit-{self.instance_id}-{self._segment:04d}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o640)
        self._fd, self._good_size, self.current_path = fd, 0, path
        return fd

    def _write_durably(self, data: bytes) -> None:
        fd = self._fd if self._fd is not None else self._open_file()
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if self._fsync:
            os.fsync(fd)
        self._good_size += len(data)

    def _close_file(self, *, truncate: bool = False) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            if truncate:
                # Drop a partly written batch so the file ends on a whole, chained line; the
                # next batch starts a new file that links to the last durable record.
                os.ftruncate(fd, self._good_size)
            os.close(fd)
