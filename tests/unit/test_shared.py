"""The deployment-wide rate limit's reserves, in-process, against a fake of the store's
token-bucket script (the same arithmetic, with a round trip's delay): concurrent requests
of one replica fetch one reserve at a time and share it, and share a refusal too."""

from __future__ import annotations

import asyncio
import math
import os
from typing import Any

from broker.config import SharedStateSettings
from broker.metrics import Metrics
from broker.secrets import Secret
from broker.shared import SharedState


class FakeBucketScript:
    """The _TAKE script's bucket, one per name, each call a round trip of ``delay``; its
    clock stands still (``now``), so that nothing refills unless a test says so."""

    def __init__(self, delay: float = 0.01) -> None:
        self.delay = delay
        self.now = 0.0
        self.calls = 0
        self._buckets: dict[str, tuple[float, float]] = {}

    async def __call__(self, *, keys: list[str], args: list[Any]) -> list[Any]:
        self.calls += 1
        await asyncio.sleep(self.delay)
        rate, burst, want = float(args[0]), int(args[1]), int(args[2])
        now = self.now
        tokens, at = self._buckets.get(keys[0], (float(burst), now))
        tokens = min(burst, tokens + max(0.0, now - at) * rate)
        granted = min(want, math.floor(tokens))
        wait = 0.0
        if granted < 1:
            granted, wait = 0, (1 - tokens) / rate
        else:
            tokens -= granted
        self._buckets[keys[0]] = (tokens, now)
        return [granted, f"{wait:.6f}".encode()]


def _state(script: FakeBucketScript) -> SharedState:
    state = SharedState(
        # The longest store timeout: on a loaded host a thousand waiting requests can hold
        # the loop past the default 100 ms between a fake call's start and its answer.
        SharedStateSettings(replicas=2, timeout_ms=5000),
        Secret("redis://127.0.0.1:1/0"),  # never dialled: the script is the fake
        os.urandom(32),
        Metrics(),
    )
    state._take = script  # type: ignore[assignment]
    return state


async def _burst(state: SharedState, requests: int, rate: float, burst: int) -> list[Any]:
    return await asyncio.gather(
        *(state.take("per_caller", "billing", rate, burst) for _ in range(requests))
    )


def test_a_burst_of_one_callers_requests_fetches_one_reserve_at_a_time() -> None:
    script = FakeBucketScript()
    # 1000/s for the deployment, two replicas: a reserve is 25 tokens.
    answers = asyncio.run(_burst(_state(script), 100, 1000.0, 1000))
    # Each concurrent fetch used to take 25 and overwrite the last reserve: 40 fetches
    # drained the bucket and 60 of the 100 were refused.
    assert answers == [None] * 100
    assert script.calls == 4


def test_a_refusal_is_the_answer_of_every_request_that_waited_for_it() -> None:
    script = FakeBucketScript()
    state = _state(script)

    async def run() -> list[Any]:
        assert await _burst(state, 1000, 1000.0, 1000) == [None] * 1000  # all of it
        calls = script.calls
        refused = await _burst(state, 50, 1000.0, 1000)
        assert script.calls == calls + 1
        return refused

    refused = asyncio.run(run())
    assert all(isinstance(wait, float) and wait > 0 for wait in refused)


def test_a_limit_too_low_for_a_reserve_asks_the_store_for_every_token() -> None:
    script = FakeBucketScript(delay=0.001)
    answers = asyncio.run(_burst(_state(script), 30, 20.0, 20))
    assert answers[:20] == [None] * 20
    assert all(isinstance(wait, float) for wait in answers[20:])
    # One call for each token granted, and one for the refusal the other nine waited for.
    assert script.calls == 21
