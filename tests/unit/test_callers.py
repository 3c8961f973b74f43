"""Authentication in-process: client keys looked up by digest (with thousands of clients),
bearer parsing, a proxy's user header believed only from the proxy's networks, and callers
of a trusted issuer (against the test identity provider's real JWKS endpoint)."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time

import aiohttp
import pytest

from broker.callers import Authenticator, Caller, Unauthenticated
from broker.config import ClientSettings, ProxySettings
from broker.federation import CallerTokenVerifier
from tests.support.federation import caller_verifier
from tests.support.idp import IdentityProvider

AUDIENCE = "https://api.example.com"


def _client(client_id: str, key: str) -> ClientSettings:
    return ClientSettings(
        id=client_id,
        key_sha256=hashlib.sha256(key.encode()).hexdigest(),
        audiences=[AUDIENCE],
        subjects="any",
    )


def _authenticator(
    clients: list[ClientSettings], proxies: list[ProxySettings] | None = None
) -> Authenticator:
    return Authenticator(clients, proxies or [], CallerTokenVerifier({}), 900)


def _authenticate(
    authenticator: Authenticator, headers: dict[str, str], source: str | None = "10.0.0.1"
) -> Caller:
    return asyncio.run(authenticator.authenticate(headers, source))


def _refused(authenticator: Authenticator, headers: dict[str, str]) -> Unauthenticated:
    with pytest.raises(Unauthenticated) as refused:
        _authenticate(authenticator, headers)
    return refused.value


def _reason(authenticator: Authenticator, headers: dict[str, str]) -> str:
    return _refused(authenticator, headers).reason


def test_each_of_five_thousand_clients_is_found_by_its_own_key() -> None:
    keys = {f"svc-{index}": "bk_" + secrets.token_urlsafe(32) for index in range(5000)}
    authenticator = _authenticator([_client(cid, key) for cid, key in keys.items()])
    for cid in ("svc-0", "svc-2500", "svc-4999"):
        caller = _authenticate(authenticator, {"authorization": f"Bearer {keys[cid]}"})
        assert (caller.id, caller.method, caller.subject) == (cid, "client_key", cid)
    assert _reason(authenticator, {"authorization": "Bearer bk_unknown"}) == "unknown_key"


@pytest.mark.parametrize(
    ("headers", "reason", "bearer_rejected"),
    [
        ({}, "missing_authorization", False),
        ({"authorization": ""}, "missing_authorization", False),
        ({"authorization": "Basic dXNlcjpwYXNz"}, "not_bearer", False),
        ({"authorization": "Bearer "}, "not_bearer", False),
        ({"authorization": "Bearer bk_unknown"}, "unknown_key", True),
        ({"authorization": "Bearer a.b.c"}, "unknown_key", True),  # no trusted issuers
    ],
)
def test_credentials_that_are_not_a_known_bearer_key_are_refused(
    headers: dict[str, str], reason: str, bearer_rejected: bool
) -> None:
    authenticator = _authenticator([_client("svc", "bk_" + secrets.token_urlsafe(32))])
    refused = _refused(authenticator, headers)
    # Only a Bearer credential that was presented and failed is RFC 6750's invalid_token.
    assert (refused.reason, refused.bearer_rejected) == (reason, bearer_rejected)


def test_the_scheme_is_case_insensitive_and_the_key_is_not() -> None:
    key = "bk_" + secrets.token_urlsafe(32)
    authenticator = _authenticator([_client("svc", key)])
    assert _authenticate(authenticator, {"authorization": f"bearer {key}"}).id == "svc"
    assert _reason(authenticator, {"authorization": f"Bearer {key.upper()}"}) == "unknown_key"


def test_a_proxy_user_is_believed_only_from_the_proxy_network() -> None:
    proxy = ProxySettings(
        id="oauth2-proxy",
        cidrs=["10.1.0.0/16"],
        audiences=[AUDIENCE],
        subjects="self",
    )
    authenticator = _authenticator([], [proxy])
    headers = {"x-forwarded-user": "alice@example.com"}
    caller = asyncio.run(authenticator.authenticate(headers, "10.1.2.3"))
    assert (caller.id, caller.method, caller.subject) == (
        "oauth2-proxy",
        "proxy:oauth2-proxy",
        "alice@example.com",
    )
    # From anywhere else the header is ignored: no credential at all.
    with pytest.raises(Unauthenticated, match="missing_authorization"):
        asyncio.run(authenticator.authenticate(headers, "10.2.0.1"))
    with pytest.raises(Unauthenticated, match="proxy_user_unusable"):
        asyncio.run(authenticator.authenticate({"x-forwarded-user": "*"}, "10.1.2.3"))


def test_jwt_callers_of_one_issuer_share_its_policy_under_their_own_names() -> None:
    idp = IdentityProvider()

    async def run() -> list[Caller]:
        async with aiohttp.ClientSession() as session:
            verifier = caller_verifier(idp, session, subjects="self")
            authenticator = Authenticator([], [], verifier, 900)
            return [
                await authenticator.authenticate({"authorization": f"Bearer {token}"}, None)
                for token in (idp.token("alice"), idp.token("bob"), idp.token("alice"))
            ]

    try:
        alice, bob, again = asyncio.run(run())
    finally:
        idp.close()
    assert (alice.id, alice.method, alice.subject) == ("idp/alice", "jwt:idp", "alice")
    assert (bob.id, bob.subject) == ("idp/bob", "bob")
    assert alice.policy is bob.policy is again.policy  # built once for the issuer
    assert alice.policy.audiences == frozenset({AUDIENCE})
    assert alice == again


def test_a_caller_jwt_that_fails_verification_is_a_rejected_bearer_credential() -> None:
    idp = IdentityProvider()

    async def run() -> list[Unauthenticated]:
        refusals = []
        async with aiohttp.ClientSession() as session:
            authenticator = Authenticator([], [], caller_verifier(idp, session), 900)
            for token in (idp.token(exp=int(time.time()) - 3600), idp.token(aud="elsewhere")):
                with pytest.raises(Unauthenticated) as refused:
                    await authenticator.authenticate({"authorization": f"Bearer {token}"}, None)
                refusals.append(refused.value)
        return refusals

    try:
        expired, elsewhere = asyncio.run(run())
    finally:
        idp.close()
    assert (expired.reason, expired.bearer_rejected) == ("expired", True)
    assert (elsewhere.reason, elsewhere.bearer_rejected) == ("wrong_audience", True)
