"""Token buckets, one per key (a caller, an end user, a source address), in bounded memory."""

from __future__ import annotations

import time

from cachetools import TTLCache

from broker.config import BucketSettings


class TokenBuckets:
    """``take(key)`` spends one token from ``key``'s bucket, or says how long until one is
    back. A bucket untouched for as long as it takes to refill completely is forgotten: it
    would be full anyway. So memory follows the keys active in that window (and never
    exceeds ``max_keys``, where forgetting can only refill a bucket early)."""

    def __init__(self, settings: BucketSettings, max_keys: int = 100_000) -> None:
        self._rate = settings.rate_per_second
        self._burst = float(settings.burst)
        refill_seconds = self._burst / self._rate
        self._buckets: TTLCache[str, tuple[float, float]] = TTLCache(
            maxsize=max_keys, ttl=refill_seconds, timer=time.monotonic
        )

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._buckets.get(key, (self._burst, now))
        return min(self._burst, tokens + (now - at) * self._rate)

    def take(self, key: str) -> float | None:
        """None if allowed; otherwise the seconds until the next token."""
        now = time.monotonic()
        tokens = self._level(key, now)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self._rate
        self._buckets[key] = (tokens - 1, now)
        return None

    def exhausted(self, key: str) -> float | None:
        """Like ``take`` but spends nothing: the wait if the bucket is empty, else None."""
        tokens = self._level(key, time.monotonic())
        return (1 - tokens) / self._rate if tokens < 1 else None


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
