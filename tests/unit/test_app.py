"""No input gives a 500: Hypothesis over the raw bytes of bodies, header names and values,
query strings, methods and paths, driven in-process (no HTTP client or parser in between to
tidy the bytes up). Every answer at or above 400 is a problem document with a ``code``."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.app import create_asgi
from broker.config import parse_settings
from tests.conftest import AUDIENCE
from tests.support.asgi import AsgiDriver, RawResponse
from tests.support.waiting import free_port

KEY = "bk_fuzz_" + "k" * 32
AUTH = (b"authorization", f"Bearer {KEY}".encode())
JSON = (b"content-type", b"application/json")
# Upstream failures are honest 502/503/504s; a 500 is never honest.
UPSTREAM_STATUSES = {502, 503, 504}


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AsgiDriver]:
    directory: Path = tmp_path_factory.mktemp("fuzz")
    os.environ["FUZZ_MKA1_KEY"] = "mka1_fuzz_key"
    document = f"""
[upstream]
base_url = "http://127.0.0.1:{free_port()}"
api_key_env = "FUZZ_MKA1_KEY"
max_attempts = 1
timeout_seconds = 0.5

[audit]
dir = "{directory}"
fsync = false

[rate_limits]
per_caller = {{ rate_per_second = 1000000, burst = 1000000 }}
per_end_user = {{ rate_per_second = 1000000, burst = 1000000 }}
auth_failures = {{ rate_per_second = 1000000, burst = 1000000 }}
unauthenticated_records = {{ rate_per_second = 1000000, burst = 1000000 }}

[[clients]]
id = "fuzzer"
key_sha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"
audiences = ["{AUDIENCE}"]
subjects = "any"
roles = ["auditor"]
permissions = ["read:responses"]
cors_origins = ["https://app.example.com"]

[[proxies]]
id = "proxy"
cidrs = ["127.0.0.0/8"]
audiences = ["{AUDIENCE}"]
"""
    started = AsgiDriver(create_asgi(parse_settings(document)))
    started.start()
    yield started
    started.stop()


def _assert_answered(response: RawResponse) -> None:
    assert response.status != 500, response.body
    assert 100 <= response.status < 600
    if response.status >= 400:
        assert response.headers[b"content-type"] == b"application/problem+json", response
        problem = json.loads(response.body)
        assert problem["status"] == response.status
        assert isinstance(problem["code"], str)
        assert problem["code"]


_FIELDS = st.sampled_from(["audience", "externalUserId", "expiresIn", "permissions", "x"])
_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.just(AUDIENCE),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(_FIELDS | st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=12,
)


@st.composite
def _bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["raw", "json", "spliced"]))
    if kind == "raw":
        return draw(st.binary(max_size=600))
    encoded = json.dumps(draw(_JSON_VALUES)).encode()
    if kind == "spliced":
        at = draw(st.integers(0, len(encoded)))
        encoded = encoded[:at] + draw(st.binary(min_size=1, max_size=8)) + encoded[at:]
    return encoded


_HEADER_NAMES = st.sampled_from(
    [
        b"authorization",
        b"content-type",
        b"x-on-behalf-of",
        b"origin",
        b"cache-control",
        b"x-forwarded-user",
        b"access-control-request-method",
        b"content-length",
    ]
) | st.binary(min_size=1, max_size=24)
_HEADERS = st.lists(st.tuples(_HEADER_NAMES, st.binary(max_size=300)), max_size=6)
_FUZZ_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@_FUZZ_SETTINGS
@given(body=_bodies(), authenticated=st.booleans(), extra=_HEADERS)
def test_no_body_gives_a_500(
    driver: AsgiDriver, body: bytes, authenticated: bool, extra: list[tuple[bytes, bytes]]
) -> None:
    headers = ([AUTH] if authenticated else []) + [JSON, *extra]
    _assert_answered(driver.request("POST", "/tokens", headers=headers, body=body))


# Header values are read as latin-1: b"\xb2" is "²", and b"\xb9" is "¹".
@pytest.mark.parametrize("length", [b"\xb2", b"1\xb9", b"1_0"])
def test_a_content_length_of_non_ascii_digits_is_not_a_500(
    driver: AsgiDriver, length: bytes
) -> None:
    # Found by the test below: "²".isdigit() is True, and int() refused it, a 500.
    body = json.dumps({"audience": AUDIENCE, "externalUserId": "u1"}).encode()
    headers = [AUTH, JSON, (b"content-length", length)]
    _assert_answered(driver.request("POST", "/tokens", headers=headers, body=body))


@_FUZZ_SETTINGS
@given(headers=_HEADERS, authenticated=st.booleans())
def test_no_header_gives_a_500(
    driver: AsgiDriver, headers: list[tuple[bytes, bytes]], authenticated: bool
) -> None:
    body = json.dumps({"audience": AUDIENCE, "externalUserId": "u1"}).encode()
    sent = ([AUTH] if authenticated else []) + headers
    for method, path in (("POST", "/tokens"), ("GET", "/tokens/policy"), ("OPTIONS", "/tokens")):
        _assert_answered(driver.request(method, path, headers=sent, body=body))


@_FUZZ_SETTINGS
@given(
    query=st.binary(max_size=300)
    | st.lists(
        st.tuples(
            st.sampled_from(
                [b"limit", b"cursor", b"since", b"until", b"subject", b"outcome", b"x"]
            ),
            st.binary(max_size=60) | st.sampled_from([b"9" * 5000, b"-1", b"0", b"1e3"]),
        ),
        max_size=4,
    ).map(lambda pairs: b"&".join(name + b"=" + value for name, value in pairs))
)
def test_no_query_string_gives_a_500(driver: AsgiDriver, query: bytes) -> None:
    _assert_answered(driver.request("GET", "/audit/events", headers=[AUTH], query=query))


@_FUZZ_SETTINGS
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE"]),
    path=st.sampled_from(
        ["/tokens", "/tokens/policy", "/audit/events", "/healthz", "/readyz", "/metrics", "/"]
    )
    | st.text(max_size=40).map(lambda text: "/" + text),
)
def test_no_method_or_path_gives_a_500(driver: AsgiDriver, method: str, path: str) -> None:
    response = driver.request(method, path, headers=[AUTH, JSON], body=b"{}")
    _assert_answered(response)


def test_an_unexpected_error_on_the_direct_token_route_is_a_500_problem_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from broker.app import create_served
    from broker.service import TokenService

    os.environ["FUZZ_MKA1_KEY"] = "mka1_fuzz_key"
    document = f"""
[upstream]
base_url = "http://127.0.0.1:{free_port()}"
api_key_env = "FUZZ_MKA1_KEY"

[audit]
dir = "{tmp_path}"
fsync = false

[[clients]]
id = "fuzzer"
key_sha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"
audiences = ["{AUDIENCE}"]
subjects = "any"
"""
    app = create_served(parse_settings(document)).app

    async def broken(self: TokenService, *_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(TokenService, "issue", broken)
    driver = AsgiDriver(app)
    driver.start()
    try:
        body = json.dumps({"audience": AUDIENCE, "externalUserId": "u"}).encode()
        answer = driver.request("POST", "/tokens", headers=[AUTH, JSON], body=body)
    finally:
        driver.stop()
    assert answer.status == 500
    assert answer.headers[b"content-type"] == b"application/problem+json"
    assert json.loads(answer.body)["code"] == "internal_error"
    assert answer.headers[b"cache-control"] == b"no-store"
    assert b"x-request-id" in answer.headers


@pytest.mark.parametrize(
    "path", ["/healthz", "/readyz", "/metrics", "/openapi.json", "/tokens/policy"]
)
def test_head_answers_as_its_get_without_a_body(driver: AsgiDriver, path: str) -> None:
    got = driver.request("GET", path, headers=[AUTH])
    headed = driver.request("HEAD", path, headers=[AUTH])
    assert (headed.status, got.status) == (200, 200)
    assert headed.headers[b"content-type"] == got.headers[b"content-type"]
    assert headed.headers[b"cache-control"] == b"no-store"
    assert headed.body == b""
    assert got.body
    # RFC 9110 8.6: a HEAD answer's Content-Length is the GET's, or absent (it said 0).
    # The exposition changes with every request, so /metrics does not say it.
    expected = None if path == "/metrics" else b"%d" % len(got.body)
    assert headed.headers.get(b"content-length") == expected


def test_head_on_the_caller_policy_needs_a_caller_as_its_get_does(driver: AsgiDriver) -> None:
    headed = driver.request("HEAD", "/tokens/policy")
    got = driver.request("GET", "/tokens/policy")
    assert headed.status == got.status == 401
    # The same problem (the server sends a HEAD answer's head only).
    assert headed.headers[b"content-length"] == got.headers[b"content-length"]
    assert json.loads(headed.body)["code"] == "unauthenticated"
