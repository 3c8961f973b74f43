"""The single-flight lease on a real Redis, in-process: only its holder releases it."""

from __future__ import annotations

import asyncio
import secrets

from broker.config import SharedStateSettings
from broker.metrics import Metrics
from broker.secrets import Secret
from broker.shared import SharedState
from tests.support.redis import RedisServer


def test_a_lease_is_released_only_by_its_holder(redis_server: RedisServer) -> None:
    settings = SharedStateSettings(
        url_env="UNUSED",
        encryption_key_env="UNUSED",
        key_prefix=f"t{secrets.token_hex(4)}:",
        lease_ms=100,
        timeout_ms=2000,
    )

    async def scenario() -> list[object]:
        store = SharedState(settings, Secret(redis_server.url), secrets.token_bytes(32), Metrics())
        key = ("https://api.example.com", "user_1", "*", "900")
        try:
            taken: list[object] = [await store.lease(key, "slow"), await store.lease(key, "other")]
            await asyncio.sleep(0.15)  # the slow mint outlives its lease
            taken.append(await store.lease(key, "next"))
            await store.release(key, "slow")  # too late: not its lease any more
            taken.append(await store.lease(key, "third"))
            await store.release(key, "next")
            taken.append(await store.lease(key, "third"))
            return taken
        finally:
            await store.close()

    assert asyncio.run(scenario()) == [True, False, True, False, True]
