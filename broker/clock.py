"""Times as the broker writes them: RFC 3339, UTC, with a Z.

``time.strftime`` costs a few microseconds and every request formats several times; each
second is formatted once and kept, and only the fraction is added per call.
"""

from __future__ import annotations

import time
from datetime import datetime
from functools import lru_cache


@lru_cache(maxsize=1024)
def _seconds(epoch_second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_second))


def rfc3339(epoch: float) -> str:
    """Whole seconds, for token expiries and refresh times."""
    return _seconds(int(epoch)) + "Z"


def now_rfc3339_millis() -> str:
    """Now, to the millisecond, for audit records."""
    now = time.time()
    whole = int(now)
    return f"{_seconds(whole)}.{int((now - whole) * 1000):03d}Z"


def now_rfc3339_micros() -> str:
    """Now, to the microsecond, as log lines carry it."""
    now = time.time()
    whole = int(now)
    return f"{_seconds(whole)}.{int((now - whole) * 1_000_000):06d}Z"


def parse_rfc3339(value: str) -> datetime | None:
    """A time a client gave, or None unless it is RFC 3339 with an offset or Z (a time
    without one would be read in this host's zone)."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None
