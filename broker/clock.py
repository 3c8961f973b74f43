"""Times as the broker writes them: RFC 3339, UTC, with a Z.

``time.strftime`` costs a few microseconds and every request formats two times; the
formatted second is kept and only the milliseconds are added per call.
"""

from __future__ import annotations

import time
from functools import lru_cache

_last_second = -1
_last_text = ""


def _second(epoch_second: int) -> str:
    global _last_second, _last_text
    if epoch_second != _last_second:
        _last_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_second))
        _last_second = epoch_second
    return _last_text


@lru_cache(maxsize=1024)
def _whole_seconds(epoch_second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch_second))


def rfc3339(epoch: float) -> str:
    """Whole seconds, for token expiries and refresh times (each second formatted once)."""
    return _whole_seconds(int(epoch))


def now_rfc3339_millis() -> str:
    """Now, to the millisecond, for audit records."""
    now = time.time()
    whole = int(now)
    return f"{_second(whole)}.{int((now - whole) * 1000):03d}Z"


def now_rfc3339_micros() -> str:
    """Now, to the microsecond, as log lines carry it."""
    now = time.time()
    whole = int(now)
    return f"{_second(whole)}.{int((now - whole) * 1_000_000):06d}Z"
