"""Token buckets, one per key (a caller, an end user, a source address), in bounded memory."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

from broker.config import BucketSettings


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
    the budget refuses is counted, and the count goes into the next record written."""

    def __init__(self, settings: BucketSettings) -> None:
        self._bucket = TokenBuckets(settings, max_keys=1)
        self._unrecorded = 0

    def admit(self) -> bool:
        if self._bucket.take("") is None:
            return True
        self._unrecorded += 1
        return False

    def take_unrecorded(self) -> int | None:
        count, self._unrecorded = self._unrecorded, 0
        return count or None


class RepeatBudget:
    """One record a key per ``interval_seconds``, for refusals of a known caller that come
    again and again (a client without the auditor role polling the trail): the repeats in
    between are counted, and ``admit`` hands the count to that key's next record. At most
    ``max_keys`` keys are kept; the count of a key forgotten to make room goes to the next
    record of any key, so that no repeat goes uncounted."""

    def __init__(
        self,
        interval_seconds: float = 1.0,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = interval_seconds
        self._clock = clock
        self._max_keys = max_keys
        # key -> (when its last record was admitted, repeats since), least recent first.
        self._keys: OrderedDict[Hashable, tuple[float, int]] = OrderedDict()
        self._orphaned = 0

    def admit(self, key: Hashable) -> tuple[bool, int | None]:
        """Whether this refusal gets a record, and if it does, how many went unrecorded
        before it (None for none)."""
        at = self._clock()
        keys = self._keys
        found = keys.get(key)
        if found is not None and at - found[0] < self._interval:
            keys[key] = (found[0], found[1] + 1)
            return False, None
        unrecorded = (found[1] if found is not None else 0) + self._orphaned
        self._orphaned = 0
        keys[key] = (at, 0)
        keys.move_to_end(key)
        while len(keys) > self._max_keys:
            _, (_, repeats) = keys.popitem(last=False)
            self._orphaned += repeats
        return True, unrecorded or None
