"""The MKA1 exchange client in-process, against a scripted server on loopback: what it sends,
how every answer maps to a failure kind, retries, the next key, and the circuit breaker.
(The same client against the simulator, through a broker: tests/e2e/test_upstream.py.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import pytest

from broker.config import UpstreamSettings
from broker.policy import Grant
from broker.secrets import ApiKeySource
from broker.upstream import MAX_RESPONSE_BYTES, Exchanged, UpstreamClient, UpstreamFailure
from tests.support.scripted_http import Answer, ScriptedServer, scripted_server

KEY = "mk_live_current-key-0123456789"
NEXT_KEY = "mk_live_next-key-9876543210"
GRANT = Grant(
    audience="https://api.example.com",
    external_user_id="user_123",
    expires_in=900,
    permissions=("read:responses",),
)
T = TypeVar("T")


def _token(value: str = "eyJhbGciOiJFUzI1NiJ9.e30.c2ln") -> Answer:
    return Answer(body=json.dumps({"token": value}).encode())


def _error(status: int, body: Any = None, *headers: tuple[str, str]) -> Answer:
    encoded = b"" if body is None else json.dumps(body).encode()
    return Answer(status, encoded, (("Content-Type", "application/json"), *headers))


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_UPSTREAM_KEY", KEY)
    monkeypatch.setenv("TEST_UPSTREAM_NEXT_KEY", NEXT_KEY)


def _with_client(
    server: ScriptedServer,
    use: Callable[[UpstreamClient], Awaitable[T]],
    *,
    next_key: bool = False,
    **overrides: Any,
) -> T:
    settings = UpstreamSettings(
        base_url=server.url,
        exchange_path="/exchange",
        api_key_env="TEST_UPSTREAM_KEY",
        api_key_next_env="TEST_UPSTREAM_NEXT_KEY" if next_key else None,
        backoff_base_seconds=0.001,
        backoff_max_seconds=0.005,
        **overrides,
    )

    async def run() -> T:
        client = UpstreamClient(
            settings,
            ApiKeySource.current_key(settings, None),
            ApiKeySource.next_key(settings, None) if next_key else None,
        )
        await client.start()
        try:
            return await use(client)
        finally:
            await client.close()

    return asyncio.run(run())


def _exchange(server: ScriptedServer, **overrides: Any) -> Exchanged | UpstreamFailure:
    async def use(client: UpstreamClient) -> Exchanged | UpstreamFailure:
        try:
            return await client.exchange(GRANT)
        except UpstreamFailure as failure:
            return failure

    return _with_client(server, use, **overrides)


def _failure(server: ScriptedServer, **overrides: Any) -> UpstreamFailure:
    found = _exchange(server, **overrides)
    assert isinstance(found, UpstreamFailure), found
    # Nothing the upstream or the broker holds leaks into what is raised.
    for text in (str(found), found.message or "", found.error or ""):
        assert KEY not in text
        assert NEXT_KEY not in text
    return found


def test_the_request_carries_the_key_the_end_user_and_the_grant_in_camel_case() -> None:
    with scripted_server(_token("the.token.itself")) as server:
        exchanged = _exchange(server)
    assert isinstance(exchanged, Exchanged)
    assert (exchanged.token, exchanged.status) == ("the.token.itself", 200)
    [request] = server.received
    assert (request.method, request.path) == ("POST", "/exchange")
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["x-on-behalf-of"] == "user_123"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == "mka1-token-broker"
    assert json.loads(request.body) == {
        "audience": "https://api.example.com",
        "externalUserId": "user_123",
        "expiresIn": 900,
        "permissions": ["read:responses"],
    }


def test_a_grant_of_the_keys_full_scope_sends_no_permissions_member() -> None:
    with scripted_server(_token()) as server:

        async def use(client: UpstreamClient) -> Exchanged:
            return await client.exchange(msgspec.structs.replace(GRANT, permissions=None))

        _with_client(server, use)
    assert "permissions" not in json.loads(server.received[0].body)


@pytest.mark.parametrize(
    ("answer", "kind"),
    [
        (_error(400, {"code": "invalid"}), "rejected"),
        (_error(401, {"code": "unauthorized"}), "credentials"),
        (_error(403, {"code": "forbidden"}), "credentials"),
        (_error(403, {"code": "inbound_ip_denied"}), "ip_denied"),
        (_error(404), "refused"),
        (_error(409), "refused"),
        (_error(410), "refused"),
        (_error(418), "refused"),
        (_error(429, None, ("Retry-After", "120")), "rate_limited"),
        (_error(500), "server_error"),
        (_error(501), "server_error"),
        (_error(301, None, ("Location", "http://127.0.0.1:9/elsewhere")), "redirected"),
        (_error(307, None, ("Location", "/exchange-again")), "redirected"),
        (Answer(200, b"not json"), "malformed"),
        (Answer(200, b'{"token": 7}'), "malformed"),
        (Answer(200, b'{"jwt": "a.b.c"}'), "malformed"),
        (Answer(200, b"[" * 10_000 + b"]" * 10_000), "malformed"),
        (Answer(200, b"\xff\xfe"), "malformed"),
    ],
)
def test_each_answer_is_one_failure_kind(answer: Answer, kind: str) -> None:
    with scripted_server(answer) as server:
        failure = _failure(server, max_attempts=1)
    assert failure.kind == kind
    assert failure.status == answer.status
    # One attempt: a redirect is never followed, wherever it points.
    assert len(server.received) == 1


def test_a_400_names_the_request_fields_it_rejects_and_nothing_it_says() -> None:
    said = {
        "code": "validation_error",
        "message": f"echo of {KEY} and <script>",
        "details": [
            {"path": ["expiresIn"], "message": "too long <script>"},
            {"path": "audience", "message": "bad"},
            {"path": ["headers", "x"], "message": "ignored"},
            {"path": [3], "message": "ignored"},
            {"message": "no path"},
        ],
    }
    with scripted_server(_error(400, said)) as server:
        failure = _failure(server)
    assert (failure.kind, failure.message) == ("rejected", "audience, expiresIn")


def test_a_400_whose_body_is_not_its_error_shape_names_no_field() -> None:
    for body in (b"<html>", b'{"details": "x"}', b'{"details": [{"path": {"a": 1}}]}'):
        with scripted_server(Answer(400, body)) as server:
            failure = _failure(server)
        assert (failure.kind, failure.message) == ("rejected", None)


def test_an_oversized_token_answer_is_malformed_and_an_oversized_error_keeps_its_status() -> None:
    big = b'{"token": "' + b"a" * MAX_RESPONSE_BYTES + b'"}'
    with scripted_server(Answer(200, big)) as server:
        assert _failure(server).kind == "malformed"
    with scripted_server(Answer(200, pieces=(big[:1000], big[1000:]))) as server:
        assert _failure(server).kind == "malformed"
    with scripted_server(Answer(403, big)) as server:
        failure = _failure(server)
    assert (failure.kind, failure.status) == ("credentials", 403)


def test_a_token_answer_in_several_segments_is_read_whole() -> None:
    body = json.dumps({"token": "x" * 40_000}).encode()
    pieces = (body[:7], body[7:20_000], body[20_000:])
    with scripted_server(Answer(200, pieces=pieces)) as server:
        exchanged = _exchange(server)
    assert isinstance(exchanged, Exchanged)
    assert exchanged.token == "x" * 40_000


def test_retryable_answers_are_retried_and_the_rest_are_not() -> None:
    with scripted_server(_error(503), _error(502), _token()) as server:
        assert isinstance(_exchange(server), Exchanged)
    assert len(server.received) == 3
    for status in (400, 401, 404, 500):
        with scripted_server(_error(status), _token()) as server:
            _failure(server)
        assert len(server.received) == 1, status


def test_retries_stop_at_max_attempts_with_the_last_failure() -> None:
    with scripted_server(_error(503)) as server:
        failure = _failure(server, max_attempts=2)
    assert (failure.kind, failure.status, len(server.received)) == ("server_error", 503, 2)


def test_a_retry_after_beyond_what_the_broker_would_wait_is_passed_on_not_waited_for() -> None:
    with scripted_server(_error(429, None, ("Retry-After", "120")), _token()) as server:
        failure = _failure(server, retry_after_max_seconds=5)
    assert (failure.kind, failure.retry_after, len(server.received)) == ("rate_limited", 120, 1)


def test_a_short_retry_after_is_waited_for_and_then_retried() -> None:
    with scripted_server(_error(429, None, ("Retry-After", "0")), _token()) as server:
        assert isinstance(_exchange(server), Exchanged)
    assert len(server.received) == 2


def test_a_refused_key_is_tried_once_with_the_next_key() -> None:
    with scripted_server(_error(401), _token()) as server:
        assert isinstance(_exchange(server, next_key=True), Exchanged)
    assert [r.headers["authorization"] for r in server.received] == [
        f"Bearer {KEY}",
        f"Bearer {NEXT_KEY}",
    ]
    with scripted_server(_error(401)) as server:
        assert _failure(server, next_key=True).kind == "credentials"
    assert len(server.received) == 2


def test_an_unreachable_upstream_is_named_by_its_reason_only() -> None:
    with scripted_server() as server:
        url = server.url
    closed = ScriptedServer(url=url)
    failure = _failure(closed, max_attempts=1)
    assert failure.kind == "unreachable"
    assert failure.error is not None
    assert failure.error.startswith("Client")
    assert url not in failure.error


def test_an_answer_slower_than_the_timeout_is_a_timeout() -> None:
    with scripted_server(Answer(delay=1.0)) as server:
        failure = _failure(server, timeout_seconds=0.2, max_attempts=1)
    assert failure.kind == "timeout"


def test_the_circuit_opens_after_the_threshold_and_then_fails_fast() -> None:
    async def use(client: UpstreamClient) -> list[str]:
        kinds: list[str] = []
        for _ in range(4):
            try:
                await client.exchange(GRANT)
            except UpstreamFailure as failure:
                kinds.append(failure.kind)
        return kinds

    with scripted_server(_error(500)) as server:
        kinds = _with_client(
            server, use, max_attempts=1, circuit_failure_threshold=2, circuit_cooldown_seconds=60
        )
    assert kinds == ["server_error", "server_error", "circuit_open", "circuit_open"]
    assert len(server.received) == 2


def test_failures_that_say_nothing_of_the_upstreams_health_never_open_the_circuit() -> None:
    async def use(client: UpstreamClient) -> str:
        for _ in range(5):
            with pytest.raises(UpstreamFailure):
                await client.exchange(GRANT)
        return client.breaker.state

    for status in (400, 401, 404):
        with scripted_server(_error(status)) as server:
            state = _with_client(server, use, max_attempts=1, circuit_failure_threshold=2)
        assert state == "closed", status


def test_a_half_open_probe_that_is_cancelled_lets_the_next_probe_through() -> None:
    """A probe that ends without a verdict (its request cancelled, say at the end of a
    shutdown's grace) must not hold the half-open circuit shut: every later exchange would
    fail fast, for good, without one call to the upstream."""

    async def use(client: UpstreamClient) -> list[str]:
        with pytest.raises(UpstreamFailure):
            await client.exchange(GRANT)
        assert client.breaker.state == "open"
        await asyncio.sleep(0.06)
        probe = asyncio.create_task(client.exchange(GRANT))
        await asyncio.sleep(0.1)  # under way: the server holds its answer for 0.5 s
        assert str(client.breaker.state) == "half_open"
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
        exchanged = await client.exchange(GRANT)
        return [exchanged.token, client.breaker.state]

    with scripted_server(_error(500), Answer(delay=0.5), _token("recovered")) as server:
        found = _with_client(
            server, use, max_attempts=1, circuit_failure_threshold=1, circuit_cooldown_seconds=0.05
        )
    assert found == ["recovered", "closed"]
    assert len(server.received) == 3
