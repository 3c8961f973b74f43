"""The token cache and single-flight, with the simulator as the upstream."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.conftest import AUDIENCE, Broker, BrokerFactory, Simulator


@pytest.fixture(scope="module")
def cached(start_module_broker: BrokerFactory) -> Broker:
    return start_module_broker(name="cache")


def test_200_identical_concurrent_requests_make_one_upstream_call(
    cached: Broker, simulator: Simulator
) -> None:
    body = {"audience": AUDIENCE, "externalUserId": "burst-user", "expiresIn": 600}
    joins_before = cached.metric("broker_singleflight_joins_total")
    # Slow the upstream a little, so the burst really overlaps one call.
    simulator.fault(delay_seconds=0.5, times=1)

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        cached.url + "/tokens",
                        json=body,
                        headers=cached.clients["billing"].headers(),
                    )
                    for _ in range(200)
                )
            )

    responses = asyncio.run(burst())
    assert {response.status_code for response in responses} == {200}
    assert len({response.json()["token"] for response in responses}) == 1
    assert simulator.exchanges() == 1
    records = [r for r in cached.audit_lines() if r["externalUserId"] == "burst-user"]
    assert len(records) == 200
    caches = [record["cache"] for record in records]
    assert caches.count("miss") == 1
    assert set(caches) <= {"miss", "joined", "hit"}
    assert cached.metric("broker_singleflight_joins_total") > joins_before


def test_a_hit_is_the_same_token_with_less_life_left(cached: Broker, simulator: Simulator) -> None:
    body = {"audience": AUDIENCE, "externalUserId": "hit-user", "expiresIn": 900}
    hits_before = cached.metric("broker_cache_lookups_total", result="hit")
    first = cached.post_token(body=body).json()
    time.sleep(1.1)
    second = cached.post_token(body=body).json()
    assert second["token"] == first["token"]
    assert second["tokenId"] == first["tokenId"]
    assert second["expiresIn"] < first["expiresIn"]
    assert second["expiresAt"] == first["expiresAt"]
    assert second["refreshAt"] <= second["expiresAt"]
    assert simulator.exchanges() == 1
    records = [r for r in cached.audit_lines() if r["externalUserId"] == "hit-user"]
    assert [r["cache"] for r in records] == ["miss", "hit"]
    assert records[1]["tokenSha256"] == first["tokenSha256"]
    assert records[1]["upstreamStatus"] is None
    assert cached.metric("broker_cache_lookups_total", result="hit") == hits_before + 1
    assert cached.metric("broker_cache_entries") >= 1


def test_different_permissions_or_lifetimes_are_different_tokens(
    cached: Broker, simulator: Simulator
) -> None:
    base = {"audience": AUDIENCE, "externalUserId": "key-user"}
    tokens = {
        cached.post_token(body=base | extra).json()["token"]
        for extra in (
            {},
            {"expiresIn": 600},
            {"permissions": ["read:responses"]},
            {"permissions": ["read:files", "read:responses"]},
        )
    }
    assert len(tokens) == 4
    # The same permission set in another order is the same key.
    again = cached.post_token(body=base | {"permissions": ["read:responses", "read:files"]})
    assert again.json()["token"] in tokens
    assert simulator.exchanges() == 4


def test_no_cache_forces_a_fresh_mint(cached: Broker, simulator: Simulator) -> None:
    body = {"audience": AUDIENCE, "externalUserId": "fresh-user"}
    first = cached.post_token(body=body).json()
    fresh = cached.post_token(body=body, fresh=True).json()
    assert fresh["tokenId"] != first["tokenId"]
    # The fresh token replaces the cached one.
    assert cached.post_token(body=body).json()["tokenId"] == fresh["tokenId"]
    assert simulator.exchanges() == 2
    caches = [r["cache"] for r in cached.audit_lines() if r["externalUserId"] == "fresh-user"]
    assert caches == ["miss", "refresh", "hit"]


def test_a_client_can_be_opted_out(cached: Broker, simulator: Simulator) -> None:
    body = {"audience": AUDIENCE, "externalUserId": "opted-out"}
    ids = {cached.post_token("uncached", body=body).json()["tokenId"] for _ in range(3)}
    assert len(ids) == 3
    assert simulator.exchanges() == 3
    caches = [r["cache"] for r in cached.audit_lines() if r["externalUserId"] == "opted-out"]
    assert caches == ["bypass"] * 3


def test_a_token_under_the_remaining_lifetime_threshold_is_not_served(
    start_broker: BrokerFactory, simulator: Simulator
) -> None:
    # With a ratio of 0.998, a 300 s token is served for 0.6 s at most.
    broker = start_broker(name="threshold", extra="\n[cache]\nmin_remaining_ratio = 0.998\n")
    body = {"audience": AUDIENCE, "externalUserId": "threshold-user", "expiresIn": 300}
    first = broker.post_token(body=body).json()
    time.sleep(1.2)
    second = broker.post_token(body=body).json()
    assert second["tokenId"] != first["tokenId"]
    assert simulator.exchanges() == 2


def test_failures_are_shared_but_not_cached(cached: Broker, simulator: Simulator) -> None:
    body = {"audience": AUDIENCE, "externalUserId": "failing-user"}
    simulator.fault(status=400, body='{"message": "no"}', times=1)
    assert cached.post_token(body=body).status_code == 400
    assert cached.post_token(body=body).status_code == 200
