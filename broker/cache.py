"""The token cache and single-flight.

A token minted for (audience, end user, permissions, lifetime) is served again while at
least ``min_remaining_ratio`` of the requested lifetime remains. Identical concurrent misses
share one upstream call. Both keep bursts of callers away from the upstream's rate limits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import TYPE_CHECKING, Generic, TypeVar

import msgspec
from cachetools import TLRUCache

if TYPE_CHECKING:
    from broker.minting import IssuedToken
    from broker.policy import Grant

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class CacheKey(msgspec.Struct, frozen=True):
    audience: str
    external_user_id: str
    permissions: tuple[str, ...] | None
    expires_in: int

    @classmethod
    def for_grant(cls, grant: Grant) -> CacheKey:
        # Grant permissions are already sorted, so equal sets give equal keys.
        return cls(grant.audience, grant.external_user_id, grant.permissions, grant.expires_in)


class TokenCache:
    def __init__(self, max_entries: int, min_remaining_ratio: float) -> None:
        self._ratio = min_remaining_ratio
        self._entries: TLRUCache[CacheKey, IssuedToken] = TLRUCache(
            maxsize=max_entries, ttu=self._servable_until, timer=time.time
        )

    def _servable_until(self, key: CacheKey, token: IssuedToken, now: float) -> float:
        return token.expires_at - key.expires_in * self._ratio

    def get(self, key: CacheKey) -> IssuedToken | None:
        try:
            # One lookup (Mapping.get would make two, each expiring entries first).
            token = self._entries[key]
        except KeyError:
            return None
        # The TTL is checked again here: TLRUCache expires lazily, at its own pace.
        if token.expires_at - time.time() < key.expires_in * self._ratio:
            return None
        return token

    def put(self, key: CacheKey, token: IssuedToken) -> None:
        if token.expires_at - time.time() >= key.expires_in * self._ratio:
            self._entries[key] = token

    def drop(self, *, external_user_id: str | None = None, audience: str | None = None) -> int:
        """Forget every token for that end user or that audience (a revocation)."""
        doomed = [
            key
            for key in list(self._entries.keys())
            if key.external_user_id == external_user_id or key.audience == audience
        ]
        for key in doomed:
            self._entries.pop(key, None)
        return len(doomed)

    def __len__(self) -> int:
        return len(self._entries)


class SingleFlight(Generic[K, V]):
    """Run one call per key at a time; concurrent callers with the same key share its result.

    The call runs in its own task, so a caller that goes away does not cancel it for the
    others.
    """

    def __init__(self) -> None:
        self._inflight: dict[K, asyncio.Task[V]] = {}

    def __len__(self) -> int:
        return len(self._inflight)

    def _finished(self, key: K, task: asyncio.Task[V]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled():
            # Retrieved here so that a failure nobody waited for is not reported as lost.
            task.exception()

    async def run(self, key: K, call: Callable[[], Awaitable[V]]) -> tuple[V, bool]:
        """The call's result, and whether this caller joined one already running."""
        task = self._inflight.get(key)
        joined = task is not None
        if task is None:

            async def run_call() -> V:
                return await call()

            task = asyncio.create_task(run_call())
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task), joined
