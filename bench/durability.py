"""What a durable audit write costs on this host, and the bound that puts on "group-commit
durable throughput >= 0.85 x no-fsync" (``bench.run``).

At 32 connections the hit benchmark is a closed loop in lockstep: every connection's
request lands in one batch, the batch is written, and nothing else is left for the event
loop to do until it is durable (``bench/notes.md``). Each round trip of the load then costs
the no-fsync broker's round trip plus what the fsync adds to one batch's write. So

    durable / no-fsync <= cycle / (cycle + added),  cycle = connections / no-fsync req/s

where ``added`` is measured here with the real ``AuditWriter``: batches of ``--batch``
decisions appended at once, with fsync and without, in interleaved rounds, timed from the
event loop as a request waits for them. For reference, the same batch written by hand as
the writer does it (append, fsync), and as a write-ahead log with segments zeroed in
advance does it (overwrite, fdatasync: no journal commit, because the file's size and
blocks do not change), which the audit files cannot do without a tail of NUL bytes. Alone
it adds half of what an fsync does; under the hit benchmark's load it gains nothing
(``bench/notes.md``, "A write-ahead log written in place").

    python -m bench.durability [--rounds 5] [--batches 400] [--batch 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import uvloop

from bench.store import issued_event
from broker.audit.writer import AuditWriter
from broker.config import AuditSettings
from broker.observability import configure_logging

RESULTS = Path(__file__).parent / "results" / "results.json"
GOAL = 0.85


async def _writer_batches(directory: Path, fsync: bool, batches: int, size: int) -> list[float]:
    """Seconds from handing ``size`` decisions to the writer at once until all are durable,
    per batch, as requests wait for them."""
    writer = AuditWriter(AuditSettings(dir=str(directory), fsync=fsync), instance_id="bench")
    await writer.start()
    took = []
    try:
        for batch in range(batches):
            events = [issued_event(batch * size + n) for n in range(size)]
            started = time.perf_counter()
            await asyncio.gather(*(writer.append(event) for event in events))
            took.append(time.perf_counter() - started)
    finally:
        await writer.close()
    return took


async def _by_hand(
    path: Path, batches: int, data: bytes, prepare: Callable[[int], None] | None, sync: str
) -> list[float]:
    """The same hop and write without the writer: append (or overwrite a zeroed file when
    ``prepare`` zeroes one), then ``sync`` ("fsync", "fdatasync" or "none")."""
    flags = os.O_WRONLY | os.O_CREAT | (0 if prepare else os.O_APPEND)
    fd = os.open(path, flags, 0o600)
    if prepare is not None:
        prepare(fd)
    offset = 0

    def write() -> None:
        nonlocal offset
        if prepare is not None:
            os.pwrite(fd, data, offset)
            offset += len(data)
        else:
            os.write(fd, data)
        if sync == "fsync":
            os.fsync(fd)
        elif sync == "fdatasync":
            os.fdatasync(fd)

    loop = asyncio.get_running_loop()
    took = []
    with ThreadPoolExecutor(1) as io:
        for _ in range(batches):
            started = time.perf_counter()
            await loop.run_in_executor(io, write)
            took.append(time.perf_counter() - started)
    os.close(fd)
    return took


def _zeroed(length: int) -> Callable[[int], None]:
    def zero(fd: int) -> None:
        block = b"\0" * (1 << 20)
        for _ in range(0, length, len(block)):
            os.write(fd, block)
        os.fsync(fd)

    return zero


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def _last_hits() -> tuple[int, float] | None:
    """Connections and the no-fsync broker's req/s from the last ``make bench``, if any."""
    try:
        results = json.loads(RESULTS.read_text())
        return int(results["plan"]["connections"]), float(
            results["hits"]["broker_hit_no_fsync"]["throughput_rps"]
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


async def measure(rounds: int, batches: int, size: int, root: Path) -> dict[str, float]:
    data = b"".join(
        b'{"v":1,"type":"decision","seq":1,"prev":"' + b"0" * 64 + b'",' + b"x" * 290 + b"}\n"
        for _ in range(size)
    )
    ways: dict[str, list[float]] = {}
    for round_ in range(rounds):
        here = root / f"round-{round_}"
        here.mkdir()
        measured = {
            "writer, fsync": await _writer_batches(here / "durable", True, batches, size),
            "writer, no fsync": await _writer_batches(here / "plain", False, batches, size),
            "append + fsync": await _by_hand(here / "a", batches, data, None, "fsync"),
            "append": await _by_hand(here / "b", batches, data, None, "none"),
            "zeroed + fdatasync": await _by_hand(
                here / "c", batches, data, _zeroed(batches * len(data)), "fdatasync"
            ),
        }
        for name, took in measured.items():
            ways.setdefault(name, []).append(_median_ms(took))
    return {name: statistics.median(medians) for name, medians in ways.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dir", help="where to write (default: a temp dir, as bench.run's)")
    args = parser.parse_args(argv)
    # The writers' own lines (a chain not sealed: no signing key here) are not the report.
    configure_logging("error", component="bench")
    with tempfile.TemporaryDirectory(prefix="durability-", dir=args.dir) as temp:
        medians = uvloop.run(measure(args.rounds, args.batches, args.batch, Path(temp)))
    print(f"batch of {args.batch} records, median of {args.rounds} rounds of {args.batches}:")
    for name, ms in medians.items():
        print(f"  {name:<20} {ms:.3f} ms")
    added = medians["writer, fsync"] - medians["writer, no fsync"]
    print(f"fsync adds {added:.3f} ms to a batch the writer makes durable")
    print(
        "a zeroed write-ahead log would add "
        f"{medians['zeroed + fdatasync'] - medians['append']:.3f} ms "
        f"(append + fsync: {medians['append + fsync'] - medians['append']:.3f} ms)"
    )
    last = _last_hits()
    if last is not None:
        connections, rps = last
        cycle = connections / rps * 1000
        bound = cycle / (cycle + added)
        print(
            f"last make bench: {connections} connections at {rps:.0f} req/s without fsync, "
            f"a round trip of {cycle:.2f} ms: durable / no-fsync <= {bound:.3f} "
            f"(goal {GOAL}; met only if fsync adds <= {cycle * (1 / GOAL - 1):.3f} ms)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
