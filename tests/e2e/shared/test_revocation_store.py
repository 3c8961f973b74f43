"""Bars and their cutoffs on a real Redis, in-process: a lift leaves its cutoff behind for
the replicas that never saw the bar, and cutoffs no token could still be held back by go."""

from __future__ import annotations

import asyncio
import secrets
import time

from broker.cache import CacheKey, TokenCache
from broker.config import SharedStateSettings
from broker.metrics import Metrics
from broker.minting import IssuedToken
from broker.policy import Grant
from broker.revocations import Revocations
from broker.secrets import Secret
from broker.shared import Bar, SharedState
from tests.support.redis import RedisServer

AUDIENCE = "https://api.example.com"


def _store(redis_server: RedisServer, prefix: str, key: bytes) -> SharedState:
    settings = SharedStateSettings(
        url_env="UNUSED", encryption_key_env="UNUSED", key_prefix=prefix, timeout_ms=2000
    )
    return SharedState(settings, Secret(redis_server.url), key, Metrics())


def _token(begun_at: float) -> IssuedToken:
    now = time.time()
    return IssuedToken(
        token="t",
        sha256="0" * 64,
        jti="j",
        issued_at=int(now),
        expires_at=int(now + 900),
        permissions=None,
        upstream_status=200,
        upstream_latency_ms=1.0,
        begun_at=begun_at,
    )


def test_a_replica_that_reads_after_a_bar_and_its_lift_forgets_what_it_held(
    redis_server: RedisServer,
) -> None:
    prefix, key = f"t{secrets.token_hex(4)}:", secrets.token_bytes(32)
    grant = CacheKey.for_grant(Grant(AUDIENCE, "blink", 900, None))

    async def scenario() -> tuple[int, int, bool]:
        told, late = _store(redis_server, prefix, key), _store(redis_server, prefix, key)
        late_cache = TokenCache(10, 0.5)
        told_revocations = Revocations(told, TokenCache(10, 0.5))
        late_revocations = Revocations(late, late_cache)
        try:
            await late_revocations.refresh()
            late_cache.put(grant, _token(time.time() - 1))
            held = len(late_cache)
            await told_revocations.bar(Bar("end_user", "blink", time.time(), "x", "op"))
            await told_revocations.lift("end_user", "blink")
            await late_revocations.refresh()  # the bar is gone by now; its cutoff is not
            return held, len(late_cache), late_cache.forgotten(grant, time.time() - 0.5)
        finally:
            await told.close()
            await late.close()

    assert asyncio.run(scenario()) == (1, 0, True)


def test_a_cutoff_no_token_can_outlive_goes_with_the_next_change(
    redis_server: RedisServer,
) -> None:
    store = _store(redis_server, f"t{secrets.token_hex(4)}:", secrets.token_bytes(32))
    now = time.time()
    month_ago = now - 2_600_000  # past the longest lifetime, 2592000 s

    async def scenario() -> list[set[tuple[str, str]]]:
        seen = []
        try:
            for value, cutoff in (("old", month_ago), ("new", now)):
                await store.bar(Bar("end_user", value, cutoff, "x", "op"), cutoff)
                found = await store.cutoffs()
                assert isinstance(found, list)
                seen.append({(c.kind, c.value) for c in found})
            assert await store.lift("end_user", "new", now + 1)
            found = await store.cutoffs()
            assert isinstance(found, list)
            seen.append({(c.kind, c.value) for c in found if c.at == now + 1})
            return seen
        finally:
            await store.close()

    assert asyncio.run(scenario()) == [
        {("end_user", "old")},
        {("end_user", "new")},
        {("end_user", "new")},
    ]
