"""Upstream failures are mapped, never passed through raw, and never expose the API key."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import pytest

from tests.conftest import Broker, BrokerFactory, Simulator, SimulatorFactory
from tests.support.problems import assert_problem
from tests.support.waiting import free_port


@pytest.fixture(scope="module")
def broker(start_module_broker: BrokerFactory) -> Broker:
    """One attempt per request and a breaker that never opens: each answer maps one failure.
    Retries and the breaker have their own tests."""
    return start_module_broker(
        name="mapping", extra_upstream="max_attempts = 1\ncircuit_failure_threshold = 1000"
    )


def _assert_no_secret(response: Any, simulator: Simulator) -> None:
    assert simulator.api_key not in response.text
    assert "token" not in response.json()


def test_upstream_400_names_fields_but_never_repeats_its_text(
    broker: Broker, simulator: Simulator
) -> None:
    # The upstream's text could echo what was sent, the API key included, in any encoding.
    encoded = base64.b64encode(simulator.api_key.encode()).decode()
    body = json.dumps(
        {
            "message": f"audience is not registered; key {encoded} {simulator.api_key[::-1]}",
            "details": [
                {"path": "audience", "message": f"bad {encoded}"},
                {"path": ["expiresIn"], "message": "too long"},
                {"path": "Authorization", "message": simulator.api_key},
            ],
        }
    )
    simulator.fault(status=400, body=body, times=1)
    response = broker.post_token(fresh=True)
    problem = assert_problem(response, 400, "upstream_rejected")
    assert problem["detail"].endswith("fields it named: audience, expiresIn")
    assert encoded not in response.text
    assert "registered" not in response.text
    assert "Authorization" not in response.text
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


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_upstream_server_errors_are_502(broker: Broker, simulator: Simulator, status: int) -> None:
    simulator.fault(status=status, times=1)
    response = broker.post_token(fresh=True)
    assert_problem(response, 502, "upstream_error")
    assert "Injected" not in response.text


def test_not_found_conflict_and_gone_are_not_server_errors_for_the_breaker(
    start_broker: BrokerFactory, simulator: Simulator
) -> None:
    broker = start_broker(name="refusals", extra_upstream="circuit_failure_threshold = 1")
    for status in (404, 409, 410, 404):
        simulator.fault(status=status, times=1)
        assert_problem(broker.post_token(fresh=True), 502, "upstream_refused")
    assert broker.metric("broker_circuit_opened_total") == 0
    assert broker.post_token(fresh=True).status_code == 200
    output = broker.server.wait_for_output('"upstream_failure"')
    line = next(line for line in output.splitlines() if '"upstream_failure"' in line)
    record = json.loads(line)
    assert record["kind"] == "refused"
    assert record["url"] == simulator.url + "/api/v1/authentication/api-key/exchange-token"
    assert record["level"] == "warning"
    # Four failures within ten seconds: one line, not four.
    assert output.count('"upstream_failure"') == 1


def test_inbound_ip_denied_has_its_own_code_and_operator_message(
    broker: Broker, simulator: Simulator
) -> None:
    simulator.fault(
        status=403,
        body='{"message": "IP address not allowed", "code": "inbound_ip_denied"}',
        times=1,
    )
    response = broker.post_token(fresh=True)
    problem = assert_problem(response, 502, "upstream_ip_denied")
    assert "inbound IP rules" in problem["detail"]
    output = broker.server.wait_for_output("inbound IP rules refuse this broker")
    assert "inbound IP rules refuse this broker" in output


@pytest.fixture(scope="module")
def elsewhere(start_simulator: SimulatorFactory, simulator: Simulator) -> Simulator:
    """Where a redirect points: the same API key would work there, and nothing may arrive."""
    return start_simulator(simulator.api_key)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_never_followed(
    broker: Broker, elsewhere: Simulator, simulator: Simulator, status: int
) -> None:
    for location in (
        elsewhere.url + "/api/v1/authentication/api-key/exchange-token",
        "/api/v1/authentication/api-keys/exchange-token",
    ):
        simulator.clear()
        simulator.fault(status=status, headers={"Location": location}, times=1)
        response = broker.post_token(fresh=True)
        assert_problem(response, 502, "upstream_redirected")
        assert elsewhere.exchanges() == 0
        # The same host, another path: still only the one request the broker made.
        assert [seen["path"] for seen in simulator.requests()] == [
            "/api/v1/authentication/api-key/exchange-token"
        ]


def test_upstream_cookies_are_never_sent_back(broker: Broker, simulator: Simulator) -> None:
    simulator.fault(status=503, headers={"Set-Cookie": "session=tracker; Path=/"}, times=1)
    assert broker.post_token(fresh=True).status_code == 502
    assert broker.post_token(fresh=True).status_code == 200
    assert [seen["cookie"] for seen in simulator.requests()] == [False, False]


def test_an_oversized_upstream_body_is_not_read_whole(broker: Broker, simulator: Simulator) -> None:
    simulator.fault(status=200, body='{"token": "' + "a" * (4 * 1024 * 1024) + '"}', times=1)
    assert_problem(broker.post_token(fresh=True), 502, "upstream_malformed_response")
    simulator.fault(status=500, body='{"message": "' + "a" * (4 * 1024 * 1024) + '"}', times=1)
    assert_problem(broker.post_token(fresh=True), 502, "upstream_error")


# Nested deeper than a decoder can recurse (msgspec raises RecursionError past ~1000), in
# an unknown field and in the token's place; and an error body nested so.
DEEP = "[" * 3000 + "]" * 3000


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        '{"nope": 1}',
        '{"token": 5}',
        "[]",
        '{"x": ' + DEEP + ', "token": "a.b.c"}',
        '{"token": ' + DEEP + "}",
    ],
)
def test_malformed_success_bodies_are_502(broker: Broker, simulator: Simulator, body: str) -> None:
    simulator.fault(status=200, body=body, times=1)
    assert_problem(broker.post_token(fresh=True), 502, "upstream_malformed_response")


# Strings that are not UTF-8 (msgspec raised UnicodeDecodeError, not DecodeError: a 500).
_NOT_UTF8 = [b'{"token": "\xff"}', b'{"token": "a.b.c\xed\xa0\x80"}', b'{"\xff": 1}']


@pytest.mark.parametrize("body", _NOT_UTF8)
def test_success_bodies_that_are_not_utf8_are_502(
    broker: Broker, simulator: Simulator, body: bytes
) -> None:
    simulator.fault(status=200, body_base64=base64.b64encode(body).decode(), times=1)
    assert_problem(broker.post_token(fresh=True), 502, "upstream_malformed_response")


@pytest.mark.parametrize(
    ("status", "answer", "code"), [(400, 400, "upstream_rejected"), (500, 502, "upstream_error")]
)
def test_error_bodies_nested_too_deeply_or_not_utf8_are_still_the_upstreams_errors(
    broker: Broker, simulator: Simulator, status: int, answer: int, code: str
) -> None:
    for body in [b'{"message": ' + DEEP.encode() + b"}", *_NOT_UTF8]:
        simulator.fault(status=status, body_base64=base64.b64encode(body).decode(), times=1)
        assert_problem(broker.post_token(fresh=True), answer, code)


@pytest.mark.parametrize(
    "token", ["wrong_aud", "wrong_sub", "long_exp", "malformed", "expired", "no_permissions"]
)
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


def test_refused_connection_is_502_and_the_operator_sees_why(start_broker: BrokerFactory) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    broker = start_broker(upstream_url=url, name="refused")
    response = broker.post_token(fresh=True)
    assert_problem(response, 502, "upstream_unreachable")
    output = broker.server.wait_for_output('"upstream_failure"')
    line = json.loads(next(x for x in output.splitlines() if '"upstream_failure"' in x))
    assert line["url"].startswith(url)
    assert line["kind"] == "unreachable"
    assert "ClientConnectorError" in line["error"]
    output = broker.server.wait_for_output('"code":"upstream_unreachable"')
    access = [json.loads(x) for x in output.splitlines() if '"path":"/tokens"' in x]
    assert [line["code"] for line in access] == ["upstream_unreachable"]


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
