"""The token cache and single-flight, in-process."""

from __future__ import annotations

import asyncio
import time

import pytest

from broker.cache import CacheKey, SingleFlight, TokenCache
from broker.minting import IssuedToken
from broker.policy import Grant
from tests.support.tokens import issued_token

GRANT = Grant("https://api.example.com", "user_1", 900, None)


def _token(expires_in: float, name: str = "t", begun_at: float | None = None) -> IssuedToken:
    return issued_token(name, expires_in=expires_in, begun_at=begun_at)


def test_a_token_is_served_while_enough_of_its_life_remains() -> None:
    cache = TokenCache(10, 0.5)
    key = CacheKey.for_grant(GRANT)
    fresh = _token(900)
    cache.put(key, fresh)
    assert cache.get(key) is fresh
    # Equal grants give equal keys: another request for the same grant is a hit.
    again = Grant(GRANT.audience, GRANT.external_user_id, GRANT.expires_in, GRANT.permissions)
    assert cache.get(CacheKey.for_grant(again)) is fresh


def test_a_token_past_the_ratio_is_neither_kept_nor_served() -> None:
    cache = TokenCache(10, 0.5)
    key = CacheKey.for_grant(GRANT)
    cache.put(key, _token(400))  # less than half of 900 s left
    assert cache.get(key) is None
    assert len(cache) == 0


def test_keys_differ_by_every_field_of_the_grant() -> None:
    cache = TokenCache(10, 0.5)
    cache.put(CacheKey.for_grant(GRANT), _token(900))
    for other in (
        Grant("https://other.example.com", "user_1", 900, None),
        Grant(GRANT.audience, "user_2", 900, None),
        Grant(GRANT.audience, "user_1", 1800, None),
        Grant(GRANT.audience, "user_1", 900, ("read",)),
    ):
        assert cache.get(CacheKey.for_grant(other)) is None


def test_the_cache_is_bounded_and_drops_by_user_or_audience() -> None:
    cache = TokenCache(3, 0.5)
    for index in range(10):
        cache.put(CacheKey.for_grant(Grant(GRANT.audience, f"u{index}", 900, None)), _token(900))
    assert len(cache) == 3
    now = time.time() + 1
    assert cache.forget("end_user", "u8", now) == 1
    assert cache.get(CacheKey.for_grant(Grant(GRANT.audience, "u8", 900, None))) is None
    assert cache.forget("caller", "svc", now) == 0  # tokens are not cached by caller
    assert cache.forget("audience", GRANT.audience, now) == 2
    assert len(cache) == 0


def test_a_forgotten_token_is_not_kept_again_but_a_newer_one_is() -> None:
    cache = TokenCache(10, 0.5)
    key = CacheKey.for_grant(GRANT)
    other = CacheKey.for_grant(Grant(GRANT.audience, "user_2", 900, None))
    cutoff = time.time()
    cache.put(key, _token(900, "kept-before", begun_at=cutoff - 5))
    cache.put(other, _token(900, "someone-else", begun_at=cutoff - 5))
    assert cache.forget("end_user", GRANT.external_user_id, cutoff) == 1
    # A mint that began before the cutoff and ends after it (or another replica's token
    # from before it) is neither kept nor taken for fresh.
    in_flight = _token(900, "in-flight", begun_at=cutoff - 1)
    assert cache.forgotten(key, in_flight.begun_at)
    cache.put(key, in_flight)
    assert cache.get(key) is None
    after = _token(900, "after", begun_at=cutoff + 1)
    assert not cache.forgotten(key, after.begun_at)
    cache.put(key, after)
    assert cache.get(key) is after
    # Only that end user's: another's token stays, and is kept again.
    assert cache.get(other) is not None
    # An audience's cutoff covers every end user of it.
    assert cache.forget("audience", GRANT.audience, cutoff + 2) == 2
    assert cache.forgotten(other, cutoff + 1)
    assert not cache.forgotten(other, cutoff + 3)
    # An earlier cutoff than the one held changes nothing (a replica reading the store late).
    assert cache.forget("end_user", GRANT.external_user_id, cutoff - 100) == 0
    assert cache.forgotten(key, cutoff - 1)


def test_cutoffs_older_than_the_longest_lifetime_are_let_go() -> None:
    cache = TokenCache(10, 0.5)
    long_ago = time.time() - 3_000_000  # beyond 30 days: no token from before can be served
    for index in range(100):
        cache.forget("end_user", f"u{index}", long_ago)
    cache.forget("end_user", "recent", time.time())
    assert cache.forgotten(CacheKey.for_grant(Grant(GRANT.audience, "recent", 900, None)), 0.0)
    assert not cache.forgotten(CacheKey.for_grant(Grant(GRANT.audience, "u3", 900, None)), 0.0)


def test_concurrent_calls_with_one_key_share_one_run() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    runs = 0

    async def call() -> int:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.01)
        return 42

    async def scenario() -> list[tuple[int, bool]]:
        results = await asyncio.gather(*(flight.run("k", call) for _ in range(20)))
        assert len(flight) == 0
        return list(results)

    results = asyncio.run(scenario())
    assert runs == 1
    assert [value for value, _ in results] == [42] * 20
    assert sorted(joined for _, joined in results) == [False] + [True] * 19


def test_a_failure_reaches_every_caller_and_the_next_call_runs_again() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    runs = 0

    async def failing() -> int:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.01)
        raise RuntimeError("upstream down")

    async def scenario() -> None:
        outcomes = await asyncio.gather(
            *(flight.run("k", failing) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(o, RuntimeError) for o in outcomes)
        with pytest.raises(RuntimeError):
            await flight.run("k", failing)

    asyncio.run(scenario())
    assert runs == 2


def test_a_caller_that_goes_away_does_not_cancel_the_run_for_the_others() -> None:
    flight: SingleFlight[str, int] = SingleFlight()

    async def slow() -> int:
        await asyncio.sleep(0.05)
        return 7

    async def scenario() -> int:
        leaving = asyncio.create_task(flight.run("k", slow))
        staying = asyncio.create_task(flight.run("k", slow))
        await asyncio.sleep(0.01)
        leaving.cancel()
        value, joined = await staying
        assert joined
        assert leaving.cancelled()
        return value

    assert asyncio.run(scenario()) == 7
