"""Minting in-process: what a token from the exchange must say before it is served (claim
checks), and where a token comes from (cache, single-flight, a fresh mint, no cache)."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import msgspec
import pytest

from broker.cache import TokenCache
from broker.config import SharedStateSettings
from broker.metrics import Metrics
from broker.minting import Minter, TokenMismatch
from broker.policy import Grant
from broker.shared import CachedToken
from tests.support.exchange import FakeExchange

AUDIENCE = "https://api.example.com"
OPEN = Grant(AUDIENCE, "user_1", 900, None)
RESTRICTED = Grant(AUDIENCE, "user_1", 900, ("read",))


def _minter(exchange: FakeExchange, cache: bool = True) -> Minter:
    return Minter(exchange, TokenCache(100, 0.5) if cache else None, Metrics())  # type: ignore[arg-type]


def _mismatch(grant: Grant, *, without: set[str] | None = None, **claims: Any) -> str:
    exchange = FakeExchange()
    exchange.claims = claims
    exchange.without = without or set()
    with pytest.raises(TokenMismatch) as raised:
        asyncio.run(_minter(exchange).obtain(grant))
    return raised.value.reason


@pytest.mark.parametrize(
    ("grant", "claims", "without", "reason"),
    [
        (OPEN, {"aud": "https://other.example.com"}, set(), "aud does not match the grant"),
        (OPEN, {"sub": "someone_else"}, set(), "sub does not match the grant"),
        (OPEN, {}, {"exp"}, "exp is missing or not an integer"),
        (OPEN, {"exp": "soon"}, set(), "exp is missing or not an integer"),
        (OPEN, {"exp": True}, set(), "exp is missing or not an integer"),
        (OPEN, {"exp": int(time.time()) - 5}, set(), "already expired"),
        (OPEN, {"exp": int(time.time()) + 3600}, set(), "lives longer than granted"),
        (RESTRICTED, {}, {"permissions"}, "has no permissions claim"),
        (RESTRICTED, {"permissions": "read"}, set(), "permissions is not a list of strings"),
        (RESTRICTED, {"permissions": ["read", "write"]}, set(), "beyond the grant"),
        # The trail holds the jti: a lone surrogate (a JSON escape no UTF-8 encoder takes)
        # made the record fail to encode, and the request a 500 without one.
        (OPEN, {"jti": "\ud800"}, set(), "jti is not a token id of 1 to 256"),
        (OPEN, {"jti": "a\x00b"}, set(), "jti is not a token id"),
        (OPEN, {"jti": ""}, set(), "jti is not a token id"),
        (OPEN, {"jti": "j" * 257}, set(), "jti is not a token id"),
    ],
)
def test_a_token_that_does_not_match_the_grant_is_refused(
    grant: Grant, claims: dict[str, Any], without: set[str], reason: str
) -> None:
    assert reason in _mismatch(grant, without=without, **claims)


def test_an_audience_list_of_one_and_unknown_extra_claims_are_fine() -> None:
    exchange = FakeExchange()
    exchange.claims = {"aud": [AUDIENCE], "org": "o_1"}
    token, source = asyncio.run(_minter(exchange).obtain(OPEN))
    assert source == "miss"
    assert token.jti == "jti-1"
    assert token.expires_at > time.time() + 800


def test_a_token_comes_from_the_cache_then_fresh_when_asked() -> None:
    exchange = FakeExchange()
    minter = _minter(exchange)

    async def scenario() -> list[str]:
        sources = []
        for fresh in (False, False, True, False):
            token, source = await minter.obtain(OPEN, fresh=fresh)
            sources.append(f"{source}:{token.jti}")
        return sources

    assert asyncio.run(scenario()) == ["miss:jti-1", "hit:jti-1", "refresh:jti-2", "hit:jti-2"]
    assert exchange.calls == 2


def test_a_caller_without_the_cache_always_gets_a_new_token() -> None:
    exchange = FakeExchange()
    minter = _minter(exchange)

    async def scenario() -> list[str]:
        return [(await minter.obtain(OPEN, use_cache=False))[1] for _ in range(3)]

    assert asyncio.run(scenario()) == ["bypass"] * 3
    assert exchange.calls == 3


def test_identical_concurrent_misses_join_one_exchange() -> None:
    exchange = FakeExchange()
    exchange.delay = 0.02
    minter = _minter(exchange)

    async def scenario() -> list[str]:
        results = await asyncio.gather(*(minter.obtain(OPEN) for _ in range(10)))
        return sorted(source for _, source in results)

    assert asyncio.run(scenario()) == ["joined"] * 9 + ["miss"]
    assert exchange.calls == 1


class _Store:
    """The shared store's cache and leases, in memory. The "late" replica's lease request is
    held until the lease is released: it reaches the store just after the holder let go."""

    def __init__(self) -> None:
        self.tokens: dict[tuple[str, ...], object] = {}
        self.leases: dict[tuple[str, ...], str] = {}
        self.released = asyncio.Event()
        self.up = True
        self.settings = SharedStateSettings(url_env="UNUSED", encryption_key_env="UNUSED")

    async def cached(self, key: tuple[str, ...]) -> object:
        return self.tokens.get(key)

    async def keep(self, key: tuple[str, ...], token: object, ttl_seconds: float) -> None:
        self.tokens[key] = token

    async def lease(self, key: tuple[str, ...], holder: str) -> bool:
        if holder == "late":
            await self.released.wait()
        if key in self.leases:
            return False
        self.leases[key] = holder
        return True

    async def release(self, key: tuple[str, ...], holder: str) -> None:
        if self.leases.get(key) == holder:
            del self.leases[key]
        self.released.set()


def _replica(store: _Store, exchange: FakeExchange, holder: str) -> Minter:
    return Minter(
        exchange,  # type: ignore[arg-type]
        TokenCache(100, 0.5),
        Metrics(),
        shared=store,  # type: ignore[arg-type]
        holder=holder,
    )


def test_a_lease_taken_just_after_another_replica_minted_serves_its_token() -> None:
    store = _Store()
    first, late = FakeExchange(), FakeExchange()
    first.delay = 0.05

    async def scenario() -> tuple[tuple[str, str], tuple[str, str]]:
        minted, served = await asyncio.gather(
            _replica(store, first, "first").obtain(OPEN), _replica(store, late, "late").obtain(OPEN)
        )
        return (minted[0].sha256, minted[1]), (served[0].sha256, served[1])

    (minted_sha, minted_source), (served_sha, served_source) = asyncio.run(scenario())
    assert (minted_source, served_source) == ("miss", "shared")
    assert served_sha == minted_sha
    assert (first.calls, late.calls) == (1, 0)
    assert store.leases == {}


@pytest.mark.parametrize(
    ("kept", "asked"),
    [(("a", "b"), ("a,b",)), (("a,b",), ("a", "b")), (None, ("*",)), (("*",), None), ((), None)],
)
def test_a_token_for_other_permissions_is_never_taken_from_the_shared_store(
    kept: tuple[str, ...] | None, asked: tuple[str, ...] | None
) -> None:
    # A permission may hold a comma or be "*": the store named the token for ["a", "b"] and
    # the one for ["a,b"] alike, and the full scope's (no permissions claim) and ["*"]'s.
    store, exchange = _Store(), FakeExchange()
    one, other = _replica(store, FakeExchange(), "one"), _replica(store, exchange, "other")
    asyncio.run(one.obtain(Grant(AUDIENCE, "user_1", 900, kept)))
    token, source = asyncio.run(other.obtain(Grant(AUDIENCE, "user_1", 900, asked)))
    assert (source, token.permissions, exchange.calls) == ("miss", asked, 1)
    assert len(store.tokens) == 2


class _SlowStore(_Store):
    """Answers a lookup of its cache after a while: a call for any token is then still
    running when a request for a new one comes."""

    async def cached(self, key: tuple[str, ...]) -> object:
        found = await super().cached(key)
        await asyncio.sleep(0.5)  # the answer on its way back
        return found


def test_a_request_for_a_new_token_never_joins_a_call_that_may_reuse_one() -> None:
    # Joined, it was served another replica's token from the shared store: maybe the very
    # token the caller asked to replace (Cache-Control: no-cache).
    store, exchange = _SlowStore(), FakeExchange()
    exchange.claims, exchange.delay = {"jti": "minted-here"}, 0.5
    asyncio.run(_replica(store, FakeExchange(), "other").obtain(OPEN))
    [kept] = store.tokens.values()
    minter = _replica(store, exchange, "this")

    async def scenario() -> list[tuple[str, str]]:
        anything = asyncio.create_task(minter.obtain(OPEN))
        await asyncio.sleep(0.05)  # its lookup in the shared store under way
        new = asyncio.create_task(minter.obtain(OPEN, fresh=True))
        await asyncio.sleep(0.05)
        # And a request for any token joins the one that mints.
        joining = asyncio.create_task(minter.obtain(OPEN))
        done = [await anything, await new, await joining]
        return [(token.sha256, source) for token, source in done]

    (any_sha, any_source), (new_sha, new_source), (join_sha, join_source) = asyncio.run(scenario())
    assert (any_source, any_sha) == ("shared", kept.sha256)  # type: ignore[attr-defined]
    assert new_source == "refresh"
    assert new_sha != kept.sha256  # type: ignore[attr-defined]
    assert (join_source, join_sha) == ("joined", new_sha)
    assert exchange.calls == 1


class _SealingStore(_Store):
    """Keeps tokens as the real store does: msgpack, which has no integer past 2**64."""

    async def keep(self, key: tuple[str, ...], token: object, ttl_seconds: float) -> None:
        self.tokens[key] = msgspec.msgpack.decode(msgspec.msgpack.encode(token), type=CachedToken)


@pytest.mark.parametrize("iat", [10**30, -1, True, 1.5, "1796229276", 253_402_300_800])
def test_an_iat_that_cannot_be_a_time_is_not_kept_and_the_token_is_served(iat: object) -> None:
    # The claim is only carried along: a token otherwise right is served without it. An iat
    # of 10**30 failed the shared cache's encoding, after the mint: a 500.
    exchange = FakeExchange()
    exchange.claims = {"iat": iat}
    store = _SealingStore()
    minter = Minter(
        exchange,  # type: ignore[arg-type]
        TokenCache(100, 0.5),
        Metrics(),
        shared=store,  # type: ignore[arg-type]
        holder="one",
    )
    token, source = asyncio.run(minter.obtain(OPEN))
    assert (source, token.issued_at) == ("miss", None)
    [kept] = store.tokens.values()
    assert isinstance(kept, CachedToken)
    assert (kept.sha256, kept.issued_at) == (token.sha256, None)


def test_an_iat_that_is_a_time_is_kept() -> None:
    exchange = FakeExchange()
    exchange.claims = {"iat": 1_796_229_276}
    token, _ = asyncio.run(_minter(exchange).obtain(OPEN))
    assert token.issued_at == 1_796_229_276


def _clock_off(off_by: int, *, with_iat: bool = True) -> dict[str, int]:
    """The claims of an exchange whose clock is ``off_by`` seconds ahead of this host's."""
    now = int(time.time()) + off_by
    return (
        {"iat": now, "exp": now + OPEN.expires_in} if with_iat else {"exp": now + OPEN.expires_in}
    )


def _clock_ahead(metrics: Metrics) -> float:
    ahead = metrics.registry.get_sample_value("broker_upstream_clock_ahead_seconds")
    assert ahead is not None
    return ahead


@pytest.mark.parametrize("with_iat", [True, False])
@pytest.mark.parametrize(
    ("off_by", "reason", "side"),
    [(300, "lives longer than granted", "ahead of"), (-1000, "already expired", "behind")],
)
def test_a_clock_far_off_the_exchanges_is_named_and_measured(
    off_by: int, reason: str, side: str, with_iat: bool
) -> None:
    # Every token's exp is checked against this host's clock: a minute off refused every
    # mint as "lives longer than granted", which reads as the exchange's fault.
    exchange, metrics = FakeExchange(), Metrics()
    exchange.claims = _clock_off(off_by, with_iat=with_iat)
    exchange.without = set() if with_iat else {"iat"}
    minter = Minter(exchange, TokenCache(100, 0.5), metrics)  # type: ignore[arg-type]
    with pytest.raises(TokenMismatch) as raised:
        asyncio.run(minter.obtain(OPEN))
    assert raised.value.reason.startswith(reason)
    # A second's rounding either way: the claims are whole seconds, this host's clock is not.
    told = re.search(rf"the exchange's clock is (\d+) s {side} this host's", raised.value.reason)
    assert told is not None
    assert abs(int(told.group(1)) - abs(off_by)) <= 1
    assert off_by - 2 < _clock_ahead(metrics) <= off_by


def test_a_token_from_a_clock_within_the_skew_is_served_and_the_offset_measured() -> None:
    exchange, metrics = FakeExchange(), Metrics()
    exchange.claims = _clock_off(30)
    minter = Minter(exchange, TokenCache(100, 0.5), metrics)  # type: ignore[arg-type]
    assert asyncio.run(minter.obtain(OPEN))[1] == "miss"
    assert 28 < _clock_ahead(metrics) <= 30


def test_an_exchange_that_shortens_the_lifetime_is_not_taken_for_a_clock() -> None:
    # Read from exp alone, a 300 s token for 900 s asked would have read as a clock 600 s
    # behind, and the chart's alert would have fired.
    exchange, metrics = FakeExchange(), Metrics()
    exchange.claims = {"exp": int(time.time()) + 300}
    minter = Minter(exchange, TokenCache(100, 0.5), metrics)  # type: ignore[arg-type]
    assert asyncio.run(minter.obtain(OPEN))[1] == "miss"
    assert -2 < _clock_ahead(metrics) <= 0
