"""Retry timing and a circuit breaker for the upstream exchange."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Literal

CircuitState = Literal["closed", "half_open", "open"]
STATE_VALUES: dict[CircuitState, int] = {"closed": 0, "half_open": 1, "open": 2}


def full_jitter(attempt: int, base: float, cap: float) -> float:
    """AWS's "full jitter": uniform in [0, min(cap, base * 2**attempt)]."""
    # 2**64 times any base is past any cap; 2**1024 is past what a float holds (OverflowError).
    bound = min(cap, base * (2 ** min(attempt, 64)))
    return random.uniform(0, bound)  # noqa: S311 (timing, not secrets)


def parse_retry_after(value: str | None, *, cap: float, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date), capped."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), cap)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    delay = when.timestamp() - (time.time() if now is None else now)
    return min(max(delay, 0.0), cap)


class CircuitBreaker:
    """Closed until ``threshold`` consecutive failures; then open (fail fast) for
    ``cooldown`` seconds; then half-open, letting one probe through to decide."""

    def __init__(
        self, threshold: int, cooldown: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._threshold = threshold
        self._cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self._state: CircuitState = "closed"
        self._probing = False
        self.opened_count = 0

    @property
    def state(self) -> CircuitState:
        if self._state == "open" and self._clock() - self._opened_at >= self._cooldown:
            self._state = "half_open"
            self._probing = False
        return self._state

    def retry_after(self) -> float:
        return max(0.0, self._cooldown - (self._clock() - self._opened_at))

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probing:
            self._probing = True
            return True
        return False

    def record_success(self) -> None:
        self._failures = 0
        self._state = "closed"
        self._probing = False

    def record_failure(self) -> None:
        self._failures += 1
        if self._state == "half_open" or self._failures >= self._threshold:
            if self._state != "open":
                self.opened_count += 1
            self._state = "open"
            self._opened_at = self._clock()
            self._probing = False

    def release_probe(self) -> None:
        """A probe that ended without a verdict (say, a 400) lets the next one through."""
        self._probing = False
