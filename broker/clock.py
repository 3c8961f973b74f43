"""Times as the broker writes them: RFC 3339, UTC, with a Z."""

from __future__ import annotations

import time


def rfc3339(epoch: float) -> str:
    """Whole seconds, for token expiries."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def now_rfc3339_millis() -> str:
    """Now, to the millisecond, for audit records."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
