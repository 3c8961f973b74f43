"""The kill switch in-process: bars and lifts against the token cache, and against a fake of
the shared store (its bars, cutoffs and version in memory, or away): when a replica knows
the bars, what it forgets, and what it does with a bar the store lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import msgspec
from structlog.testing import capture_logs

from broker.cache import CacheKey, TokenCache
from broker.minting import IssuedToken
from broker.policy import Grant
from broker.revocations import Revocations, standing_bars
from broker.shared import UNAVAILABLE, Bar, Cutoff, _Unavailable
from tests.support.tokens import issued_token

AUDIENCE = "https://api.example.com"


@dataclass
class FakeStore:
    """The shared store's revocations as ``Revocations`` uses them: bars, cutoffs that only
    move forward, a version that moves with each change; ``away`` answers nothing, and
    ``refuse_writes`` takes reads but no change."""

    bars: dict[tuple[str, str], Bar] = field(default_factory=dict)
    cutoff_at: dict[tuple[str, str], float] = field(default_factory=dict)
    version: int | None = None
    away: bool = False
    refuse_writes: bool = False
    writes: int = 0
    # Another replica's change, made once just after the next read.
    after_read: Callable[[], Awaitable[object]] | None = None

    def _change(self, key: tuple[str, str], cutoff: float) -> float | None:
        if self.away or self.refuse_writes:
            return None
        self.writes += 1
        cutoff = max(cutoff, self.cutoff_at.get(key, -1.0) + 0.001)
        self.cutoff_at[key] = cutoff
        self.version = (self.version or 0) + 1
        return cutoff

    async def bar(self, bar: Bar, cutoff: float) -> float | None:
        stored = self._change((bar.kind, bar.value), cutoff)
        if stored is not None:
            self.bars[(bar.kind, bar.value)] = bar
        return stored

    async def lift(self, kind: str, value: str, cutoff: float) -> float | None:
        stored = self._change((kind, value), cutoff)
        if stored is not None:
            self.bars.pop((kind, value), None)
        return stored

    async def revocations_version(self) -> int | _Unavailable | None:
        return UNAVAILABLE if self.away else self.version

    async def revocation_state(self) -> tuple[list[Bar], list[Cutoff]] | _Unavailable:
        if self.away:
            return UNAVAILABLE
        state = (
            list(self.bars.values()),
            [Cutoff(kind, value, at) for (kind, value), at in self.cutoff_at.items()],
        )
        if self.after_read is not None:
            after, self.after_read = self.after_read, None
            await after()
        return state

    async def restore_unmarked(self, bar: Bar, cutoff: float) -> bool | None:
        key = (bar.kind, bar.value)
        if self.away or self.refuse_writes:
            return None
        if key in self.cutoff_at:
            return False
        self._change(key, cutoff)
        self.bars[key] = bar
        return True

    def lose_everything(self) -> None:
        """A restart without persistence, a flush."""
        self.bars, self.cutoff_at, self.version = {}, {}, None


def _revocations(
    store: FakeStore,
    cache: TokenCache | None = None,
    lost: list[Bar] | None = None,
    recorded: Callable[[], Awaitable[list[Bar]]] | None = None,
) -> Revocations:
    return Revocations(
        store,  # type: ignore[arg-type]
        cache,
        None if lost is None else lost.append,
        recorded,
    )


def _record(
    action: str,
    value: str,
    *,
    request_id: str = "r",
    applied: bool = True,
    scope: str = "deployment",
    since: str | None = "2026-12-07T10:00:00.000Z",
    at: str = "2026-12-07T10:00:00.000Z",
) -> bytes:
    """A revocation record's line as the writer writes it, chain header and all."""
    return msgspec.json.encode(
        {
            "v": 1,
            "type": "revocation",
            "instance": "replica-a",
            "seq": 7,
            "prev": "0" * 64,
            "time": at,
            "requestId": request_id,
            "by": "admin-svc",
            "action": action,
            "kind": "end_user",
            "value": value,
            **({"since": since} if action != "lift" else {}),
            "reason": "compromised",
            "scope": scope,
            **({} if applied else {"applied": False}),
        }
    )


def _token(user: str, begun_at: float) -> tuple[CacheKey, IssuedToken]:
    key = CacheKey.for_grant(Grant(AUDIENCE, user, 900, None))
    return key, issued_token(f"t-{user}", begun_at=begun_at)


def _bar(value: str, since: float | None = None) -> Bar:
    return Bar("end_user", value, time.time() if since is None else since, "x", "op")


def test_without_a_shared_store_a_bar_forgets_the_cached_tokens_and_a_lift_the_rest() -> None:
    cache = TokenCache(10, 0.5)
    revocations = Revocations(None, cache)
    key, token = _token("u1", time.time() - 1)
    other_key, other = _token("u2", time.time() - 1)
    cache.put(key, token)
    cache.put(other_key, other)

    async def scenario() -> list[object]:
        seen: list[object] = [revocations.known, revocations.scope]
        await revocations.bar(_bar("u1"))
        seen += [cache.get(key), cache.get(other_key) is other]
        seen.append(revocations.barred("svc", "u1", AUDIENCE) is not None)
        # A mint begun before the lift, kept after it, is not kept.
        _, in_flight = _token("u1", time.time() - 0.5)
        await revocations.lift("end_user", "u1")
        cache.put(key, in_flight)
        seen += [revocations.barred("svc", "u1", AUDIENCE), cache.get(key)]
        return seen

    assert asyncio.run(scenario()) == [True, "replica", None, True, True, None, None]


def test_a_bar_from_a_time_on_refuses_only_from_then() -> None:
    revocations = Revocations(None, None)

    async def scenario() -> tuple[bool, bool]:
        await revocations.bar(_bar("later", since=time.time() + 3600))
        await revocations.bar(_bar("now"))
        return (
            revocations.barred("svc", "later", AUDIENCE) is None,
            revocations.barred("svc", "now", AUDIENCE) is not None,
        )

    assert asyncio.run(scenario()) == (True, True)


def test_with_a_shared_store_the_bars_are_known_only_once_read() -> None:
    store = FakeStore()
    store.away = True
    revocations = _revocations(store)

    async def scenario() -> list[bool]:
        seen = [revocations.known]
        await revocations.refresh()
        seen.append(revocations.known)
        store.away = False
        await revocations.refresh()
        seen.append(revocations.known)
        # Known once, known for good: a later outage keeps the bars it read.
        store.away = True
        await revocations.refresh()
        seen.append(revocations.known)
        return seen

    assert asyncio.run(scenario()) == [False, False, True, True]


def test_a_bar_the_store_lost_is_kept_written_back_and_told_once() -> None:
    store = FakeStore()
    lost: list[Bar] = []
    holder = _revocations(store, lost=lost)

    async def scenario() -> list[object]:
        await holder.bar(_bar("kept"))
        store.lose_everything()
        store.refuse_writes = True  # the write-back fails, and is tried again
        await holder.refresh()
        await holder.refresh()
        seen: list[object] = [holder.barred("svc", "kept", AUDIENCE) is not None, len(lost)]
        store.refuse_writes = False
        await holder.refresh()
        seen += [("end_user", "kept") in store.bars, len(lost)]
        # Read back whole, then lost again later: a new loss, told again.
        await holder.refresh()
        store.lose_everything()
        await holder.refresh()
        seen += [("end_user", "kept") in store.bars, len(lost)]
        return seen

    assert asyncio.run(scenario()) == [True, 1, True, 1, True, 2]


def test_a_lift_elsewhere_ends_the_bar_even_from_a_clock_behind() -> None:
    store = FakeStore()
    lost: list[Bar] = []
    holder = _revocations(store, lost=lost)

    async def scenario() -> tuple[bool, list[Bar], bool]:
        await holder.bar(_bar("lifted"))
        await holder.refresh()
        # Another replica lifts it, its clock an hour behind: the cutoff still moves.
        await store.lift("end_user", "lifted", time.time() - 3600)
        await holder.refresh()
        return (
            holder.barred("svc", "lifted", AUDIENCE) is None,
            lost,
            ("end_user", "lifted") in store.bars,
        )

    assert asyncio.run(scenario()) == (True, [], False)


def test_the_trail_leaves_standing_each_values_last_applied_bar_not_lifted() -> None:
    lines = [  # oldest first
        _record("bar", "lifted", request_id="1"),
        _record("bar", "standing", request_id="2"),
        _record("lift", "lifted", request_id="3"),
        # A lift the shared store refused: asked, not done.
        _record("lift", "standing", request_id="4"),
        _record("lift", "standing", request_id="4", applied=False),
        # A bar the shared store refused, on a value never barred.
        _record("bar", "refused", request_id="5"),
        _record("bar", "refused", request_id="5", applied=False),
        # A write-back stands as a bar; a replica's own bar (no shared store) never did.
        _record("restore", "written-back", request_id=""),
        _record("bar", "one-replica", request_id="6", scope="replica"),
        # Not a record a broker writes: passed over.
        b'{"type": "revocation", "action": "bar"}',
        b"not json",
        _record("bar", "no-time", request_id="7", since="yesterday"),
        # Longer than an admin may give: not a broker's, and not kept (a hand-edited store
        # could otherwise make a starting replica hold 20,000 lines of 32 KiB in its sets).
        _record("bar", "v" * 2049, request_id="8"),
    ]
    bars = standing_bars(reversed(lines))
    assert sorted(bar.value for bar in bars) == ["standing", "written-back"]
    standing = next(bar for bar in bars if bar.value == "standing")
    assert (standing.kind, standing.by, standing.reason) == ("end_user", "admin-svc", "compromised")
    assert standing.since == 1796637600.0  # 2026-12-07T10:00:00Z


def test_a_replica_that_starts_after_the_store_lost_its_data_writes_back_the_trails_bars() -> None:
    """Every replica that held the bars is gone (all restarted together): only the audit
    trail still says they stand. A value with a cutoff in the store had a bar or a lift
    made since the loss, which the trail may not show yet: it is left as the store says."""
    store = FakeStore()
    lost: list[Bar] = []
    trail = [_bar("lost"), _bar("lifted-since"), _bar("barred-again")]

    async def recorded() -> list[Bar]:
        return trail

    starting = _revocations(store, lost=lost, recorded=recorded)

    async def scenario() -> list[object]:
        await store.lift("end_user", "lifted-since", time.time())
        await store.bar(_bar("barred-again", since=123.0), time.time())
        await starting.refresh()
        return [
            starting.known,
            [bar.value for bar in lost],
            sorted(value for _, value in store.bars),
            starting.barred("svc", "lost", AUDIENCE) is not None,
            starting.barred("svc", "lifted-since", AUDIENCE),
            next(b.since for b in starting.current() if b.value == "barred-again"),
        ]

    assert asyncio.run(scenario()) == [True, ["lost"], ["barred-again", "lost"], True, None, 123.0]


def test_the_trail_is_read_once_and_a_write_back_that_loses_a_race_is_read_from_the_store() -> None:
    store = FakeStore()
    reads: list[int] = []

    async def recorded() -> list[Bar]:
        reads.append(1)
        if len(reads) == 1:
            # Another replica writes the same bar back first.
            await store.restore_unmarked(_bar("lost"), time.time())
        return [_bar("lost")]

    starting = _revocations(store, lost=[], recorded=recorded)

    async def scenario() -> list[object]:
        await starting.refresh()
        seen: list[object] = [starting.known]
        await starting.refresh()
        seen += [starting.known, starting.barred("svc", "lost", AUDIENCE) is not None]
        await starting.refresh()
        return [*seen, len(reads), store.writes]

    assert asyncio.run(scenario()) == [False, True, True, 2, 1]


def test_a_trail_that_cannot_be_read_leaves_the_stores_bars_in_force() -> None:
    store = FakeStore()

    async def recorded() -> list[Bar]:
        raise TimeoutError

    starting = _revocations(store, recorded=recorded)

    async def scenario() -> tuple[bool, bool]:
        await store.bar(_bar("in-store"), time.time())
        await starting.refresh()
        return starting.known, starting.barred("svc", "in-store", AUDIENCE) is not None

    assert asyncio.run(scenario()) == (True, True)


def test_a_lift_elsewhere_just_after_a_read_is_not_taken_for_a_loss() -> None:
    """The bars and the cutoffs are read as one moment left them. Read one after the other,
    a lift made elsewhere in between left the bar read beside its lift's cutoff: the next
    read took the bar's absence for a loss, and put the lifted bar back."""
    store = FakeStore()
    lost: list[Bar] = []
    reader = _revocations(store, lost=lost)

    async def scenario() -> list[object]:
        await reader.refresh()
        await store.bar(_bar("lifted"), time.time())
        store.after_read = lambda: store.lift("end_user", "lifted", time.time())
        await reader.refresh()
        seen: list[object] = [reader.barred("svc", "lifted", AUDIENCE) is not None]
        await reader.refresh()
        return [*seen, reader.barred("svc", "lifted", AUDIENCE), lost, store.bars]

    assert asyncio.run(scenario()) == [True, None, [], {}]


def test_records_from_before_the_horizon_do_not_count() -> None:
    """A replica's own records (the embedded store) miss a lift made through another
    replica: only bars recent enough that such a lift's cutoff is still in the shared store
    are taken from them."""
    lines = [  # oldest first
        _record("bar", "long-ago", request_id="1", at="2026-10-01T00:00:00.000Z"),
        _record("bar", "lifted-long-ago", request_id="2", at="2026-10-01T00:00:00.000Z"),
        _record("lift", "lifted-long-ago", request_id="3", at="2026-10-02T00:00:00.000Z"),
        _record("bar", "lifted-long-ago", request_id="4", at="2026-12-01T00:00:00.000Z"),
        _record("bar", "recent", request_id="5", at="2026-12-06T00:00:00.000Z"),
    ]
    horizon = 1794355200.0  # 2026-11-11T00:00:00Z
    found = standing_bars(reversed(lines), horizon=horizon)
    assert sorted(bar.value for bar in found) == ["lifted-long-ago", "recent"]
    assert len(standing_bars(reversed(lines))) == 3


class _Faulty(FakeStore):
    """Raises on its first two reads: a fault of the broker's own, not the store away."""

    faults = 2
    answered: asyncio.Event | None = None

    async def revocation_state(self) -> tuple[list[Bar], list[Cutoff]] | _Unavailable:
        if self.faults:
            self.faults -= 1
            raise RuntimeError("a bug in reading the bars")
        if self.answered is not None:
            self.answered.set()
        return await super().revocation_state()


def test_a_fault_in_reading_the_bars_is_said_once_a_minute_and_the_next_read_goes_on() -> None:
    # It was suppressed unseen, while the bars in force stayed as they were.
    store = _Faulty()
    store.bars[("end_user", "u1")] = _bar("u1")
    revocations = _revocations(store)

    async def scenario() -> bool:
        store.answered = asyncio.Event()
        await revocations.start(0.01)
        await asyncio.wait_for(store.answered.wait(), 5.0)
        await asyncio.sleep(0.05)  # the read that answered goes on to apply the bars
        await revocations.close()
        return revocations.barred("svc", "u1", AUDIENCE) is not None

    with capture_logs() as logs:
        assert asyncio.run(scenario())
    failed = [entry for entry in logs if entry["event"] == "revocations_refresh_failed"]
    assert [(entry["error_type"], entry["events"]) for entry in failed] == [("RuntimeError", 1)]
