"""Counts of refusals not recorded reach the trail in records of their own, with a real
writer on a temp dir: once their key's second has passed, every one left at shutdown
(before the seal), in records of bounded size, and a failing disk costs a log line, not a
crash."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from broker.audit.writer import AuditWriter
from broker.config import AuditSettings, BucketSettings
from broker.ratelimit import RecordBudget, RepeatBudget
from broker.unrecorded import MAX_COUNTS_PER_RECORD, UnrecordedCounts
from tests.support.audit_replica import json_lines
from tests.support.clock import ManualClock
from tests.support.trails import new_signer


class _Setup:
    def __init__(self, trail: Path, keys: Path | None = None) -> None:
        self.clock = ManualClock()
        self.limited = RepeatBudget(interval_seconds=1.0, clock=self.clock)
        self.routes = RepeatBudget(interval_seconds=1.0, clock=self.clock)
        # Two records at once, then nothing for a long while.
        self.anonymous = RecordBudget(
            BucketSettings(rate_per_second=0.001, burst=2), clock=self.clock
        )
        signer = None
        if keys is not None:
            signer, _ = new_signer(keys)
        self.writer = AuditWriter(
            AuditSettings(dir=str(trail), fsync=False), signer, instance_id="unrecorded"
        )
        self.counts = UnrecordedCounts(
            self.writer,
            {"rate_limited": self.limited, "route_refused": self.routes},
            self.anonymous,
        )


def _run(setup: _Setup, scenario: Callable[[], Awaitable[None]]) -> None:
    async def run() -> None:
        await setup.writer.start()
        await scenario()
        await setup.counts.close()
        await setup.writer.close()

    asyncio.run(run())


def _unrecorded(trail: Path) -> list[list[dict[str, Any]]]:
    return [r["counts"] for r in json_lines(trail) if r["type"] == "unrecorded"]


def test_counts_are_written_once_their_key_has_no_record_to_go_to(tmp_path: Path) -> None:
    setup = _Setup(tmp_path)

    async def scenario() -> None:
        setup.limited.admit(("per_caller", "client:svc"), "req-1")
        for n in range(3):
            setup.limited.admit(("per_caller", "client:svc"), f"req-{n + 2}")
        setup.routes.admit(("client", "svc", "GET /audit/events"), "read-1")
        setup.routes.admit(("client", "svc", "GET /audit/events"), "read-2")
        for _ in range(4):
            setup.anonymous.admit()
        # Within the second, a decision may still take them: nothing is written.
        await setup.counts.sweep()
        assert _unrecorded(tmp_path) == []
        setup.clock.now += 1.0
        await setup.counts.sweep()

    _run(setup, scenario)
    (written,) = _unrecorded(tmp_path)
    assert written == [
        {"kind": "rate_limited", "count": 3, "likeRequestId": "req-1"},
        {"kind": "route_refused", "count": 1, "likeRequestId": "read-1"},
        {"kind": "unauthenticated", "count": 2, "likeRequestId": None},
    ]


def test_at_shutdown_every_count_left_is_written_before_the_seal(tmp_path: Path) -> None:
    setup = _Setup(tmp_path / "trail", keys=tmp_path / "keys")

    async def scenario() -> None:
        setup.limited.admit("k", "req-1")
        setup.limited.admit("k", "req-2")
        setup.counts.start()

    _run(setup, scenario)
    records = json_lines(tmp_path / "trail")
    kinds = [(r["type"], r.get("reason")) for r in records]
    # Within its second, yet written: nothing else would ever take it.
    assert kinds[-2:] == [("unrecorded", None), ("checkpoint", "shutdown")]
    assert records[-2]["counts"] == [{"kind": "rate_limited", "count": 1, "likeRequestId": "req-1"}]


def test_nothing_to_write_writes_nothing(tmp_path: Path) -> None:
    setup = _Setup(tmp_path)

    async def scenario() -> None:
        setup.limited.admit("k", "req-1")  # recorded: nothing counted
        setup.clock.now += 5
        await setup.counts.sweep()

    _run(setup, scenario)
    assert _unrecorded(tmp_path) == []


def test_many_counts_make_several_records_of_bounded_size(tmp_path: Path) -> None:
    setup = _Setup(tmp_path)
    keys = MAX_COUNTS_PER_RECORD + 7

    async def scenario() -> None:
        for n in range(keys):
            setup.limited.admit(n, f"req-{n}")
            setup.limited.admit(n, f"again-{n}")
        setup.clock.now += 1.0
        await setup.counts.sweep()

    _run(setup, scenario)
    written = _unrecorded(tmp_path)
    assert [len(counts) for counts in written] == [MAX_COUNTS_PER_RECORD, 7]
    assert [c["likeRequestId"] for counts in written for c in counts] == [
        f"req-{n}" for n in range(keys)
    ]


def test_counts_that_cannot_be_written_are_logged_lost_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    setup = _Setup(blocker / "trail")

    async def scenario() -> None:
        setup.limited.admit("k", "req-1")
        setup.limited.admit("k", "req-2")
        setup.limited.admit("k", "req-3")
        setup.clock.now += 1.0
        with structlog.testing.capture_logs() as logs:
            await setup.counts.sweep()
        lost = [e for e in logs if e["event"] == "audit_record_lost"]
        assert lost == [
            {
                "event": "audit_record_lost",
                "log_level": "error",
                "type": "unrecorded",
                "refusals": 2,
            }
        ]

    _run(setup, scenario)
