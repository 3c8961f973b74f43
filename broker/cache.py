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

from broker.rules import MAX_EXPIRES_IN

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
        # (kind, value) -> a time: a token whose mint began before it is not served again
        # for that end user or audience (a bar or its lift).
        self._cutoffs: dict[tuple[str, str], float] = {}

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
        if token.expires_at - time.time() >= key.expires_in * self._ratio and not (
            self.forgotten(key, token.begun_at)
        ):
            self._entries[key] = token

    def forgotten(self, key: CacheKey, begun_at: float) -> bool:
        """Whether a token for ``key`` whose mint began at ``begun_at`` is one a bar or a lift
        made every cache forget (a mint in flight across one, or another replica's)."""
        cutoffs = self._cutoffs
        if not cutoffs:
            return False
        return begun_at < max(
            cutoffs.get(("end_user", key.external_user_id), 0.0),
            cutoffs.get(("audience", key.audience), 0.0),
        )

    def forget(self, kind: str, value: str, before: float) -> int:
        """Forget every token for that end user (``kind`` ``end_user``) or that audience whose
        mint began before ``before``, here and as it arrives later; the number dropped now."""
        if kind not in ("end_user", "audience"):
            return 0  # tokens are cached for a grant, whichever caller asked
        cutoffs = self._cutoffs
        if before <= cutoffs.get((kind, value), 0.0):
            return 0  # forgotten already: nothing begun before is cached or put since
        cutoffs[(kind, value)] = before
        # No token outlives the longest lifetime, so an older cutoff holds nothing back.
        stale = before - MAX_EXPIRES_IN
        for lapsed in [name for name, at in cutoffs.items() if at < stale]:
            del cutoffs[lapsed]
        dropped = 0
        for key in list(self._entries.keys()):
            if (key.external_user_id if kind == "end_user" else key.audience) != value:
                continue
            token = self._entries.get(key)
            if token is not None and token.begun_at < before:
                self._entries.pop(key, None)
                dropped += 1
        return dropped

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

    def running(self, key: K) -> bool:
        return key in self._inflight

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
