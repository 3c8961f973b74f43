"""What an attacker tries before and around authentication: hostile caller JWTs, ambiguous
headers, floods from a throttled address, floods of denials, and one caller starving an end
user for everyone. Each ends in a clear 4xx with bounded audit and log volume."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from tests.conftest import AUDIENCE, OTHER_AUDIENCE, Broker, BrokerFactory
from tests.support import loopback
from tests.support.federation import issuer_block, post_with
from tests.support.idp import IdentityProvider
from tests.support.problems import assert_problem
from tests.support.records import accounted
from tests.support.waiting import eventually


@pytest.fixture(scope="module")
def idp() -> Iterator[IdentityProvider]:
    provider = IdentityProvider()
    yield provider
    provider.close()


def _hostile_tokens(idp: IdentityProvider) -> dict[str, str]:
    ec_private = ec.generate_private_key(ec.SECP256R1())
    ec_public: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(ec_private.public_key()))
    idp.extra_jwks = [
        ec_public | {"kid": "ec-key", "use": "sig"},
        {"kty": "oct", "kid": "shared", "k": "c2VjcmV0c2VjcmV0c2VjcmV0", "alg": "RS256"},
    ]
    claims = jwt.decode(idp.token("alice"), options={"verify_signature": False})
    rsa = idp.key
    return {
        "ES256 on an RSA kid": jwt.encode(
            claims, ec_private, algorithm="ES256", headers={"kid": rsa.kid}
        ),
        "RS256 on an EC kid": jwt.encode(
            claims, rsa.private, algorithm="RS256", headers={"kid": "ec-key"}
        ),
        "a non-string iss": jwt.PyJWS().encode(
            json.dumps(claims | {"iss": [idp.issuer]}).encode(),
            rsa.private,
            algorithm="RS256",
            headers={"kid": rsa.kid},
        ),
        "a symmetric key in the JWKS": jwt.encode(
            claims, rsa.private, algorithm="RS256", headers={"kid": "shared"}
        ),
    }


def test_hostile_caller_jwts_are_401_audited_throttled_and_one_line_each(
    start_broker: BrokerFactory, idp: IdentityProvider
) -> None:
    broker = start_broker(
        name="hostile-jwts",
        extra=issuer_block(idp),
        rate_limits="auth_failures = { rate_per_second = 0.01, burst = 4 }\n",
    )
    tokens = _hostile_tokens(idp)
    alice = idp.token("alice")
    assert post_with(broker, alice).status_code == 200  # verified, and remembered until exp
    for why, token in tokens.items():
        assert_problem(post_with(broker, token), 401, "unauthenticated"), why
    # Counted by the auth-failure throttle like any other bad credential: from this address
    # a token not verified yet is refused unread (its signature check is what a flood costs).
    assert_problem(post_with(broker, idp.token("bob")), 429, "too_many_auth_failures")
    # A token verified before still gets in: known at no cost, as a client key is.
    assert post_with(broker, alice).status_code == 200
    records = [r for r in broker.audit_lines() if r["code"] == "unauthenticated"]
    assert [r["reason"] for r in records] == [
        "algorithm_does_not_fit_key",
        "algorithm_does_not_fit_key",
        "untrusted_issuer",
        "unknown_kid",
    ]
    output = broker.settled_output()
    assert "Traceback" not in output
    assert "unhandled_exception" not in output
    access = [line for line in output.splitlines() if '"event":"request"' in line]
    assert [json.loads(line)["status"] for line in access if '"/tokens"' in line] == [
        200,
        *[401] * 4,
        200,
    ]


def test_two_authorization_headers_are_refused(broker: Broker) -> None:
    for name in ("Authorization", "X-On-Behalf-Of", "Content-Type", "Content-Encoding"):
        headers = [
            ("Authorization", broker.clients["billing"].headers()["Authorization"]),
            ("Content-Type", "application/json"),
            (name, "Bearer second" if name == "Authorization" else "application/json"),
        ]
        if name == "X-On-Behalf-Of":
            headers += [("X-On-Behalf-Of", "user_123")]
        if name == "Content-Encoding":
            # Read by the first, refused by the second: one body, two meanings.
            headers[2] = (name, "identity")
            headers += [(name, "gzip")]
        response = loopback.post(
            broker.url + "/tokens",
            content=json.dumps({"audience": AUDIENCE, "externalUserId": "user_123"}),
            headers=headers,
        )
        problem = assert_problem(response, 400, "ambiguous_header")
        assert problem["errors"][0]["field"] == name.lower()


def test_a_throttled_address_gets_429_for_anything_and_writes_nothing(
    start_broker: BrokerFactory,
) -> None:
    broker = start_broker(
        name="pre-auth-throttle",
        rate_limits="auth_failures = { rate_per_second = 0.01, burst = 3 }\n",
    )
    # Without a credential, a text/plain body is a 401 (counted), not a 415.
    anonymous = loopback.post(
        broker.url + "/tokens", content=b"hello", headers={"Content-Type": "text/plain"}
    )
    assert_problem(anonymous, 401, "unauthenticated")
    for n in range(2):
        broker.post_token(client=None, headers={"Authorization": f"Bearer bk_guess{n}"})
    before = len(broker.audit_lines())
    guess = {"Authorization": "Bearer bk_guess"}
    for _ in range(20):
        plain = loopback.post(
            broker.url + "/tokens", content=b"x", headers={"Content-Type": "text/plain"}
        )
        assert_problem(plain, 429, "too_many_auth_failures")
        oversize = broker.post_token(
            client=None, headers=guess, content=b"{" + b" " * 40_000 + b"}"
        )
        assert_problem(oversize, 429, "too_many_auth_failures")
    assert len(broker.audit_lines()) == before == 3
    # No record of their own, but counted on the trail: an auditor can account for each of
    # the 40 (they were on no record at all).
    eventually(
        lambda: (
            sum(
                count["count"]
                for record in broker.audit_records()
                if record["type"] == "unrecorded"
                for count in record["counts"]
                if count["kind"] == "unauthenticated"
            )
            == 40
        ),
        what="the throttled refusals counted",
    )
    # A caller whose key is right is answered as from anywhere else, and recorded.
    oversize = broker.post_token(content=b"{" + b" " * 40_000 + b"}")
    assert_problem(oversize, 413, "body_too_large")
    assert broker.audit_lines()[-1]["code"] == "body_too_large"
    broker.server.wait_for_output("auth_failures_throttled")
    output = broker.settled_output()
    assert output.count("auth_failures_throttled") == 1
    # No access line per throttled request either.
    statuses = [
        json.loads(line)["status"] for line in output.splitlines() if '"event":"request"' in line
    ]
    assert 429 not in statuses


def test_denials_spend_the_callers_bucket_and_a_flood_is_recorded_once(
    start_broker: BrokerFactory,
) -> None:
    broker = start_broker(
        name="denial-flood",
        rate_limits="per_caller = { rate_per_second = 0.01, burst = 3 }\n",
    )
    self_only = broker.clients["self-service"]
    denied = {"audience": OTHER_AUDIENCE}
    started = time.monotonic()
    statuses = [broker.post_token(client=self_only, body=denied).status_code for _ in range(30)]
    assert statuses == [403] * 3 + [429] * 27
    malformed = broker.post_token(client=self_only, content=b"{not json")
    assert_problem(malformed, 429, "rate_limited")
    flood_seconds = time.monotonic() - started
    codes = [r["code"] for r in broker.audit_lines() if r["caller"] == self_only.id]
    assert codes[:3] == ["audience_not_allowed"] * 3
    # The 28 refusals of the flood: recorded once a second, however long they took to send
    # (about 0.3 s here; more on a loaded machine), the rest only counted.
    flood = codes[3:]
    assert set(flood) == {"rate_limited"}
    assert 1 <= len(flood) <= 1 + int(flood_seconds)
    # With no request after it, the flood's last second is on the trail too, in a record of
    # its own, naming the decision its refusals repeated: every one of the 28 is accounted.
    eventually(
        lambda: accounted(broker.audit_records(), "rate_limited", "rate_limited") == 28,
        what="the flood's last counts written",
    )
    records = broker.audit_records()
    limited = {r["requestId"] for r in records if r.get("code") == "rate_limited"}
    apart = [c for r in records if r["type"] == "unrecorded" for c in r["counts"]]
    assert apart
    assert all(c["kind"] == "rate_limited" and c["likeRequestId"] in limited for c in apart), apart


def test_one_caller_cannot_exhaust_an_end_user_for_other_callers(
    start_broker: BrokerFactory,
) -> None:
    broker = start_broker(
        name="per-end-user",
        rate_limits="per_end_user = { rate_per_second = 0.01, burst = 2 }\n",
    )
    carol = {"audience": AUDIENCE, "externalUserId": "carol"}
    statuses = [broker.post_token("billing", body=carol).status_code for _ in range(4)]
    assert statuses == [200, 200, 429, 429]
    other = broker.post_token("uncached", body=carol)
    assert other.status_code == 200, other.text


def test_unauthenticated_records_have_a_budget_for_all_addresses_together(
    start_broker: BrokerFactory,
) -> None:
    # Per address, generous (as if each request came from another address); overall, tight.
    broker = start_broker(
        name="anonymous-budget",
        rate_limits="auth_failures = { rate_per_second = 1000, burst = 100000 }\n"
        "unauthenticated_records = { rate_per_second = 2, burst = 5 }\n",
    )
    started = time.monotonic()
    for n in range(25):
        guess = broker.post_token(client=None, headers={"Authorization": f"Bearer bk_{n}"})
        assert_problem(guess, 401, "unauthenticated")
    elapsed = time.monotonic() - started
    records = [r for r in broker.audit_lines() if r["code"] == "unauthenticated"]
    # The burst, plus what the budget refilled (2/s) while the requests were made.
    assert 5 <= len(records) <= 5 + int(elapsed * 2) + 1
    time.sleep(1.0)
    assert_problem(broker.post_token(client=None), 401, "unauthenticated")
    # Every refusal is accounted for: recorded, counted in the next record, or (a second
    # without one) counted in a record of its own.
    eventually(
        lambda: accounted(broker.audit_records(), "unauthenticated", "unauthenticated") == 26,
        what="every refusal accounted",
    )
    records = [r for r in broker.audit_lines() if r["code"] == "unauthenticated"]
    # Together they are at least what the budget could not admit during the flood.
    counted = accounted(broker.audit_records(), "unauthenticated", "unauthenticated")
    assert counted - len(records) >= 25 - (5 + int(elapsed * 2) + 1)
