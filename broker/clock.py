"""Times as the broker writes them: RFC 3339, UTC, with a Z.

``time.strftime`` costs a few microseconds and every request formats several times; each
second is formatted once and kept, and only the fraction is added per call.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from functools import lru_cache

# 9999-12-31T23:59:59Z, the last second RFC 3339 can write: no real token (a caller's, or one
# the exchange returns) is issued or lives later, and every float of it is exact.
LAST_NUMERIC_DATE = 253_402_300_799


@lru_cache(maxsize=1024)
def _seconds(epoch_second: int) -> str:
    # Not strftime: its %Y writes the year 1 as "1", and RFC 3339 wants four digits (a bar
    # since 0001-01-01 was listed, and recorded, as "1-01-01T00:00:00Z", which no RFC 3339
    # reader, this broker's own included, reads back).
    t = time.gmtime(epoch_second)
    return (
        f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
        f"T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    )


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


# RFC 3339 section 5.6 date-time, with an offset or Z (a time without one would be read in
# this host's zone); ``fromisoformat`` alone takes more (ISO week dates, the basic format).
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)


def parse_rfc3339(value: str) -> datetime | None:
    """A time a client gave, or None unless it is an RFC 3339 date-time with an offset or Z
    that is a real moment within datetime's range once in UTC (9999-12-31T23:59:59-01:00
    is not: as UTC it is in the year 10000)."""
    if (match := _RFC3339.fullmatch(value)) is None:
        return None
    start, end = match.span(1)
    if end - start > 7:
        # Python reads at most six digits of a fraction; RFC 3339 allows any number.
        value = value[: start + 7] + value[end:]
    try:
        parsed = datetime.fromisoformat(value.upper().replace(" ", "T"))
        parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    return parsed
