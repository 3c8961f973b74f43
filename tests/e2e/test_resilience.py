"""Retries, Retry-After, the circuit breaker and the connection pool, against the simulator."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from tests.conftest import AUDIENCE, Broker, BrokerFactory, Simulator
from tests.support import loopback
from tests.support.problems import assert_problem
from tests.support.waiting import eventually

RESILIENT = """
max_attempts = 3
backoff_base_seconds = 0.05
backoff_max_seconds = 0.2
deadline_seconds = 4
retry_after_max_seconds = 3
circuit_failure_threshold = 3
circuit_cooldown_seconds = 1
"""
_COOLDOWN = 3


@pytest.fixture(scope="module")
def resilient_broker(start_module_broker: BrokerFactory) -> Broker:
    return start_module_broker(name="resilient", extra_upstream=RESILIENT)


@pytest.fixture
def resilient(resilient_broker: Broker, simulator: Simulator) -> Iterator[Broker]:
    """One broker for the module; each test leaves it with its circuit closed and no failure
    counted, as a new one would be (a failure left over would open the circuit early in the
    next test). Its counters carry over, so tests read them as differences."""
    yield resilient_broker
    simulator.clear()
    # An open circuit lets a probe through once its cool-down (1 s) is over.
    eventually(
        lambda: resilient_broker.post_token(fresh=True).status_code == 200,
        what="the circuit closed again",
    )
    assert resilient_broker.metric("broker_circuit_state") == 0


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_retryable_statuses_are_retried(
    resilient: Broker, simulator: Simulator, status: int
) -> None:
    kind = "rate_limited" if status == 429 else "server_error"
    retries = resilient.metric("broker_upstream_retries_total")
    errors = resilient.metric("broker_upstream_errors_total", kind=kind)
    simulator.fault(status=status, times=1)
    response = resilient.post_token(fresh=True)
    assert response.status_code == 200, response.text
    assert [seen["status"] for seen in simulator.requests()] == [status, 200]
    assert resilient.metric("broker_upstream_retries_total") == retries + 1
    assert resilient.metric("broker_upstream_errors_total", kind=kind) == errors + 1


@pytest.mark.parametrize("status", [400, 401, 403, 500])
def test_other_failures_are_not_retried(
    resilient: Broker, simulator: Simulator, status: int
) -> None:
    retries = resilient.metric("broker_upstream_retries_total")
    simulator.fault(status=status, times=1)
    assert resilient.post_token(fresh=True).status_code in (400, 502)
    assert len(simulator.requests()) == 1
    assert resilient.metric("broker_upstream_retries_total") == retries


def test_retry_after_is_honoured(resilient: Broker, simulator: Simulator) -> None:
    simulator.fault(status=503, retry_after="1", times=1)
    assert resilient.post_token(fresh=True).status_code == 200
    first, second = simulator.requests()
    assert second["at"] - first["at"] >= 0.95


def test_retry_after_as_an_http_date_is_honoured(resilient: Broker, simulator: Simulator) -> None:
    # An HTTP date has one-second resolution, and the first attempt may come any time
    # before it: what must hold is that the retry waited for the date itself.
    moment = (datetime.now(UTC) + timedelta(seconds=3)).replace(microsecond=0)
    simulator.fault(status=429, retry_after=format_datetime(moment, usegmt=True), times=1)
    assert resilient.post_token(fresh=True).status_code == 200
    first, second = simulator.requests()
    assert first["at"] < moment.timestamp(), "the first attempt came after the date"
    assert second["at"] >= moment.timestamp() - 0.05


def test_retry_after_beyond_the_deadline_is_passed_to_the_caller(
    resilient: Broker, simulator: Simulator
) -> None:
    simulator.fault(status=429, retry_after="120", times=1)
    response = resilient.post_token(fresh=True)
    assert_problem(response, 503, "upstream_rate_limited")
    assert response.headers["retry-after"] == "120"
    assert len(simulator.requests()) == 1


def test_retries_stop_at_max_attempts(resilient: Broker, simulator: Simulator) -> None:
    simulator.fault(status=502, times=10)
    assert_problem(resilient.post_token(fresh=True), 502, "upstream_error")
    assert len(simulator.requests()) == 3


def test_the_breaker_opens_fails_fast_and_recovers(
    start_broker: BrokerFactory, simulator: Simulator
) -> None:
    # A cool-down long enough that a loaded host still reads the open state within it.
    resilient = start_broker(
        name="breaker",
        extra_upstream=RESILIENT.replace(
            "circuit_cooldown_seconds = 1", f"circuit_cooldown_seconds = {_COOLDOWN}"
        ),
    )
    simulator.fault(status=500)
    for _ in range(3):
        assert_problem(resilient.post_token(fresh=True), 502, "upstream_error")
    calls = len(simulator.requests())
    open_answer = resilient.post_token(fresh=True)
    assert_problem(open_answer, 503, "upstream_circuit_open")
    assert 1 <= int(open_answer.headers["retry-after"]) <= _COOLDOWN
    assert len(simulator.requests()) == calls, "an open circuit must not call the upstream"
    assert resilient.metric("broker_circuit_state") == 2
    assert resilient.metric("broker_circuit_opened_total") == 1
    # An MKA1 outage must not take the replica out of the Service: callers keep getting a
    # 503 that says what is wrong, instead of connection errors.
    readyz = loopback.get(resilient.url + "/readyz")
    assert readyz.status_code == 200
    assert readyz.json()["detail"]["circuit"] == "open"

    # Still failing after the cool-down: the one probe fails and the circuit opens again.
    time.sleep(_COOLDOWN + 0.1)
    assert_problem(resilient.post_token(fresh=True), 502, "upstream_error")
    assert_problem(resilient.post_token(fresh=True), 503, "upstream_circuit_open")

    simulator.clear()
    time.sleep(_COOLDOWN + 0.1)
    assert resilient.post_token(fresh=True).status_code == 200
    assert resilient.metric("broker_circuit_state") == 0
    assert loopback.get(resilient.url + "/readyz").status_code == 200


def test_an_exhausted_pool_answers_fast(start_broker: BrokerFactory, simulator: Simulator) -> None:
    broker = start_broker(
        name="small-pool",
        extra_upstream="max_connections = 1\npool_wait_seconds = 0.05\nmax_attempts = 1",
    )
    simulator.fault(delay_seconds=1.0, times=1)

    async def two_at_once() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=10) as client:

            async def post(user: str) -> httpx.Response:
                return await client.post(
                    broker.url + "/tokens",
                    json={"audience": AUDIENCE, "externalUserId": user},
                    headers=broker.clients["billing"].headers(),
                )

            slow = asyncio.create_task(post("slow"))
            await asyncio.sleep(0.3)
            busy = await post("busy")
            return [await slow, busy]

    slow, busy = asyncio.run(two_at_once())
    assert slow.status_code == 200
    assert_problem(busy, 503, "upstream_busy")
    assert busy.headers["retry-after"]


def test_a_zero_pool_wait_still_uses_free_connections(
    start_broker: BrokerFactory, simulator: Simulator
) -> None:
    broker = start_broker(name="no-pool-wait", extra_upstream="pool_wait_seconds = 0")
    assert broker.post_token(fresh=True).status_code == 200
