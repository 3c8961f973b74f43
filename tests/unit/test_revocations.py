"""The kill switch in-process: bars and lifts against the token cache, and against a fake of
the shared store (its bars, cutoffs and version in memory, or away): when a replica knows
the bars, what it forgets, and what it does with a bar the store lost."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from broker.cache import CacheKey, TokenCache
from broker.minting import IssuedToken
from broker.policy import Grant
from broker.revocations import Revocations
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

    async def revocations(self) -> list[Bar] | _Unavailable:
        return UNAVAILABLE if self.away else list(self.bars.values())

    async def cutoffs(self) -> list[Cutoff] | _Unavailable:
        if self.away:
            return UNAVAILABLE
        return [Cutoff(kind, value, at) for (kind, value), at in self.cutoff_at.items()]

    def lose_everything(self) -> None:
        """A restart without persistence, a flush."""
        self.bars, self.cutoff_at, self.version = {}, {}, None


def _revocations(
    store: FakeStore, cache: TokenCache | None = None, lost: list[Bar] | None = None
) -> Revocations:
    return Revocations(store, cache, None if lost is None else lost.append)  # type: ignore[arg-type]


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
