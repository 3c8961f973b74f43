"""A store client for tests that must run it elsewhere (in a network namespace of its own,
``tests/support/partition.py``): it opens the store at ``URL`` with ``POOL`` connections,
makes a call and prints ``ready``; then, for each line read, the same call again, and one
JSON line: the error it ended with (null for none) and the seconds it took.

    python -m tests.support.store_probe URL POOL TIMEOUT
"""

from __future__ import annotations

import json
import sys
import time

from broker.audit.store import AuditStore


def main() -> int:
    url, pool, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    store = AuditStore.postgresql(url, timeout_seconds=timeout, pool_size=pool)
    store.last_position("probe")
    print("ready", flush=True)
    for _ in sys.stdin:
        started = time.monotonic()
        error = None
        try:
            store.last_position("probe")
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        print(json.dumps({"error": error, "seconds": time.monotonic() - started}), flush=True)
    store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
