"""Refusals counted but not recorded, put on the trail once no decision can take them.

Floods are recorded in part: a rate-limited key's refusals once a second, a caller's
refusals at a privileged route once a second, unknown callers' within a deployment-wide
budget. The rest are counted, and each count goes into the ``unrecordedBefore`` of the next
decision like them. When the flood stops, no such decision comes, and the count of its last
second would wait in memory for ever, then die with the process: an auditor could not prove
the trail complete. Here, once a second, every count whose key's second has passed is
written in an ``unrecorded`` record, and at shutdown every count left, before the seal.
"""

from __future__ import annotations

import structlog

from broker.audit.records import UnrecordedBody, UnrecordedCount, UnrecordedKind
from broker.audit.writer import AuditUnavailable, AuditWriter
from broker.clock import now_rfc3339_millis
from broker.periodic import Periodic
from broker.ratelimit import RecordBudget, RepeatBudget

log = structlog.get_logger("broker.unrecorded")

# Counts a record holds at most: a flood of many keys makes several records, not one line of
# megabytes.
MAX_COUNTS_PER_RECORD = 500


class UnrecordedCounts:
    def __init__(
        self,
        audit: AuditWriter,
        repeats: dict[UnrecordedKind, RepeatBudget],
        anonymous: RecordBudget,
        interval_seconds: float = 1.0,
    ) -> None:
        self._audit = audit
        self._repeats = repeats
        self._anonymous = anonymous
        self._periodic = Periodic("unrecorded-counts", interval_seconds, self.sweep)

    def start(self) -> None:
        self._periodic.start()

    async def close(self) -> None:
        """Stop, and write every count still held (call before the writer's seal)."""
        await self._periodic.close()
        await self.write(self._taken(due=False))

    async def sweep(self) -> None:
        """Write the counts that no decision can take any more."""
        await self.write(self._taken(due=True))

    def _taken(self, *, due: bool) -> list[UnrecordedCount]:
        counts = [
            UnrecordedCount(kind=kind, count=count, like_request_id=request_id)
            for kind, budget in self._repeats.items()
            for request_id, count in (budget.take_due() if due else budget.take_all())
        ]
        budget = self._anonymous
        anonymous = budget.take_due() if due else budget.take_unrecorded()
        if anonymous is not None:
            counts.append(UnrecordedCount(kind="unauthenticated", count=anonymous))
        return counts

    async def write(self, counts: list[UnrecordedCount]) -> None:
        """Put ``counts`` on the trail, in as many records as they take."""
        for start in range(0, len(counts), MAX_COUNTS_PER_RECORD):
            part = counts[start : start + MAX_COUNTS_PER_RECORD]
            body = UnrecordedBody(time=now_rfc3339_millis(), counts=part)
            try:
                await self._audit.append_record("unrecorded", body)
            except AuditUnavailable:
                # As a refusal's own record that cannot be written: the refusals stand, and
                # the loss is said where operators look.
                log.error(
                    "audit_record_lost", type="unrecorded", refusals=sum(c.count for c in part)
                )
