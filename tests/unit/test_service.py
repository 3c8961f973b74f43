"""The token service in-process: a fake exchange (it mints what it is asked, or misbehaves on
demand), a real cache and single-flight, a real audit writer on a temp dir. Every outcome's
record, the fail-closed rule, rate limits and floods, without HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from broker.audit.records import WITHHELD_REASON
from broker.audit.writer import AuditWriter
from broker.cache import TokenCache
from broker.callers import Caller
from broker.config import AuditSettings, BucketSettings, ClientSettings, SharedStateSettings
from broker.metrics import Metrics
from broker.minting import Minter
from broker.policy import Policy
from broker.ratelimit import RecordBudget, RepeatBudget, TokenBuckets
from broker.refusals import STATUS_OF, Refusal
from broker.revocations import Revocations
from broker.secrets import Secret
from broker.service import Attempt, Issued, Limits, RequestFacts, TokenService
from broker.shared import Bar, SharedState
from broker.upstream import UpstreamFailure
from tests.support.clock import ManualClock
from tests.support.exchange import FakeExchange
from tests.support.records import decision

AUDIENCE = "https://api.example.com"
T = TypeVar("T")


def _caller(**policy: Any) -> Caller:
    settings = ClientSettings(
        id="svc", key_sha256="a" * 64, audiences=[AUDIENCE], subjects="any", **policy
    )
    return Caller(
        id="svc",
        method="client_key",
        policy=Policy.for_caller(settings, 900),
        subject="svc",
        cache=settings.cache,
    )


class Harness:
    def __init__(
        self,
        directory: Path,
        *,
        write_timeout_seconds: float = 2.0,
        clock: ManualClock | None = None,
        shared: SharedState | None = None,
        **limits: BucketSettings | None,
    ) -> None:
        self.directory = directory
        self.exchange = FakeExchange()
        self.audit = AuditWriter(
            AuditSettings(
                dir=str(directory), fsync=False, write_timeout_seconds=write_timeout_seconds
            )
        )
        generous = BucketSettings(rate_per_second=1000, burst=1000)
        self.cache = TokenCache(100, 0.5)
        self.revocations = Revocations(shared, self.cache)
        self.service = TokenService(
            Minter(self.exchange, self.cache, Metrics()),  # type: ignore[arg-type]
            self.audit,
            Limits(
                TokenBuckets(limits.get("caller") or generous),
                TokenBuckets(limits.get("end_user") or generous),
                RecordBudget(limits.get("anonymous") or generous),
                limited_records=RepeatBudget(clock=clock or time.monotonic),
            ),
            Metrics(),
            STATUS_OF,
            self.revocations,
        )

    def records(self) -> list[dict[str, Any]]:
        return [
            json.loads(line)
            for path in sorted(self.directory.glob("*.jsonl"))
            for line in path.read_text().splitlines()
            if '"type":"decision"' in line
        ]

    async def ask(
        self,
        body: dict[str, Any],
        caller: Caller | None = None,
        request_id: str = "r",
        **facts: Any,
    ) -> Issued:
        attempt = Attempt(RequestFacts(request_id=request_id, source="127.0.0.1", **facts))
        await self.service.admit(attempt, caller or _caller())
        return await self.service.issue(attempt, json.dumps(body).encode())


def _run(harness: Harness, scenario: Callable[[], Awaitable[T]]) -> T:
    async def run() -> T:
        await harness.audit.start()
        try:
            return await scenario()
        finally:
            await harness.audit.close()

    return asyncio.run(run())


async def _refused(call: Awaitable[object]) -> Refusal:
    with pytest.raises(Refusal) as refused:
        await call
    return refused.value


def test_an_issued_token_is_on_the_record_before_it_is_returned(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    body = {"audience": AUDIENCE, "externalUserId": "u1"}

    async def scenario() -> tuple[Issued, Issued]:
        return await harness.ask(body), await harness.ask(body)

    first, second = _run(harness, scenario)
    records = harness.records()
    assert [(r["outcome"], r["cache"]) for r in records] == [("issued", "miss"), ("issued", "hit")]
    assert records[0]["tokenSha256"] == first.token.sha256
    assert records[0]["tokenId"] == "jti-1"
    assert second.token.sha256 == first.token.sha256
    text = "".join(p.read_text() for p in tmp_path.glob("*.jsonl"))
    assert first.token.token not in text
    assert 0 < first.expires_in <= 900


def test_no_token_without_its_record(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the audit directory should be")
    harness = Harness(blocked)

    async def scenario() -> Refusal:
        return await _refused(harness.ask({"audience": AUDIENCE, "externalUserId": "u1"}))

    refusal = _run(harness, scenario)
    assert refusal.code == "audit_unavailable"
    assert refusal.retry_after == 1
    assert harness.exchange.calls == 1


@pytest.mark.parametrize(
    ("body", "code", "outcome", "field"),
    [
        (
            {"audience": AUDIENCE, "externalUserId": "u", "expiresIn": "300"},
            "invalid_request",
            "rejected",
            "expiresIn",
        ),
        (
            {"audience": "https://evil.example", "externalUserId": "u"},
            "audience_not_allowed",
            "denied",
            "audience",
        ),
        (
            {"audience": AUDIENCE, "externalUserId": "u", "permissions": ["admin"]},
            "permission_not_allowed",
            "denied",
            "permissions",
        ),
    ],
)
def test_refusals_are_recorded_with_their_field(
    tmp_path: Path, body: dict[str, Any], code: str, outcome: str, field: str
) -> None:
    harness = Harness(tmp_path)

    async def scenario() -> Refusal:
        caller = _caller(permissions=["read:responses"])
        return await _refused(harness.ask(body, caller))

    refusal = _run(harness, scenario)
    assert (refusal.code, refusal.outcome) == (code, outcome)
    assert refusal.errors is not None
    assert refusal.errors[0].field == field
    (record,) = harness.records()
    assert (record["code"], record["outcome"], record["status"]) == (code, outcome, STATUS_OF[code])
    assert harness.exchange.calls == 0


def test_upstream_failures_and_mismatches_are_recorded_as_failed(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    body = {"audience": AUDIENCE, "externalUserId": "u1"}

    async def scenario() -> tuple[Refusal, Refusal]:
        harness.exchange.fail = UpstreamFailure("rate_limited", status=429, retry_after=7)
        limited = await _refused(harness.ask(body, fresh=True))
        harness.exchange.fail = None
        harness.exchange.claims = {"aud": "https://attacker.example"}
        mismatch = await _refused(harness.ask(body, fresh=True))
        return limited, mismatch

    limited, mismatch = _run(harness, scenario)
    assert (limited.code, limited.retry_after) == ("upstream_rate_limited", 7)
    assert mismatch.code == "upstream_token_mismatch"
    records = harness.records()
    assert [(r["code"], r["upstreamStatus"]) for r in records] == [
        ("upstream_rate_limited", 429),
        ("upstream_token_mismatch", 200),
    ]
    assert all(r["tokenSha256"] is None for r in records)


def test_a_token_id_the_trail_cannot_hold_is_a_recorded_mismatch(tmp_path: Path) -> None:
    # A lone surrogate, as JSON's escapes can spell it: the issued record failed to encode,
    # and the request ended in a 500 with no record at all.
    harness = Harness(tmp_path)
    harness.exchange.claims = {"jti": "\ud800"}
    body = {"audience": AUDIENCE, "externalUserId": "u1"}
    refusal = _run(harness, lambda: _refused(harness.ask(body)))
    assert refusal.code == "upstream_token_mismatch"
    assert [(r["outcome"], r["code"], r["tokenId"]) for r in harness.records()] == [
        ("failed", "upstream_token_mismatch", None)
    ]


def test_a_fault_of_the_brokers_own_is_a_500_on_the_record(tmp_path: Path) -> None:
    # Whatever the bug, no token leaves, and the request is on the trail like any other
    # that got none: a 500 used to leave no record, so the trail could not account for it.
    harness = Harness(tmp_path)
    harness.exchange.fail = RuntimeError("a bug")
    body = {"audience": AUDIENCE, "externalUserId": "u1"}
    refusal = _run(harness, lambda: _refused(harness.ask(body)))
    assert (refusal.code, STATUS_OF[refusal.code]) == ("internal_error", 500)
    assert "a bug" not in refusal.detail
    assert [(r["outcome"], r["code"], r["status"], r["reason"]) for r in harness.records()] == [
        ("failed", "internal_error", 500, "RuntimeError")
    ]


def test_identical_concurrent_misses_make_one_exchange(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    harness.exchange.delay = 0.05
    body = {"audience": AUDIENCE, "externalUserId": "burst"}

    async def scenario() -> list[Issued]:
        return list(await asyncio.gather(*(harness.ask(body) for _ in range(20))))

    issued = _run(harness, scenario)
    assert harness.exchange.calls == 1
    assert len({i.token.sha256 for i in issued}) == 1
    caches = sorted(r["cache"] for r in harness.records())
    assert caches == ["joined"] * 19 + ["miss"]


def test_a_rate_limit_flood_is_recorded_once_a_second_and_the_rest_counted(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    harness = Harness(tmp_path, clock=clock, caller=BucketSettings(rate_per_second=0.01, burst=2))
    body = {"audience": AUDIENCE, "externalUserId": "u1"}

    async def scenario() -> list[Refusal]:
        await harness.ask(body)
        await harness.ask(body)
        refused = [await _refused(harness.ask(body)) for _ in range(10)]
        clock.now += 1.0
        refused.append(await _refused(harness.ask(body)))
        return refused

    refusals = _run(harness, scenario)
    assert {r.code for r in refusals} == {"rate_limited"}
    assert [r.quiet for r in refusals] == [False] + [True] * 9 + [False]
    records = harness.records()
    assert [r["code"] for r in records] == ["issued", "issued", "rate_limited", "rate_limited"]
    # The auditor can count every refusal: the nine only counted are in the next record.
    assert [r["unrecordedBefore"] for r in records[2:]] == [None, 9]


def test_unauthenticated_records_over_budget_are_counted_into_the_next(tmp_path: Path) -> None:
    harness = Harness(tmp_path, anonymous=BucketSettings(rate_per_second=5, burst=2))

    async def scenario() -> list[Refusal]:
        refusals = []
        for _ in range(6):
            attempt = Attempt(RequestFacts(request_id="r", source="203.0.113.9"))
            refusals.append(
                await harness.service.refuse(
                    attempt, Refusal("unauthenticated", "no", outcome="denied", reason="x")
                )
            )
        await asyncio.sleep(0.25)
        attempt = Attempt(RequestFacts(request_id="r", source="203.0.113.9"))
        refusals.append(
            await harness.service.refuse(
                attempt, Refusal("unauthenticated", "no", outcome="denied", reason="x")
            )
        )
        return refusals

    refusals = _run(harness, scenario)
    assert [r.quiet for r in refusals] == [False, False, True, True, True, True, False]
    records = harness.records()
    assert [r["unrecordedBefore"] for r in records] == [None, None, 4]


def test_a_request_cut_off_at_shutdown_is_recorded(tmp_path: Path) -> None:
    harness = Harness(tmp_path)

    async def scenario() -> Refusal:
        attempt = Attempt(RequestFacts(request_id="cut", source=None))
        await harness.service.admit(attempt, _caller())
        return await harness.service.interrupted(attempt)

    refusal = _run(harness, scenario)
    assert (refusal.code, refusal.retry_after) == ("shutting_down", 1)
    (record,) = harness.records()
    assert (record["requestId"], record["outcome"], record["reason"]) == (
        "cut",
        "failed",
        "shutdown_grace_expired",
    )


def test_a_bar_refuses_at_once_drops_cached_tokens_and_a_lift_undoes_it(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    body = {"audience": AUDIENCE, "externalUserId": "barred"}
    other = {"audience": AUDIENCE, "externalUserId": "not-barred"}

    async def scenario() -> list[str]:
        seen = []
        await harness.ask(body)
        await harness.ask(other)
        assert len(harness.cache) == 2
        scope = await harness.revocations.bar(Bar("end_user", "barred", time.time(), "x", "op"))
        assert scope == "replica"
        assert len(harness.cache) == 1  # the barred user's token is gone, the other stays
        seen.append((await _refused(harness.ask(body))).code)
        seen.append((await harness.ask(other)).cache)
        # A bar from a time on: not yet in force (its cached tokens are dropped already).
        await harness.revocations.bar(Bar("audience", AUDIENCE, time.time() + 3600, "later", "op"))
        seen.append((await harness.ask(other)).cache)
        await harness.revocations.lift("end_user", "barred")
        seen.append((await harness.ask(body)).cache)
        await harness.revocations.bar(Bar("caller", "svc", time.time(), "x", "op"))
        seen.append((await _refused(harness.ask(other))).code)
        return seen

    assert _run(harness, scenario) == ["revoked", "hit", "miss", "miss", "revoked"]
    refused = [r for r in harness.records() if r["outcome"] == "denied"]
    assert [(r["code"], r["reason"]) for r in refused] == [
        ("revoked", "barred by op: x"),
        ("revoked", "barred by op: x"),
    ]


def test_a_token_minted_across_a_bar_and_its_lift_is_not_served_after_the_lift(
    tmp_path: Path,
) -> None:
    harness = Harness(tmp_path)
    harness.exchange.delay = 0.3
    body = {"audience": AUDIENCE, "externalUserId": "in-flight"}

    async def scenario() -> tuple[Issued, Issued]:
        asked = asyncio.create_task(harness.ask(body))
        await asyncio.sleep(0.1)  # its exchange is under way
        await harness.revocations.bar(Bar("end_user", "in-flight", time.time(), "x", "op"))
        await harness.revocations.lift("end_user", "in-flight")
        before = await asked
        harness.exchange.delay = 0
        return before, await harness.ask(body)

    before, after = _run(harness, scenario)
    assert (before.cache, after.cache) == ("miss", "miss")
    assert after.token.sha256 != before.token.sha256


@pytest.mark.parametrize(
    ("kind", "value"), [("caller", "svc"), ("end_user", "in-flight"), ("audience", AUDIENCE)]
)
def test_a_bar_made_while_a_token_is_obtained_withholds_it(
    tmp_path: Path, kind: str, value: str
) -> None:
    harness = Harness(tmp_path)
    body = {"audience": AUDIENCE, "externalUserId": "in-flight"}

    async def scenario() -> Refusal:
        harness.exchange.gate = asyncio.Event()
        asked = asyncio.create_task(harness.ask(body))
        await harness.exchange.entered.wait()  # its exchange is under way
        await harness.revocations.bar(Bar(kind, value, time.time(), "stolen", "op"))
        harness.exchange.gate.set()
        return await _refused(asked)

    refused = _run(harness, scenario)
    assert refused.code == "revoked"
    [record] = harness.records()
    assert (record["outcome"], record["code"], record["reason"]) == (
        "denied",
        "revoked",
        "barred by op: stolen",
    )
    assert record["upstreamStatus"] == 200  # the exchange was called; its token not handed out
    assert record["tokenSha256"] is None
    assert harness.exchange.calls == 1


def test_a_replica_that_has_not_read_the_bars_issues_nothing(tmp_path: Path) -> None:
    away = SharedState(
        SharedStateSettings(replicas=2, timeout_ms=200),
        Secret("redis://127.0.0.1:1/0"),  # nothing listens there
        os.urandom(32),
        Metrics(),
    )
    harness = Harness(tmp_path, shared=away)
    body = {"audience": AUDIENCE, "externalUserId": "anyone"}

    async def scenario() -> tuple[bool, Refusal, bool]:
        try:
            await harness.revocations.start(3600)
            refused = await _refused(harness.ask(body))
            now = _now(harness, body)
            return harness.revocations.known, refused, now is None
        finally:
            await harness.revocations.close()
            await away.close()

    known, refused, declined = _run(harness, scenario)
    assert not known
    assert (refused.code, refused.retry_after, refused.reason) == (
        "shared_state_unavailable",
        1,
        "revocations_unread",
    )
    assert declined  # the callback path agrees: it leaves the request to issue()
    assert harness.exchange.calls == 0
    [record] = harness.records()
    assert (record["outcome"], record["code"]) == ("failed", "shared_state_unavailable")


# --- issue_now: the cache hit without a coroutine --------------------------------------------


def _now(
    harness: Harness, body: dict[str, Any], caller: Caller | None = None, **facts: Any
) -> asyncio.Future[Issued | Refusal] | None:
    """``issue_now`` as the server calls it: the outcome's future, or None if it declined."""
    outcome: asyncio.Future[Issued | Refusal] = asyncio.get_running_loop().create_future()
    attempt = Attempt(
        RequestFacts(request_id="now", source="127.0.0.1", **facts), caller or _caller()
    )
    if not harness.service.issue_now(attempt, json.dumps(body).encode(), outcome.set_result):
        return None
    return outcome


def test_issue_now_records_and_answers_a_hit_as_issue_does(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    body = {"audience": AUDIENCE, "externalUserId": "u1", "expiresIn": 600}

    async def scenario() -> tuple[Issued, Issued | Refusal]:
        await harness.ask(body)  # the miss that fills the cache
        awaited = await harness.ask(body)
        outcome = _now(harness, body)
        assert outcome is not None
        return awaited, await outcome

    awaited, now = _run(harness, scenario)
    assert isinstance(now, Issued)
    assert (now.token, now.grant, now.cache) == (awaited.token, awaited.grant, "hit")
    assert abs(now.expires_in - awaited.expires_in) <= 1
    _, by_issue, by_now = harness.records()
    assert by_now["requestId"] == "now"
    assert decision(by_now) == decision(by_issue)


def test_issue_now_declines_having_spent_and_recorded_nothing(tmp_path: Path) -> None:
    """Every case it does not take is left whole to admit() and issue(): no bucket spent, no
    record written, nothing minted."""
    harness = Harness(
        tmp_path,
        caller=BucketSettings(rate_per_second=0.01, burst=3),
        end_user=BucketSettings(rate_per_second=0.01, burst=2),
    )
    body = {"audience": AUDIENCE, "externalUserId": "u1"}
    other_user = {"audience": AUDIENCE, "externalUserId": "u2"}

    async def scenario() -> list[bool]:
        declined = [
            _now(harness, body) is None,  # a miss: nothing cached yet
        ]
        await harness.ask(body)  # caller 1 of 3, end user u1 1 of 2
        declined += [
            _now(harness, body, fresh=True) is None,  # Cache-Control: no-cache
            _now(harness, {**body, "expiresIn": "300"}) is None,  # invalid
            _now(harness, {**body, "audience": "https://evil.example"}) is None,  # denied
            _now(harness, body, on_behalf_of="someone-else") is None,  # conflicting user
            _now(harness, other_user) is None,  # a miss for u2
            _now(harness, body, _caller(cache=False)) is None,  # a caller that never caches
        ]
        # Still 2 of 3 for the caller and 1 of 2 for u1: nothing above spent any.
        assert _now(harness, body) is not None  # caller 2 of 3, u1 2 of 2
        declined.append(_now(harness, body) is None)  # u1's bucket is empty now
        await harness.ask(other_user)  # caller 3 of 3
        declined.append(_now(harness, other_user) is None)  # the caller's is empty too
        refusal = await _refused(harness.ask(other_user))
        assert refusal.code == "rate_limited"
        return declined

    assert all(_run(harness, scenario))
    assert harness.exchange.calls == 2
    assert [(r["externalUserId"], r["cache"], r["code"]) for r in harness.records()] == [
        ("u1", "miss", "issued"),
        ("u1", "hit", "issued"),
        ("u2", "miss", "issued"),
        (None, None, "rate_limited"),  # the caller's limit comes before the body is read
    ]


def test_issue_now_declines_a_revoked_grant(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    body = {"audience": AUDIENCE, "externalUserId": "u1"}

    async def scenario() -> bool:
        await harness.ask(body)
        # A bar from a time on keeps the cached token but is in force for new requests once
        # that time has passed.
        await harness.revocations.bar(Bar("end_user", "u1", time.time() + 0.05, "x", "op"))
        await asyncio.sleep(0.1)
        return _now(harness, body) is None

    assert _run(harness, scenario)
    assert len(harness.records()) == 1


def test_issue_now_withholds_the_token_when_its_record_fails(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    body = {"audience": AUDIENCE, "externalUserId": "u1"}

    def break_the_trail() -> None:
        # The next write fails: the directory is gone and a file stands in its place.
        for path in tmp_path.glob("*"):
            path.unlink()
        harness.audit._close_file()
        tmp_path.rmdir()
        tmp_path.write_text("not a directory")

    async def scenario() -> Issued | Refusal:
        await harness.ask(body)
        break_the_trail()
        outcome = _now(harness, body)
        assert outcome is not None
        return await outcome

    outcome = _run(harness, scenario)
    assert isinstance(outcome, Refusal)
    assert (outcome.code, outcome.retry_after, outcome.outcome) == (
        "audit_unavailable",
        1,
        "failed",
    )


@pytest.mark.parametrize("path", ["issue", "issue_now"])
def test_a_token_withheld_after_a_late_write_has_a_second_record_saying_so(
    tmp_path: Path, path: str
) -> None:
    # The write of the issued record outlives its deadline: the answer is 503, but the line
    # lands all the same. The trail must not leave it at "issued": the same request's next
    # record, with the same token fingerprint, says the token was withheld.
    harness = Harness(tmp_path, write_timeout_seconds=0.2)
    body = {"audience": AUDIENCE, "externalUserId": "u1"}
    durably = harness.audit._write_durably

    def slow(data: bytes) -> None:
        time.sleep(0.8)
        durably(data)

    async def scenario() -> Issued | Refusal:
        await harness.ask(body)
        harness.audit._write_durably = slow  # type: ignore[method-assign]
        if path == "issue":
            return await _refused(harness.ask(body))
        outcome = _now(harness, body)
        assert outcome is not None
        return await outcome

    refusal = _run(harness, scenario)
    assert isinstance(refusal, Refusal)
    assert (refusal.code, refusal.outcome) == ("audit_unavailable", "failed")
    first, late, withheld = harness.records()
    assert (late["outcome"], late["cache"]) == ("issued", "hit")
    assert late["seq"] < withheld["seq"]
    assert withheld["requestId"] == late["requestId"]
    assert (withheld["outcome"], withheld["code"], withheld["status"]) == (
        "failed",
        "audit_unavailable",
        503,
    )
    assert withheld["reason"] == WITHHELD_REASON
    assert withheld["tokenSha256"] == late["tokenSha256"] == first["tokenSha256"]
    assert withheld["tokenId"] == late["tokenId"]
    assert (withheld["caller"], withheld["externalUserId"]) == (late["caller"], "u1")


def test_behind_a_hung_write_late_records_are_withdrawn_and_a_refused_one_leaves_none(
    tmp_path: Path,
) -> None:
    # r2's write hangs; r3 waits behind it until its own deadline; r4 comes after that and
    # is refused at once without being queued. r2's and r3's issued records land late, each
    # followed by its withdrawal; r4 has none to withdraw, and writes nothing.
    harness = Harness(tmp_path, write_timeout_seconds=0.3)
    body = {"audience": AUDIENCE, "externalUserId": "u1"}
    durably = harness.audit._write_durably

    def slow(data: bytes) -> None:
        time.sleep(1.2)  # r4 comes 0.5 s in: far from both the deadlines and this
        durably(data)

    async def scenario() -> list[Refusal]:
        await harness.ask(body, request_id="r1")
        harness.audit._write_durably = slow  # type: ignore[method-assign]
        second = asyncio.create_task(_refused(harness.ask(body, request_id="r2")))
        await asyncio.sleep(0.05)
        third = asyncio.create_task(_refused(harness.ask(body, request_id="r3")))
        await asyncio.sleep(0.45)
        started = time.monotonic()
        fourth = await _refused(harness.ask(body, request_id="r4"))
        assert time.monotonic() - started < 0.25  # less than a deadline: told at once
        return [await second, await third, fourth]

    refusals = _run(harness, scenario)
    assert [r.code for r in refusals] == ["audit_unavailable"] * 3
    records = harness.records()
    assert [(r["requestId"], r["outcome"]) for r in records] == [
        ("r1", "issued"),
        ("r2", "issued"),
        ("r3", "issued"),
        ("r2", "failed"),
        ("r3", "failed"),
    ]
    for record in records[3:]:
        assert (record["code"], record["reason"]) == ("audit_unavailable", WITHHELD_REASON)
        assert record["tokenSha256"] == records[0]["tokenSha256"]


_JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJl"
_CLIENT_KEY = "bk_" + "K" * 43


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"audience": f"{AUDIENCE}/?t={_JWT}", "externalUserId": "u"}, "audience"),
        ({"audience": AUDIENCE, "externalUserId": _CLIENT_KEY}, "externalUserId"),
        ({"audience": AUDIENCE, "externalUserId": "u", "permissions": [_JWT]}, "permissions"),
    ],
)
def test_a_token_or_a_client_key_in_a_request_never_reaches_the_trail(
    tmp_path: Path, body: dict[str, Any], field: str
) -> None:
    # The records keep a request's audience, end user and permissions for good: each was
    # recorded as sent, a denied audience too, and an end user shaped like a client key got a
    # token and its record.
    harness = Harness(tmp_path)

    async def scenario() -> Refusal:
        return await _refused(harness.ask(body, _caller()))

    refusal = _run(harness, scenario)
    assert (refusal.code, refusal.outcome) == ("invalid_request", "rejected")
    assert refusal.errors is not None
    assert refusal.errors[0].field == field
    assert refusal.errors[0].message.endswith(
        "(holds a token or a client key, which the audit trail must never keep)"
    )
    (record,) = harness.records()
    assert _JWT not in json.dumps(record)
    assert _CLIENT_KEY not in json.dumps(record)
    assert harness.exchange.calls == 0
