"""Upstream failures are mapped, never passed through raw, and never expose the API key."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.api.test_tokens import assert_problem
from tests.conftest import Broker, BrokerFactory, Simulator, free_port


@pytest.fixture(scope="module")
def broker(start_broker: BrokerFactory) -> Broker:
    """One attempt per request and a breaker that never opens: each answer maps one failure.
    Retries and the breaker have their own tests."""
    return start_broker(
        name="mapping", extra_upstream="max_attempts = 1\ncircuit_failure_threshold = 1000"
    )


def _assert_no_secret(response: Any, simulator: Simulator) -> None:
    assert simulator.api_key not in response.text
    assert "token" not in response.json()


def test_upstream_400_keeps_its_message(broker: Broker, simulator: Simulator) -> None:
    simulator.fault(status=400, body='{"message": "audience is not registered"}', times=1)
    response = broker.post_token(fresh=True)
    problem = assert_problem(response, 400, "upstream_rejected")
    assert problem["detail"].endswith("audience is not registered")
    _assert_no_secret(response, simulator)


@pytest.mark.parametrize("status", [401, 403])
def test_upstream_refusing_the_api_key_is_502(
    broker: Broker, simulator: Simulator, status: int
) -> None:
    simulator.fault(status=status, times=1)
    response = broker.post_token(fresh=True)
    assert_problem(response, 502, "upstream_credentials")
    _assert_no_secret(response, simulator)
    output = broker.server.wait_for_output("upstream_credentials_refused")
    lines = [line for line in output.splitlines() if "upstream_credentials_refused" in line]
    assert any('"level":"error"' in line for line in lines)


def test_a_wrong_api_key_is_502_and_logged(
    start_broker: BrokerFactory, simulator: Simulator
) -> None:
    wrong = "mka1_wrong_" + "k" * 20
    broker = start_broker(api_key=wrong, name="wrong-key")
    response = broker.post_token(fresh=True)
    assert_problem(response, 502, "upstream_credentials")
    assert wrong not in response.text
    assert wrong not in broker.server.output()
    (seen,) = simulator.requests()
    assert seen["status"] == 401


@pytest.mark.parametrize(("retry_after", "expected"), [("7", "7"), (None, "1"), ("99999", "300")])
def test_upstream_429_is_503_with_retry_after(
    broker: Broker, simulator: Simulator, retry_after: str | None, expected: str
) -> None:
    fault: dict[str, Any] = {"status": 429, "times": 1}
    if retry_after:
        fault["retry_after"] = retry_after
    simulator.fault(**fault)
    response = broker.post_token(fresh=True)
    assert_problem(response, 503, "upstream_rate_limited")
    assert response.headers["retry-after"] == expected


@pytest.mark.parametrize("status", [500, 502, 503, 504, 404, 409])
def test_upstream_server_errors_are_502(broker: Broker, simulator: Simulator, status: int) -> None:
    simulator.fault(status=status, times=1)
    response = broker.post_token(fresh=True)
    assert_problem(response, 502, "upstream_error")
    assert "Injected" not in response.text


@pytest.mark.parametrize("body", ["not json", '{"nope": 1}', '{"token": 5}', "[]"])
def test_malformed_success_bodies_are_502(broker: Broker, simulator: Simulator, body: str) -> None:
    simulator.fault(status=200, body=body, times=1)
    assert_problem(broker.post_token(fresh=True), 502, "upstream_malformed_response")


@pytest.mark.parametrize("token", ["wrong_aud", "wrong_sub", "long_exp", "malformed", "expired"])
def test_tokens_that_do_not_match_the_grant_are_discarded(
    broker: Broker, simulator: Simulator, token: str
) -> None:
    simulator.fault(token=token, times=1)
    response = broker.post_token(fresh=True)
    assert_problem(response, 502, "upstream_token_mismatch")
    assert "eyJ" not in response.text
    issued = [
        line for line in broker.audit_lines() if line["requestId"] == response.json()["requestId"]
    ]
    assert issued[0]["outcome"] == "failed"
    assert issued[0]["tokenSha256"] is None


def test_refused_connection_is_502(start_broker: BrokerFactory) -> None:
    broker = start_broker(upstream_url=f"http://127.0.0.1:{free_port()}", name="refused")
    assert_problem(broker.post_token(fresh=True), 502, "upstream_unreachable")


def test_timeout_is_504_within_the_configured_timeout(broker: Broker, simulator: Simulator) -> None:
    # The broker's timeout is 1.5 s; the upstream would answer only after 6 s.
    simulator.fault(delay_seconds=6, times=1)
    started = time.monotonic()
    response = broker.post_token(fresh=True)
    waited = time.monotonic() - started
    assert_problem(response, 504, "upstream_timeout")
    assert waited < 6


def test_newer_exchange_path_is_configurable(
    start_broker: BrokerFactory, simulator: Simulator
) -> None:
    broker = start_broker(
        extra_upstream='exchange_path = "/api/v1/authentication/api-keys/exchange-token"',
        name="newer-path",
    )
    assert broker.post_token(fresh=True).status_code == 200
    (seen,) = simulator.requests()
    assert seen["path"] == "/api/v1/authentication/api-keys/exchange-token"
