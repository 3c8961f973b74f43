"""The kill switch: bars on a caller, an end user or an audience, from a time on.

A barred request is refused (403 ``revoked``) before any cache or mint. A bar and a lift on
an end user or an audience each make the caches forget its tokens begun before them: the
ones cached, one minted by a call in flight across them, another replica's in the shared
store. So after a lift a fresh token is minted; the one from before the bar, which may be
what was leaked, is never handed out again. With a shared store every replica reads the
bars and those cutoffs within ``revocation_refresh_seconds``, even a bar lifted before it
looked; without one a bar holds on the replica that was told, and says so.

A bar leaves the store only with a lift, which moves its value's cutoff forward. A bar that
is gone with its cutoff where it was when the bar was last read was not lifted: the store
lost it (restarted without persistence, failed over to a replica behind, flushed) or
someone deleted it. Every replica that held it keeps it and writes it back, and says so:
otherwise one restart of the store lifted every bar, with nothing on the audit trail.

A replica that starts finds no replica left to hold a bar the store lost while none ran (all
restarted together, or the store lost its data and then the replicas were replaced): the
audit trail still says it stands. With an audit store, a replica's first read of the bars
also reads the trail's revocation records, and writes back each bar they leave standing
whose value has no cutoff in the store (none since it lost its data: a bar or a lift made
since would have written one).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Literal

import msgspec
import structlog

from broker.audit.records import RevocationBody
from broker.cache import TokenCache
from broker.clock import parse_rfc3339
from broker.decoding import decode_untrusted
from broker.observability import EveryInterval
from broker.rules import AUDIENCE_MAX, EXTERNAL_USER_ID_MAX, MAX_EXPIRES_IN
from broker.shared import FULL, UNAVAILABLE, Bar, Cutoff, SharedState, _Full, _Unavailable

log = structlog.get_logger("broker.revocations")

KINDS = ("caller", "end_user", "audience")
# A full read of the bars every this many refreshes, whatever the version says (a minute at
# the default refresh): each read opens every sealed bar and cutoff on the event loop.
_FULL_READ_EVERY = 60
Scope = Literal["deployment", "replica"]
# Bars in force at once: every replica reads them all whenever they change, and GET
# /admin/revocations lists them all in one answer.
MAX_BARS = 10_000
# A bar's value (the longest a kind allows: an audience) and its reason, as an admin may
# give them; a record with longer ones is not one a broker wrote.
VALUE_MAX = max(EXTERNAL_USER_ID_MAX, AUDIENCE_MAX)
REASON_MAX = 500
# The newest revocation records a starting replica reads from the audit store: a bar older
# than this many later bars and lifts is not written back from the trail. With the bounds
# above, what it keeps of them is bounded too, whatever the store holds.
RECORDED_LIMIT = 2 * MAX_BARS
_RECORD = msgspec.json.Decoder(RevocationBody)
# A request id or a caller's id, longer than any the broker writes into a record.
_ID_MAX = 1024
# How far back a replica's own records (the embedded store) are taken at start. A cutoff
# goes from the shared store once it is older than the longest lifetime; a lift made after
# a bar this recent has its cutoff there still (a day spared for clocks), unless the store
# lost its data.
EMBEDDED_HORIZON = MAX_EXPIRES_IN - 86_400


def standing_bars(newest_first: Iterable[bytes], *, horizon: float | None = None) -> list[Bar]:
    """The bars that the audit trail's revocation records, newest first, leave standing
    across the deployment: each value's last applied bar (or write-back) not followed by a
    lift. A change the shared store then refused is followed by a record of the same
    request that says ``applied: false``; it did not happen. Bars of a replica without a
    shared store (``scope: "replica"``) held on that replica only, and are passed over.
    Newest first, each value is decided by its first record that counts, and nothing but
    the values seen is kept; records from before ``horizon`` (a time) do not count."""
    decided: set[tuple[str, str]] = set()
    refused: set[tuple[str, str, str, str]] = set()
    standing = []
    for line in newest_first:
        try:
            record = decode_untrusted(_RECORD, line)
        except msgspec.DecodeError:
            continue  # not a revocation record a broker writes (a hand edit)
        key = (record.kind, record.value)
        if (
            record.scope != "deployment"
            or record.kind not in KINDS
            or key in decided
            or len(record.value) > VALUE_MAX
            or len(record.reason or "") > REASON_MAX
            or len(record.request_id) > _ID_MAX
            or len(record.by) > _ID_MAX
        ):
            continue
        if horizon is not None and (
            (written := parse_rfc3339(record.time)) is None or written.timestamp() < horizon
        ):
            continue
        change = (record.request_id, record.action, *key)
        if not record.applied:
            if record.request_id:
                refused.add(change)
            continue
        if change in refused:
            continue
        if record.action == "lift":
            decided.add(key)
            continue
        if (since := parse_rfc3339(record.since or record.time)) is not None:
            decided.add(key)
            standing.append(Bar(key[0], key[1], since.timestamp(), record.reason or "", record.by))
    return standing


class Revocations:
    def __init__(
        self,
        shared: SharedState | None,
        cache: TokenCache | None,
        on_lost: Callable[[Bar], None] | None = None,
        recorded: Callable[[], Awaitable[list[Bar]]] | None = None,
    ) -> None:
        self._shared = shared
        self._cache = cache
        # The bars the audit trail leaves standing (``standing_bars``), read at the first
        # read of the store; None without an audit store.
        self._recorded = recorded
        # Told once per loss (not per try to write it back) of a bar the store lost.
        self._on_lost = on_lost
        self._lost: set[tuple[str, str]] = set()
        self._bars: dict[tuple[str, str], Bar] = {}
        # Each bar's value's cutoff when the bar was last read (or made) here: a lift moves
        # it forward.
        self._barred_at: dict[tuple[str, str], float] = {}
        self._version: int | None = None
        self._reads = 0
        # Bars and lifts made here: a read of the store that overlaps one may predate it,
        # and is not applied (the next read is).
        self._changes = 0
        self._task: asyncio.Task[None] | None = None
        # Whether the bars in force are known: at once without a shared store (they are
        # this replica's own), with one once read from it.
        self.known = shared is None
        self.max_bars = MAX_BARS
        self._faults = EveryInterval(60.0)

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
            if (bar := self._in_force(kind, value, now)) is not None:
                return bar
        return None

    def barred_caller(self, caller: str) -> Bar | None:
        """The bar on ``caller`` that applies now, if any (the privileged routes ask only
        this: they name no end user or audience)."""
        return self._in_force("caller", caller, time.time()) if self._bars else None

    def _in_force(self, kind: str, value: str, now: float) -> Bar | None:
        """The bar on ``value`` of ``kind``, if it holds at ``now`` (a bar may be dated
        ahead: it holds from its ``since``)."""
        bar = self._bars.get((kind, value))
        return bar if bar is not None and bar.since <= now else None

    @property
    def count(self) -> int:
        """Bars in force here."""
        return len(self._bars)

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

    def holds(self, kind: str, value: str) -> bool:
        """Whether a bar on ``value`` is in force here."""
        return (kind, value) in self._bars

    def full(self, kind: str, value: str) -> bool:
        """Whether a bar on ``value`` would be one more than ``max_bars`` in force."""
        return not self.holds(kind, value) and len(self._bars) >= self.max_bars

    async def bar(self, bar: Bar) -> Scope | _Full | None:
        """Apply ``bar`` here and, with a shared store, for every replica; None if the shared
        store could not take it, FULL if it holds as many values as it may (nothing
        applied)."""
        self._changes += 1
        now = time.time()
        cutoff = now if self._shared is None else await self._shared.bar(bar, now)
        if cutoff is None or cutoff is FULL:
            return cutoff
        assert isinstance(cutoff, float)
        key = (bar.kind, bar.value)
        self._barred_at[key] = cutoff
        self._apply(
            [*(b for b in self._bars.values() if (b.kind, b.value) != key), bar],
            [Cutoff(bar.kind, bar.value, cutoff)],
        )
        return self.scope

    async def lift(self, kind: str, value: str) -> Scope | _Full | None:
        self._changes += 1
        now = time.time()
        standing = (kind, value) in self._bars
        cutoff = (
            now
            if self._shared is None
            else await self._shared.lift(kind, value, now, standing=standing)
        )
        if cutoff is None or cutoff is FULL:
            return cutoff
        assert isinstance(cutoff, float)
        self._barred_at.pop((kind, value), None)
        self._apply(
            [bar for key, bar in self._bars.items() if key != (kind, value)],
            [Cutoff(kind, value, cutoff)],
        )
        return self.scope

    async def start(self, every_seconds: float) -> None:
        """Read the bars once (within the store's timeout), then follow them. A replica that
        has not read them issues nothing (``known``): started while the store is away, it
        would otherwise serve every barred caller, end user and audience."""
        if self._shared is None:
            return
        await self._refresh_said()
        if not self.known:
            log.warning(
                "revocations_unread",
                detail="the shared store is away: no token is issued until the bars are read",
            )
        self._task = asyncio.create_task(self._follow(every_seconds), name="revocations")

    async def refresh(self) -> None:
        """Read the bars from the shared store if they changed since the last read, and at
        least every ``_FULL_READ_EVERY`` calls (a store that lost its data counts its
        version from 1 again, which a replica may have read before)."""
        assert self._shared is not None
        self._reads += 1
        changes = self._changes
        version = await self._shared.revocations_version()
        if version is UNAVAILABLE or (
            version is not None and version == self._version and self._reads % _FULL_READ_EVERY != 0
        ):
            return
        state = await self._shared.revocation_state()
        if isinstance(state, _Unavailable):
            return
        bars, cutoffs = state
        if self._changes != changes:
            # Read while a bar or a lift was made here: taken for lost, or undone, it would
            # not be (the next read sees it).
            return
        latest = {(cutoff.kind, cutoff.value): cutoff.at for cutoff in cutoffs}
        fresh = {(bar.kind, bar.value) for bar in bars}
        lost = [
            bar
            for key, bar in self._bars.items()
            if key not in fresh and latest.get(key, 0.0) <= self._barred_at.get(key, 0.0)
        ]
        kept = fresh | {(bar.kind, bar.value) for bar in lost}
        for bar in bars:
            self._barred_at[(bar.kind, bar.value)] = latest.get((bar.kind, bar.value), 0.0)
        for key in [key for key in self._barred_at if key not in kept]:
            del self._barred_at[key]
        self._lost &= {(bar.kind, bar.value) for bar in lost}
        for bar in lost:
            if self._changes != changes:
                return  # a lift made here meanwhile is not to be undone by writing it back
            await self._restore(bar)
        if self._changes != changes:
            return
        if not self.known and self._recorded is not None:
            found = await self._restore_recorded(fresh | latest.keys())
            if found is None or self._changes != changes:
                return  # the next read tries again, and reads what was written back meanwhile
            lost += found
            cutoffs += [Cutoff(b.kind, b.value, self._barred_at[(b.kind, b.value)]) for b in found]
        self._version = version if isinstance(version, int) else None
        bars = [*bars, *lost]
        if not self.known:
            self.known = True
            log.info("revocations_read", bars=len(bars), written_back=len(lost))
        elif {(b.kind, b.value, b.since) for b in bars} != {
            (b.kind, b.value, b.since) for b in self._bars.values()
        }:
            log.info("revocations_updated", bars=len(bars))
        self._apply(bars, cutoffs)

    async def _restore(self, bar: Bar) -> None:
        """Keep a bar the store lost (not lifted: its cutoff never moved) and write it back,
        with the cutoff it had, so that replicas that start now read it too."""
        key = (bar.kind, bar.value)
        assert self._shared is not None
        if key not in self._lost:
            self._lost.add(key)
            self._tell_lost(bar, "this replica")
        restored = await self._shared.bar(bar, self._barred_at.get(key, 0.0))
        if isinstance(restored, float):
            self._barred_at[key] = restored

    def _tell_lost(self, bar: Bar, held_by: str) -> None:
        """Said once per loss: in the log and, through ``on_lost``, on the audit trail."""
        log.error(
            "revocation_lost_from_shared_store",
            kind=bar.kind,
            by=bar.by,
            held_by=held_by,
            detail="a bar left the shared store without a lift; it stays in force and is "
            "written back",
        )
        if self._on_lost is not None:
            self._on_lost(bar)

    async def _restore_recorded(self, marked: set[tuple[str, str]]) -> list[Bar] | None:
        """Write back the bars the audit trail leaves standing whose values the store has
        neither a bar nor a cutoff for (``marked``): the bars it wrote back, or None if
        another replica wrote one back first or the store went away (read again). If the
        audit store cannot answer, the bars the shared store holds are all there is."""
        assert self._shared is not None
        assert self._recorded is not None
        try:
            recorded = await self._recorded()
        except Exception as exc:
            log.warning(
                "revocations_not_checked_against_audit_trail",
                error=str(exc) or type(exc).__name__,
                detail="a bar the shared store lost while no replica ran is not written back",
            )
            return []
        restored = []
        for bar in recorded:
            key = (bar.kind, bar.value)
            if key in marked:
                continue
            cutoff = time.time()
            written = await self._shared.restore_unmarked(bar, cutoff)
            if not written:
                return None
            self._barred_at[key] = cutoff
            self._lost.add(key)
            self._tell_lost(bar, "the audit trail")
            restored.append(bar)
        return restored

    async def _follow(self, every_seconds: float) -> None:
        while True:
            await self._refresh_said()
            await asyncio.sleep(every_seconds)

    async def _refresh_said(self) -> None:
        """``refresh``, and a fault of the broker's own in it logged (once a minute): the
        store's failures are answers there, so what raises is a bug, which was suppressed
        unseen while the bars in force here stayed as they were."""
        try:
            await self.refresh()
        except Exception as exc:
            self._faults.fault("refresh", log, "revocations_refresh_failed", exc)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
