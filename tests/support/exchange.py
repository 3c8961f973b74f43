"""A fake MKA1 exchange for in-process tests of minting and the token service."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import jwt

from broker.policy import Grant
from broker.upstream import Exchanged


class FakeExchange:
    """Mints a token for exactly the grant, after an optional delay; or fails as told, or
    with ``claims`` overriding and ``without`` removing what the token says."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail: Exception | None = None
        self.claims: dict[str, Any] = {}
        self.without: set[str] = set()
        self.delay = 0.0
        # Set once a call is under way; while ``gate`` is set to an unset Event, every call
        # waits for it (a call held open as long as a test needs).
        self.entered = asyncio.Event()
        self.gate: asyncio.Event | None = None

    async def exchange(self, grant: Grant) -> Exchanged:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        now = int(time.time())
        claims: dict[str, Any] = {
            "aud": grant.audience,
            "sub": grant.external_user_id,
            "exp": now + grant.expires_in,
            "iat": now,
            "jti": f"jti-{self.calls}",
        }
        if grant.permissions is not None:
            claims["permissions"] = list(grant.permissions)
        claims |= self.claims
        for name in self.without:
            claims.pop(name, None)
        token = jwt.encode(claims, "k" * 32, algorithm="HS256")
        return Exchanged(token=token, status=200, latency_ms=1.0)
