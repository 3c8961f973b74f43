"""Callers from a trusted issuer: its config block, and a POST /tokens with its JWT."""

from __future__ import annotations

from typing import Any

import aiohttp
import httpx

from broker.config import IssuerSettings
from broker.federation import CallerTokenVerifier, JwksSource
from broker.metrics import Metrics
from tests.conftest import AUDIENCE, Broker
from tests.support import loopback
from tests.support.idp import BROKER_AUDIENCE, IdentityProvider

ALLOWED_ORIGIN = "https://app.example.com"


def issuer_block(idp: IdentityProvider, **overrides: str) -> str:
    fields = {
        "id": '"test-idp"',
        "issuer": f'"{idp.issuer}"',
        "audience": '"mka1-token-broker"',
        "audiences": f'["{AUDIENCE}"]',
        "subjects": '"self"',
        "max_expires_in": "900",
        "cors_origins": f'["{ALLOWED_ORIGIN}"]',
        "jwks_cache_seconds": "1",
        "jwks_min_refresh_seconds": "2",
    } | overrides
    return "\n[[issuers]]\n" + "".join(f"{name} = {value}\n" for name, value in fields.items())


def caller_verifier(
    idp: IdentityProvider, session: aiohttp.ClientSession, **options: Any
) -> CallerTokenVerifier:
    """A verifier trusting ``idp`` (issuer id "idp"), in-process; ``options`` override its
    issuer settings."""
    settings = IssuerSettings(
        id="idp",
        issuer=idp.issuer,
        audience=BROKER_AUDIENCE,
        audiences=[AUDIENCE],
        **(
            {"jwks_url": idp.issuer + "/jwks.json", "algorithms": ["RS256", "ES256", "EdDSA"]}
            | options
        ),
    )
    return CallerTokenVerifier({idp.issuer: JwksSource(settings, lambda: session, Metrics())})


def post_with(
    broker: Broker, token: str, body: dict[str, Any] | None = None, **headers: Any
) -> httpx.Response:
    return loopback.post(
        broker.url + "/tokens",
        json={"audience": AUDIENCE} if body is None else body,
        headers={"Authorization": f"Bearer {token}", **headers},
    )
