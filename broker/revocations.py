"""The kill switch: bars on a caller, an end user or an audience, from a time on.

A barred request is refused (403 ``revoked``) before any cache or mint. A bar and a lift on
an end user or an audience each make the caches forget its tokens begun before them: the
ones cached, one minted by a call in flight across them, another replica's in the shared
store. So after a lift a fresh token is minted; the one from before the bar, which may be
what was leaked, is never handed out again. With a shared store every replica reads the
bars and those cutoffs within ``revocation_refresh_seconds``, even a bar lifted before it
looked; without one a bar holds on the replica that was told, and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Literal

import structlog

from broker.cache import TokenCache
from broker.shared import UNAVAILABLE, Bar, Cutoff, SharedState, _Unavailable

log = structlog.get_logger("broker.revocations")

KINDS = ("caller", "end_user", "audience")
Scope = Literal["deployment", "replica"]


class Revocations:
    def __init__(self, shared: SharedState | None, cache: TokenCache | None) -> None:
        self._shared = shared
        self._cache = cache
        self._bars: dict[tuple[str, str], Bar] = {}
        self._version: int | None = None
        self._task: asyncio.Task[None] | None = None
        # Whether the bars in force are known: at once without a shared store (they are
        # this replica's own), with one once read from it.
        self.known = shared is None

    @property
    def scope(self) -> Scope:
        return "deployment" if self._shared is not None else "replica"

    def barred(self, caller: str, end_user: str, audience: str) -> Bar | None:
        """The bar that applies now, if any (a dict lookup per kind; none at all usually)."""
        bars = self._bars
        if not bars:
            return None
        now = time.time()
        for kind, value in (("caller", caller), ("end_user", end_user), ("audience", audience)):
            bar = bars.get((kind, value))
            if bar is not None and bar.since <= now:
                return bar
        return None

    def current(self) -> list[Bar]:
        return sorted(self._bars.values(), key=lambda bar: (bar.kind, bar.value))

    def _apply(self, bars: list[Bar], cutoffs: list[Cutoff]) -> None:
        fresh = {(bar.kind, bar.value): bar for bar in bars}
        added = fresh.keys() - self._bars.keys()
        self._bars = fresh
        if self._cache is not None:
            now = time.time()
            # A bar stored by a broker that wrote no cutoff: forget as of when it is seen.
            for kind, value in added:
                self._cache.forget(kind, value, now)
            for cutoff in cutoffs:
                self._cache.forget(cutoff.kind, cutoff.value, min(cutoff.at, now))

    async def bar(self, bar: Bar) -> Scope | None:
        """Apply ``bar`` here and, with a shared store, for every replica; None if the shared
        store could not take it (nothing applied)."""
        now = time.time()
        if self._shared is not None and not await self._shared.bar(bar, now):
            return None
        self._apply(
            [*(b for b in self._bars.values() if (b.kind, b.value) != (bar.kind, bar.value)), bar],
            [Cutoff(bar.kind, bar.value, now)],
        )
        return self.scope

    async def lift(self, kind: str, value: str) -> Scope | None:
        now = time.time()
        if self._shared is not None and not await self._shared.lift(kind, value, now):
            return None
        self._apply(
            [bar for key, bar in self._bars.items() if key != (kind, value)],
            [Cutoff(kind, value, now)],
        )
        return self.scope

    async def start(self, every_seconds: float) -> None:
        """Read the bars once (within the store's timeout), then follow them. A replica that
        has not read them issues nothing (``known``): started while the store is away, it
        would otherwise serve every barred caller, end user and audience."""
        if self._shared is None:
            return
        with contextlib.suppress(Exception):
            await self.refresh()
        if not self.known:
            log.warning(
                "revocations_unread",
                detail="the shared store is away: no token is issued until the bars are read",
            )
        self._task = asyncio.create_task(self._follow(every_seconds), name="revocations")

    async def refresh(self) -> None:
        """Read the bars from the shared store if they changed since the last read."""
        assert self._shared is not None
        version = await self._shared.revocations_version()
        if version is UNAVAILABLE or (version is not None and version == self._version):
            return
        bars = await self._shared.revocations()
        cutoffs = await self._shared.cutoffs()
        if isinstance(bars, _Unavailable) or isinstance(cutoffs, _Unavailable):
            return
        self._version = version if isinstance(version, int) else None
        if not self.known:
            self.known = True
            log.info("revocations_read", bars=len(bars))
        if {(b.kind, b.value, b.since) for b in bars} != {
            (b.kind, b.value, b.since) for b in self._bars.values()
        }:
            log.info("revocations_updated", bars=len(bars))
        self._apply(bars, cutoffs)

    async def _follow(self, every_seconds: float) -> None:
        while True:
            with contextlib.suppress(Exception):
                await self.refresh()
            await asyncio.sleep(every_seconds)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
