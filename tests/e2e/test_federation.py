"""Caller JWTs from a trusted identity provider, CORS, rate limits, proxies, GET /tokens/policy."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from tests.conftest import AUDIENCE, Broker, BrokerFactory, Simulator
from tests.support import loopback
from tests.support.federation import ALLOWED_ORIGIN, issuer_block, post_with
from tests.support.idp import IdentityProvider
from tests.support.problems import assert_problem, claims
from tests.support.waiting import eventually


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    yield provider
    provider.close()


@pytest.fixture(scope="module")
def steady_idp() -> Iterator[IdentityProvider]:
    """An identity provider no test rotates or takes down: the shared broker trusts it."""
    provider = IdentityProvider()
    yield provider
    provider.close()


@pytest.fixture(scope="module")
def federated(start_module_broker: BrokerFactory, steady_idp: IdentityProvider) -> Broker:
    """One broker for the tests that only send caller tokens and read their own answers and
    records (a test that rotates keys or takes the JWKS down starts its own)."""
    return start_module_broker(name="federated", extra=issuer_block(steady_idp))


def test_a_valid_caller_jwt_gets_a_token_for_its_own_subject(
    federated: Broker, steady_idp: IdentityProvider
) -> None:
    response = post_with(federated, steady_idp.token("alice"))
    assert response.status_code == 200, response.text
    assert claims(response.json()["token"])["sub"] == "alice"
    same = post_with(
        federated, steady_idp.token("alice"), {"audience": AUDIENCE, "externalUserId": "alice"}
    )
    assert same.status_code == 200
    record = federated.audit_lines()[-1]
    assert (record["caller"], record["authMethod"]) == (
        "test-idp/alice",
        "jwt:test-idp",
    )


def test_another_subject_under_self_is_403(federated: Broker, steady_idp: IdentityProvider) -> None:
    response = post_with(
        federated, steady_idp.token("alice"), {"audience": AUDIENCE, "externalUserId": "bob"}
    )
    assert_problem(response, 403, "subject_not_allowed", "externalUserId")
    header = post_with(federated, steady_idp.token("alice"), None, **{"X-On-Behalf-Of": "bob"})
    assert_problem(header, 403, "subject_not_allowed", "externalUserId")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(idp: IdentityProvider) -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(claims(idp.token("alice"))).encode())
    return f"{header}.{payload}."


def _hs256_with_public_key(idp: IdentityProvider) -> str:
    pem = idp.key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": idp.key.kid}).encode())
    payload = _b64(json.dumps(claims(idp.token("alice"))).encode())
    import hashlib
    import hmac

    signature = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


def _tampered(idp: IdentityProvider) -> str:
    header, payload, signature = idp.token("alice").split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=="))
    body["sub"] = "mallory"
    return f"{header}.{_b64(json.dumps(body).encode())}.{signature}"


def _with_jku(idp: IdentityProvider) -> str:
    from tests.support.idp import SigningKey

    attacker = SigningKey(kid=idp.key.kid)
    return jwt.encode(
        claims(idp.token("alice")),
        attacker.private,
        algorithm="RS256",
        headers={
            "kid": idp.key.kid,
            "jku": "http://attacker.example/jwks.json",
            "jwk": attacker.jwk(),
        },
    )


BAD_TOKENS: dict[str, Callable[[IdentityProvider], str]] = {
    "expired": lambda idp: idp.token(exp=int(time.time()) - 120, iat=int(time.time()) - 600),
    "not yet valid": lambda idp: idp.token(nbf=int(time.time()) + 600),
    "issued in the future": lambda idp: idp.token(iat=int(time.time()) + 600),
    "wrong iss": lambda idp: idp.token(iss="http://127.0.0.1:1"),
    "wrong aud": lambda idp: idp.token(aud="someone-else"),
    "no exp": lambda idp: idp.token(exp=None),
    "alg none": _unsigned,
    "HS256 with the public key": _hs256_with_public_key,
    "unknown kid": lambda idp: idp.token(kid="no-such-kid"),
    "tampered": _tampered,
    "foreign key via jku and jwk headers": _with_jku,
    "unusable subject": lambda idp: idp.token(subject="*"),
}


@pytest.mark.parametrize("kind", sorted(BAD_TOKENS))
def test_bad_caller_tokens_are_401(
    federated: Broker, steady_idp: IdentityProvider, kind: str
) -> None:
    response = post_with(federated, BAD_TOKENS[kind](steady_idp))
    assert_problem(response, 401, "unauthenticated")
    # The same challenge whichever check failed (RFC 6750's invalid_token: get a new one).
    assert response.headers["www-authenticate"] == (
        'Bearer realm="mka1-token-broker", error="invalid_token"'
    )


def test_a_rotated_jwks_is_picked_up_once_and_random_kids_cause_no_storm(
    start_broker: BrokerFactory, idp: IdentityProvider
) -> None:
    idp.rotate()
    broker = start_broker(
        name="jwks-rotation",
        extra=issuer_block(idp, jwks_cache_seconds="600", jwks_min_refresh_seconds="2"),
    )
    fetches = idp.jwks_fetches
    assert post_with(broker, idp.token()).status_code == 200
    assert idp.jwks_fetches == fetches + 1
    time.sleep(2.1)  # past jwks_min_refresh_seconds
    idp.rotate()
    assert post_with(broker, idp.token()).status_code == 200
    assert idp.jwks_fetches == fetches + 2
    assert post_with(broker, idp.token()).status_code == 200
    assert idp.jwks_fetches == fetches + 2, "a known kid needs no fetch"

    forged = [idp.token(kid=uuid.uuid4().hex) for _ in range(100)]
    before, started = idp.jwks_fetches, time.monotonic()
    for token in forged:
        assert post_with(broker, token).status_code == 401
    elapsed = time.monotonic() - started
    # At most one refresh per 2 s interval, however many unknown kids arrive.
    assert idp.jwks_fetches - before <= 1 + int(elapsed // 2)
    assert (
        broker.metric("broker_jwks_fetches_total", issuer="test-idp") == idp.jwks_fetches - fetches
    )


def test_a_remembered_caller_token_is_refused_once_its_key_is_withdrawn(
    start_broker: BrokerFactory, idp: IdentityProvider
) -> None:
    # A rotation after a compromise: a token the withdrawn key verified (a forger's, with
    # an exp of his choosing) was accepted from memory until that exp.
    idp.rotate()
    broker = start_broker(name="jwks-withdrawn", extra=issuer_block(idp))
    token = idp.token(exp=int(time.time()) + 3600)
    assert post_with(broker, token).status_code == 200
    idp.rotate()
    assert post_with(broker, token).status_code == 200  # the key set is still fresh
    time.sleep(2.1)  # stale (1 s), and a refetch is allowed (2 s)
    eventually(
        lambda: post_with(broker, token).status_code == 401,
        what="the token refused once the refetched set lacks its key",
    )
    assert post_with(broker, idp.token()).status_code == 200  # the new key verifies
    refused = [r for r in broker.audit_lines() if r.get("code") == "unauthenticated"]
    assert refused[-1]["reason"] == "unknown_kid"


def test_cached_keys_keep_working_while_the_jwks_endpoint_is_down(
    start_broker: BrokerFactory, idp: IdentityProvider
) -> None:
    idp.rotate()
    idp.jwks_down = False
    federated = start_broker(name="jwks-down", extra=issuer_block(idp))
    assert post_with(federated, idp.token()).status_code == 200
    idp.jwks_down = True
    time.sleep(2.1)  # the cache (1 s) is stale and a refresh is allowed (2 s)
    fetches = idp.jwks_fetches
    assert post_with(federated, idp.token()).status_code == 200
    assert idp.jwks_fetches == fetches + 1  # it tried, failed, and kept the old keys
    assert federated.metric("broker_jwks_fetch_failures_total", issuer="test-idp") >= 1


def test_cors_allows_listed_origins_only(federated: Broker, steady_idp: IdentityProvider) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    allowed = loopback.options(
        federated.url + "/tokens", headers={"Origin": ALLOWED_ORIGIN, **preflight}
    )
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    allowed_headers = allowed.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed_headers
    assert "content-type" in allowed_headers
    assert "POST" in allowed.headers["access-control-allow-methods"]

    evil = "https://evil.example"
    refused = loopback.options(federated.url + "/tokens", headers={"Origin": evil, **preflight})
    assert_problem(refused, 403, "origin_not_allowed", "Origin")
    assert "access-control-allow-origin" not in refused.headers

    ok = post_with(federated, steady_idp.token(), Origin=ALLOWED_ORIGIN)
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "origin" in ok.headers["vary"].lower()

    # The browser would hide a disallowed answer, but the server refuses the request itself.
    blocked = post_with(federated, steady_idp.token(), Origin=evil)
    assert_problem(blocked, 403, "origin_not_allowed")
    assert "access-control-allow-origin" not in blocked.headers
    # A client with no origins may not be used from a page at all.
    listed_but_not_for_this_caller = federated.post_token(headers={"Origin": ALLOWED_ORIGIN})
    assert_problem(listed_but_not_for_this_caller, 403, "origin_not_allowed")
    assert "access-control-allow-origin" not in listed_but_not_for_this_caller.headers
    assert [r["code"] for r in federated.audit_lines()[-2:]] == ["origin_not_allowed"] * 2


def test_policy_endpoint_tells_each_caller_what_it_may_ask_for(
    federated: Broker, steady_idp: IdentityProvider
) -> None:
    mine = loopback.get(
        federated.url + "/tokens/policy",
        headers={"Authorization": f"Bearer {steady_idp.token('carol')}"},
    )
    assert mine.status_code == 200, mine.text
    assert mine.headers["cache-control"] == "no-store"
    assert mine.json() == {
        "caller": "test-idp/carol",
        "authMethod": "jwt:test-idp",
        "audiences": [AUDIENCE],
        "subjects": "self",
        "selfSubject": "carol",
        "expiresIn": {"min": 300, "max": 900, "default": 900},
        "permissions": None,
        "cache": True,
        "roles": [],
    }
    billing = loopback.get(
        federated.url + "/tokens/policy", headers=federated.clients["billing"].headers()
    )
    body = billing.json()
    assert body["subjects"] == "any"
    assert body["expiresIn"] == {"min": 300, "max": 2592000, "default": 900}
    assert body["permissions"] == ["read:files", "read:responses", "write:responses"]
    assert_problem(loopback.get(federated.url + "/tokens/policy"), 401, "unauthenticated")


def test_rate_limits_give_429_with_retry_after(
    start_broker: BrokerFactory, simulator: Simulator
) -> None:
    broker = start_broker(
        name="limited",
        rate_limits="per_caller = { rate_per_second = 0.01, burst = 5 }\n"
        "per_end_user = { rate_per_second = 0.01, burst = 2 }\n",
    )
    statuses = [
        broker.post_token(body={"audience": AUDIENCE, "externalUserId": "same"}).status_code
        for _ in range(3)
    ]
    assert statuses == [200, 200, 429]
    limited = broker.post_token(body={"audience": AUDIENCE, "externalUserId": "same"})
    problem = assert_problem(limited, 429, "rate_limited")
    assert "end user" in problem["detail"]
    assert int(limited.headers["retry-after"]) >= 1
    # Another end user is still served, until the caller's own bucket is empty.
    assert (
        broker.post_token(body={"audience": AUDIENCE, "externalUserId": "other"}).status_code == 200
    )
    caller_limited = broker.post_token(body={"audience": AUDIENCE, "externalUserId": "third"})
    assert "caller" in assert_problem(caller_limited, 429, "rate_limited")["detail"]
    assert broker.metric("broker_rate_limited_total", limit="per_end_user") >= 1
    assert broker.metric("broker_rate_limited_total", limit="per_caller") == 1


def test_repeated_auth_failures_are_throttled_with_bounded_records(
    start_broker: BrokerFactory,
) -> None:
    broker = start_broker(
        name="auth-throttle",
        rate_limits="auth_failures = { rate_per_second = 0.01, burst = 5 }\n",
    )
    statuses = [
        broker.post_token(client=None, headers={"Authorization": f"Bearer bk_guess{n}"}).status_code
        for n in range(50)
    ]
    assert statuses[:5] == [401] * 5
    assert set(statuses[5:]) == {429}
    throttled = broker.post_token(client=None, headers={"Authorization": "Bearer bk_guess"})
    assert_problem(throttled, 429, "too_many_auth_failures")
    assert throttled.headers["retry-after"]
    # The right key still gets in: a guesser must not lock out every caller that shares its
    # address (a NAT, a load balancer). Its request is served and recorded as any other.
    served = broker.post_token()
    assert served.status_code == 200, served.text
    assert broker.audit_lines()[-1]["tokenSha256"] == served.json()["tokenSha256"]
    hit = broker.post_token()  # a cache hit: the connection layer's own path
    assert hit.status_code == 200, hit.text
    assert broker.audit_lines()[-1]["cache"] == "hit"
    # ... and spends nothing of the address's bucket: the guesser stays throttled.
    again = broker.post_token(client=None, headers={"Authorization": "Bearer bk_guess"})
    assert_problem(again, 429, "too_many_auth_failures")
    records = [r for r in broker.audit_lines() if r["code"] == "unauthenticated"]
    assert len(records) == 5
    output = broker.server.wait_for_output("auth_failures_throttled")
    assert output.count("auth_failures_throttled") == 1


def test_a_trusted_proxy_names_the_end_user_only_from_its_networks(
    start_broker: BrokerFactory,
) -> None:
    proxies = f"""
[[proxies]]
id = "oauth2-proxy"
cidrs = ["127.0.0.0/8"]
user_header = "X-Forwarded-User"
audiences = ["{AUDIENCE}"]

[[proxies]]
id = "elsewhere"
cidrs = ["10.0.0.0/8"]
user_header = "X-Auth-Request-User"
audiences = ["{AUDIENCE}"]
"""
    # Loopback is also a trusted proxy here, whose X-Forwarded-For names the client.
    broker = start_broker(
        name="proxied", extra=proxies, extra_server='trusted_proxies = ["127.0.0.1"]'
    )
    via_proxy = loopback.post(
        broker.url + "/tokens",
        json={"audience": AUDIENCE},
        headers={"X-Forwarded-User": "dana"},
    )
    assert via_proxy.status_code == 200, via_proxy.text
    assert claims(via_proxy.json()["token"])["sub"] == "dana"
    record = broker.audit_lines()[-1]
    assert (record["caller"], record["authMethod"]) == ("oauth2-proxy", "proxy:oauth2-proxy")
    # This connection is not from the second proxy's network: its header means nothing.
    ignored = loopback.post(
        broker.url + "/tokens",
        json={"audience": AUDIENCE},
        headers={"X-Auth-Request-User": "erin"},
    )
    assert_problem(ignored, 401, "unauthenticated")
    # Nor does a forwarded address make it so: the network is the connection's own. It was
    # the forwarded client, so a trusted proxy (any pod of a trusted pod network) could name
    # an address in the identity proxy's network and any end user with it.
    forged = loopback.post(
        broker.url + "/tokens",
        json={"audience": AUDIENCE},
        headers={"X-Forwarded-For": "10.1.2.3", "X-Auth-Request-User": "erin"},
    )
    assert_problem(forged, 401, "unauthenticated")
    # And the identity proxy, itself a trusted proxy, still vouches for its users whatever
    # client it forwards; the record keeps that client as the source.
    forwarded = loopback.post(
        broker.url + "/tokens",
        json={"audience": AUDIENCE},
        headers={"X-Forwarded-For": "203.0.113.9", "X-Forwarded-User": "dana"},
    )
    assert forwarded.status_code == 200, forwarded.text
    record = broker.audit_lines()[-1]
    assert (record["caller"], record["sourceAddress"]) == ("oauth2-proxy", "203.0.113.9")


def test_a_jwt_subject_never_poses_as_a_configured_client(
    federated: Broker, steady_idp: IdentityProvider
) -> None:
    client_id = federated.clients["billing"].id
    response = post_with(federated, steady_idp.token(client_id))
    assert response.status_code == 200, response.text
    record = federated.audit_lines()[-1]
    assert record["caller"] == f"test-idp/{client_id}"
    assert record["caller"] != client_id
