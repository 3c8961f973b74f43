"""Token buckets, one per key (a caller, an end user, a source address), in bounded memory."""

from __future__ import annotations

import functools
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

from broker.config import BucketSettings


@functools.lru_cache(maxsize=4096)
def _ipv6_key(source: str) -> str:
    try:
        address = ipaddress.IPv6Address(source.split("%", 1)[0])
    except ValueError:
        return source
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    if address in _NAT64:
        # An IPv4 client through a translator (RFC 6052's well-known prefix): each its own
        # address, not one /64 that one guesser could throttle for every IPv4 client.
        return str(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return str(ipaddress.IPv6Network((address, 64), strict=False))


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def address_key(source: str | None) -> str:
    """The key of a source address's bucket. An IPv6 address counts by its /64: one host is
    given a /64 (RFC 6177), and could otherwise spend a bucket per address, 2**64 of them.
    IPv4 addresses count each alone (and cost nothing to key)."""
    if source is None:
        return "unknown"
    return _ipv6_key(source) if ":" in source else source


class TokenBuckets:
    """``take(key)`` spends one token from ``key``'s bucket, or says how long until one is
    back. A bucket untouched for as long as it takes to refill completely is forgotten: it
    would be full anyway. So memory follows the keys active in that window (and never
    exceeds ``max_keys``, where forgetting can only refill a bucket early).

    An OrderedDict in least-recently-updated order (an update moves a key to the end),
    trimmed from the front: cachetools' TTLCache cost a few microseconds per operation, and
    a request makes several."""

    def __init__(self, settings: BucketSettings, max_keys: int = 100_000) -> None:
        self._rate = settings.rate_per_second
        self._burst = float(settings.burst)
        self._refill_seconds = self._burst / self._rate
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _level(self, key: str, now: float) -> float:
        found = self._buckets.get(key)
        if found is None:
            return self._burst
        tokens, at = found
        return min(self._burst, tokens + (now - at) * self._rate)

    def _store(self, key: str, tokens: float, now: float) -> None:
        buckets = self._buckets
        buckets[key] = (tokens, now)
        buckets.move_to_end(key)
        # Forget from the least recently updated end: buckets full again, and any beyond
        # max_keys (forgetting a bucket can only refill it early). Amortised O(1).
        horizon = now - self._refill_seconds
        while buckets:
            _, at = next(iter(buckets.values()))
            if at > horizon and len(buckets) <= self._max_keys:
                break
            buckets.popitem(last=False)

    def take(self, key: str) -> float | None:
        """None if allowed; otherwise the seconds until the next token."""
        now = time.monotonic()
        tokens = self._level(key, now)
        if tokens < 1:
            self._store(key, tokens, now)
            return (1 - tokens) / self._rate
        self._store(key, tokens - 1, now)
        return None

    def exhausted(self, key: str) -> float | None:
        """Like ``take`` but spends nothing: the wait if the bucket is empty, else None."""
        tokens = self._level(key, time.monotonic())
        return (1 - tokens) / self._rate if tokens < 1 else None

    def __len__(self) -> int:
        return len(self._buckets)


class RecordBudget:
    """How many records of unauthenticated refusals may be written, deployment-wide: per
    address throttling alone does not bound them for an attacker with many addresses. What
    the budget refuses is counted, and the count goes into the next record written, or, once
    ``interval_seconds`` pass without one, to ``take_due`` (``broker/unrecorded.py``)."""

    def __init__(
        self,
        settings: BucketSettings,
        interval_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._bucket = TokenBuckets(settings, max_keys=1)
        self._unrecorded = 0
        self._interval = interval_seconds
        self._clock = clock
        self._last_admitted = clock()

    def admit(self) -> bool:
        if self._bucket.take("") is None:
            self._last_admitted = self._clock()
            return True
        self._unrecorded += 1
        return False

    def count(self) -> None:
        """Count a refusal that is never offered for a record (a throttled address's): on
        the trail as a count all the same, so that an auditor can account for every one."""
        self._unrecorded += 1

    def take_unrecorded(self) -> int | None:
        count, self._unrecorded = self._unrecorded, 0
        return count or None

    def take_due(self) -> int | None:
        """The count, if no record has been admitted to take it for ``interval_seconds``."""
        if self._clock() - self._last_admitted < self._interval:
            return None
        return self.take_unrecorded()


class RepeatBudget:
    """One record a key per ``interval_seconds``, for refusals of a known caller that come
    again and again (a client without the auditor role polling the trail): the repeats in
    between are counted, and ``admit`` hands the count to that key's next record. At most
    ``max_keys`` keys are kept; the count of a key forgotten to make room goes to the next
    record of any key, so that no repeat goes uncounted.

    A count that no next record comes for (the flood stopped) is taken by ``take_due`` once
    its key's interval has passed, and by ``take_all`` at shutdown, for a record of its own
    (``broker/unrecorded.py``): otherwise it would wait in memory for ever, and be lost."""

    def __init__(
        self,
        interval_seconds: float = 1.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = interval_seconds
        self._clock = clock
        self._max_keys = max_keys
        # key -> (when its last record was admitted, that record's request id, repeats
        # since), least recently admitted first.
        self._keys: OrderedDict[Hashable, tuple[float, str, int]] = OrderedDict()
        self._orphaned = 0

    def admit(self, key: Hashable, request_id: str) -> tuple[bool, int | None]:
        """Whether this refusal (of request ``request_id``) gets a record, and if it does,
        how many went unrecorded before it (None for none)."""
        at = self._clock()
        keys = self._keys
        found = keys.get(key)
        if found is not None and at - found[0] < self._interval:
            keys[key] = (found[0], found[1], found[2] + 1)
            return False, None
        unrecorded = (found[2] if found is not None else 0) + self._orphaned
        self._orphaned = 0
        keys[key] = (at, request_id, 0)
        keys.move_to_end(key)
        while len(keys) > self._max_keys:
            _, (_, _, repeats) = keys.popitem(last=False)
            self._orphaned += repeats
        return True, unrecorded or None

    def take_due(self) -> list[tuple[str | None, int]]:
        """The counts no record has taken although their key's interval has passed: for
        each, the request id of the record the repeats were like (None for the repeats of
        keys forgotten for room) and how many. Those keys are forgotten: their next refusal
        is recorded anyway. Amortised O(1): keys are in the order they were admitted."""
        horizon = self._clock() - self._interval
        keys = self._keys
        due: list[tuple[str | None, int]] = []
        while keys:
            admitted_at, request_id, repeats = next(iter(keys.values()))
            if admitted_at > horizon:
                break
            keys.popitem(last=False)
            if repeats:
                due.append((request_id, repeats))
        return self._with_orphaned(due)

    def take_all(self) -> list[tuple[str | None, int]]:
        """Every count not yet on the record, as ``take_due`` gives them (at shutdown)."""
        due: list[tuple[str | None, int]] = [
            (request_id, repeats) for _, request_id, repeats in self._keys.values() if repeats
        ]
        self._keys.clear()
        return self._with_orphaned(due)

    def _with_orphaned(self, due: list[tuple[str | None, int]]) -> list[tuple[str | None, int]]:
        if self._orphaned:
            due.append((None, self._orphaned))
            self._orphaned = 0
        return due
