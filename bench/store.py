"""The audit store measured: an auditor's lookups on a large trail, from the files and from
the SQLite and PostgreSQL stores in the same run, and how fast shipping copies records.

The trail is written by the real writer (fsync off: this measures reading, not the disk),
then shipped by the real shipper into each store. Each lookup is timed as the median of a
few runs of the same call the CLI makes (``find-token --sha256``, ``query --subject``).

    python -m bench.store --records 1000000 [--postgres]   # --postgres: a temp server
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from broker.audit.reader import Filters, discover, find_token, query
from broker.audit.records import AuditEvent
from broker.audit.shipping import Shipper
from broker.audit.store import AuditStore, StoreFilters
from broker.audit.writer import AuditWriter
from broker.config import AuditSettings
from broker.metrics import Metrics


def issued_event(n: int) -> AuditEvent:
    """The ``n``th of a trail of issued decisions, each for its own token."""
    return AuditEvent(
        time="2026-11-28T00:00:00.000Z",
        request_id=f"r{n:012x}",
        outcome="issued",
        code="issued",
        status=200,
        caller="billing-service",
        auth_method="client_key",
        external_user_id=f"user_{n % 50_000}",
        audience="https://api.example.com",
        granted_expires_in=900,
        token_sha256=hashlib.sha256(str(n).encode()).hexdigest(),
        token_id=f"jti-{n}",
        cache="miss",
    )


async def _write(directory: Path, records: int) -> None:
    settings = AuditSettings(dir=str(directory), fsync=False, checkpoint_every_records=10_000)
    writer = AuditWriter(settings, instance_id="bench")
    await writer.start()
    batch = 2000
    for start in range(0, records, batch):
        await asyncio.gather(*(writer.append(issued_event(n)) for n in range(start, start + batch)))
    await writer.close()


async def _ship(directory: Path, store: AuditStore) -> float:
    """Seconds to copy the whole trail into ``store``."""
    with ThreadPoolExecutor(max_workers=2) as executor:
        shipper = Shipper(
            store,
            directory,
            "bench",
            lambda: 0,
            executor=executor,
            metrics=Metrics(),
            batch_records=5000,
        )
        started = time.perf_counter()
        await shipper.close()  # one final pass: everything in the directory
        return time.perf_counter() - started


def _median_seconds(call: object, runs: int = 5) -> float:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        call()  # type: ignore[operator]
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def _cli_seconds(args: list[str], postgres_url: str | None, runs: int = 5) -> float:
    environment = os.environ | ({"BENCH_AUDIT_DB": postgres_url} if postgres_url else {})
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "broker", "audit", *args],
            capture_output=True,
            env=environment,
            check=False,
        )
        timings.append(time.perf_counter() - started)
        assert done.returncode == 0, done.stderr
    return statistics.median(timings)


def measure(records: int, postgres_url: str | None, workdir: Path) -> dict[str, dict[str, float]]:
    trail = workdir / "audit"
    started = time.perf_counter()
    asyncio.run(_write(trail, records))
    write_seconds = time.perf_counter() - started
    wanted = records // 2
    sha = hashlib.sha256(str(wanted).encode()).hexdigest()
    subject = f"user_{wanted % 50_000}"
    files = discover([trail])
    results: dict[str, dict[str, float]] = {
        "files": {
            "find_token_s": _median_seconds(lambda: find_token(files, sha256=sha), runs=1),
            "query_subject_s": _median_seconds(
                lambda: list(query(files, Filters(subject=subject))), runs=1
            ),
            "write_records_per_s": records / write_seconds,
        }
    }
    stores = {"sqlite": AuditStore.sqlite(workdir / "store.sqlite3")}
    if postgres_url is not None:
        stores["postgresql"] = AuditStore.postgresql(postgres_url)
    sources = {"sqlite": str(workdir / "store.sqlite3"), "postgresql": "env:BENCH_AUDIT_DB"}
    for name, store in stores.items():
        ship_seconds = asyncio.run(_ship(trail, store))
        found = store.find_token(sha256=sha)
        assert len(found) == 1, found
        results[name] = {
            "find_token_s": _median_seconds(lambda s=store: s.find_token(sha256=sha)),
            "query_subject_s": _median_seconds(
                lambda s=store: s.query(StoreFilters(subject=subject))
            ),
            "ship_records_per_s": records / ship_seconds,
            # The whole command as an auditor types it: Python's start and imports too.
            "cli_find_token_s": _cli_seconds(
                ["find-token", "--database", sources[name], "--sha256", sha], postgres_url
            ),
            "cli_query_subject_s": _cli_seconds(
                ["query", "--database", sources[name], "--subject", subject], postgres_url
            ),
        }
        store.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument(
        "--postgres", action="store_true", help="also a PostgreSQL store (a temp server)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as raw:
        workdir = Path(raw)
        with contextlib.ExitStack() as stack:
            url = None
            if args.postgres:
                sys.path.insert(0, str(Path(__file__).parents[1]))
                from tests.support.postgres import PostgresServer

                url = stack.enter_context(PostgresServer.running()).create_database()
            results = measure(args.records, url, workdir)
    print(f"{args.records} records")
    for name, figures in results.items():
        shown = ", ".join(f"{key} {value:.4g}" for key, value in figures.items())
        print(f"  {name}: {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
