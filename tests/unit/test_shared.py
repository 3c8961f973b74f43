"""The deployment-wide rate limit's reserves, in-process, against a fake of the store's
token-bucket script (the same arithmetic, with a round trip's delay): concurrent requests
of one replica wait in line behind one fetch at a time, which brings a token for each of
them; they share a refusal too, and a request that stops waiting never stalls the line."""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from broker.config import SharedStateSettings
from broker.metrics import Metrics
from broker.secrets import Secret
from broker.shared import UNAVAILABLE, SharedState


class FakeBucketScript:
    """The _TAKE script's bucket, one per name, each call a round trip of ``delay``; its
    clock stands still (``now``), so that nothing refills unless a test says so."""

    def __init__(self, delay: float = 0.01) -> None:
        self.delay = delay
        self.now = 0.0
        self.calls = 0
        self._buckets: dict[str, tuple[float, float]] = {}

    async def __call__(self, *, keys: list[str], args: list[Any]) -> list[Any]:
        await asyncio.sleep(self.delay)
        return self._answer(keys, args)

    def _answer(self, keys: list[str], args: list[Any]) -> list[Any]:
        self.calls += 1
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
    # drained the bucket and 60 of the 100 were refused. The first request fetches alone
    # (the others are not in line yet); its 24 spare tokens go to the first 24 in line,
    # and the 25th fetches for itself and the 74 behind it.
    assert answers == [None] * 100
    assert script.calls == 2


def test_a_burst_at_a_reserve_of_one_token_asks_the_store_twice_not_once_a_request() -> None:
    script = FakeBucketScript(delay=0.0002)
    # 10/s for the deployment: a reserve is one token (the request's own). The line used to
    # fetch a token at a time and wake whole after each: 1,000 requests cost 1,000 store
    # calls and about 500,000 wake-ups (2.4 s of the loop here; 4,000 requests, a minute).
    answers = asyncio.run(_burst(_state(script), 1000, 10.0, 10_000))
    assert answers == [None] * 1000
    assert script.calls == 2


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
    # The first request's token; the 19 left for the first 19 in line; the refusal, which
    # the nine behind the one that asked for it are told as it is.
    assert script.calls == 3


def test_what_a_fetch_brings_beyond_the_line_is_kept_as_the_reserve() -> None:
    script = FakeBucketScript()
    state = _state(script)

    async def run() -> None:
        # A reserve is 25 tokens; three requests in line spend 3 of the 27 fetched second.
        assert await _burst(state, 3, 1000.0, 1000) == [None] * 3
        calls = script.calls
        assert await _burst(state, 20, 1000.0, 1000) == [None] * 20
        assert script.calls == calls  # all from the reserve

    asyncio.run(run())


class GatedBucketScript(FakeBucketScript):
    """The same bucket, each call held until the test opens its gate; nothing else in a
    call yields to the loop, so the test knows what has run when."""

    def __init__(self) -> None:
        super().__init__(delay=0.0)
        self.gates: list[asyncio.Event] = []

    async def __call__(self, *, keys: list[str], args: list[Any]) -> list[Any]:
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        return self._answer(keys, args)


async def _until(done: Callable[[], bool]) -> None:
    for _ in range(100):
        if done():
            return
        await asyncio.sleep(0)
    raise AssertionError("never happened")


def test_a_request_that_stops_waiting_never_stalls_the_line() -> None:
    async def run() -> None:
        script = GatedBucketScript()
        state = _state(script)

        def take() -> asyncio.Task[Any]:
            # 20/s, burst 20: a reserve is one token, so each fetch brings only the tokens
            # of the requests in line when it was made.
            return asyncio.create_task(state.take("per_caller", "billing", 20.0, 20))

        first = take()
        await _until(lambda: len(script.gates) == 1)
        line = [take() for _ in range(5)]
        await asyncio.sleep(0)  # all five in line: the first fetch was made before them
        line[0].cancel()  # in line, never told anything: passed over

        script.gates[0].set()
        await asyncio.sleep(0)
        # The first fetch is back with one token, the first's; the turn to fetch next went
        # to line[1], which has been told but has not run yet.
        assert first.done()
        assert first.result() is None
        assert not line[1].done()
        line[1].cancel()  # told its turn, gone before it fetched: it passes the turn on
        await _until(lambda: len(script.gates) == 2)  # line[2] fetches
        line[2].cancel()  # cancelled mid-fetch: it passes the turn on too
        await _until(lambda: len(script.gates) == 3)  # line[3] fetches, for line[4] too
        script.gates[2].set()
        assert [await line[3], await line[4]] == [None, None]
        for gone in line[:3]:
            assert gone.cancelled()
        assert script.calls == 2  # the cancelled fetch never reached the bucket

    asyncio.run(asyncio.wait_for(run(), 5))


class _Answers:
    """A store whose bucket script answers ``answer``: not what the script returns."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    async def __call__(self, *, keys: list[str], args: list[Any]) -> Any:
        return self.answer


@pytest.mark.parametrize(
    "answer",
    [[b"x", b"0"], [1], [0, b"nan"], [0, b"inf"], [0, b"-1"], b"OK", None, {"a": 1}],
    ids=["count", "short", "nan", "inf", "negative", "bytes", "nil", "map"],
)
def test_an_answer_the_script_never_gives_is_the_store_away_not_a_500(answer: Any) -> None:
    state = _state(FakeBucketScript())
    state._take = _Answers(answer)  # type: ignore[assignment]

    async def run() -> Any:
        return await state.take("per_caller", "billing", 10.0, 10)

    # UNAVAILABLE: the limit falls back to local state (limit / replicas), as when the
    # store is unreachable; a nan wait would have been a Retry-After of "nan".
    assert asyncio.run(run()) is UNAVAILABLE
    assert not state.up
    assert state.last_error == "a malformed answer for a rate limit"


class _Garbage:
    """A store that answers every GET with bytes no broker wrote."""

    async def get(self, name: str) -> bytes:
        return b"not-a-number"


def test_a_revocations_version_that_is_not_a_number_is_the_store_away() -> None:
    state = _state(FakeBucketScript())
    state._redis = _Garbage()  # type: ignore[assignment]

    async def run() -> Any:
        return await state.revocations_version()

    assert asyncio.run(run()) is UNAVAILABLE
    assert state.last_error == "a malformed answer for the revocations' version"


class _PingFaults:
    """A store whose pings raise what no store failure is, twice, then answer."""

    def __init__(self) -> None:
        self.pings = 0
        self.answered = asyncio.Event()

    async def get(self, name: str) -> bytes:
        raise ConnectionError("away")  # an OSError: the store's own failure

    async def ping(self) -> bool:
        self.pings += 1
        if self.pings <= 2:
            raise RuntimeError("a fault, not the store")
        self.answered.set()
        return True


def test_a_fault_in_probing_the_store_is_said_and_probing_goes_on() -> None:
    # It ended the prober: the replica stayed on local state for good, its bars unread.
    state = _state(FakeBucketScript())
    store = _PingFaults()
    state._redis = store  # type: ignore[assignment]

    async def run() -> bool:
        assert await state.revocations_version() is UNAVAILABLE
        assert not state.up
        await asyncio.wait_for(store.answered.wait(), 5.0)
        await asyncio.sleep(0)  # the prober goes on from its ping
        return state.up

    with capture_logs() as logs:
        assert asyncio.run(run())
    assert store.pings == 3
    failed = [entry for entry in logs if entry["event"] == "shared_state_probe_failed"]
    assert [(entry["error_type"], entry["events"]) for entry in failed] == [("RuntimeError", 1)]
