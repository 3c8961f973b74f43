"""Retention: delete store rows older than ``retention_days``, never the chain files, each
deletion announced first by a ``retention`` record in this replica's own chain.

It runs in the replica that serves (beside the readers), whichever way its records are
shipped: the record that announces a deletion is written by that replica's writer, and
without it durable nothing is deleted.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from datetime import UTC, datetime

import structlog

from broker.audit.records import RecordType, RetentionBody
from broker.audit.store import RETENTION_PASS_ROWS, AuditStore, StoreError, record_time
from broker.audit.writer import AuditUnavailable
from broker.clock import now_rfc3339_millis
from broker.periodic import Periodic

log = structlog.get_logger("broker.audit.retention")


class Retention:
    def __init__(
        self,
        store: AuditStore,
        *,
        executor: Executor,
        days: int,
        record: Callable[[RecordType, RetentionBody], Awaitable[None]],
        every_seconds: float = 3600.0,
        pass_rows: int = RETENTION_PASS_ROWS,
    ) -> None:
        self._store = store
        self._executor = executor
        self._days = days
        self._pass_rows = pass_rows
        self._record = record
        self._periodic = Periodic("audit-retention", every_seconds, self._apply_logged)

    def start(self) -> None:
        self._periodic.start()

    async def close(self) -> None:
        await self._periodic.close()

    async def _apply_logged(self) -> None:
        try:
            await self.apply()
        except StoreError as exc:
            log.warning("audit_retention_failed", error=str(exc))
        except AuditUnavailable:
            # The writer has said why; the next run tries again.
            log.warning(
                "audit_retention_failed",
                error="its retention record could not be written, so nothing was deleted",
            )

    async def apply(self, now: float | None = None) -> int:
        """Delete store rows older than ``days`` (never the files), a bounded pass at a
        time: first a retention record in this replica's chain says what the pass deletes,
        then it goes. Without that record durable, nothing is deleted. Returns the rows
        deleted."""
        moment = time.time() if now is None else now
        cutoff = record_time(datetime.fromtimestamp(moment - self._days * 86_400, tz=UTC))
        loop = asyncio.get_running_loop()
        deleted = passes = 0
        while True:
            plan = await loop.run_in_executor(
                self._executor,
                functools.partial(self._store.retention_plan, cutoff, max_rows=self._pass_rows),
            )
            if not plan:
                break
            body = RetentionBody(time=now_rfc3339_millis(), cutoff=cutoff, ranges=plan)
            await self._record("retention", body)
            gone = await loop.run_in_executor(self._executor, self._store.delete_retained, plan)
            deleted += gone
            passes += 1
            if gone == 0:
                break  # another replica's retention deleted them first: nothing left to do
        if passes:
            log.info("audit_retention_applied", cutoff=cutoff, passes=passes, rows=deleted)
        return deleted
