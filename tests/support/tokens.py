"""An issued token as the cache holds one, for in-process tests of caching and revocation."""

from __future__ import annotations

import time

from broker.minting import IssuedToken


def issued_token(
    name: str = "t", *, expires_in: float = 900.0, begun_at: float | None = None
) -> IssuedToken:
    """A token named ``name`` that expires ``expires_in`` seconds from now, whose mint began
    at ``begun_at`` (now by default)."""
    now = time.time()
    return IssuedToken(
        token=name,
        sha256="0" * 64,
        jti=name,
        issued_at=int(now),
        expires_at=int(now + expires_in),
        permissions=None,
        upstream_status=200,
        upstream_latency_ms=1.0,
        begun_at=now if begun_at is None else begun_at,
    )
