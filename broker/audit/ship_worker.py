"""The audit shipper in a process of its own: async mode's shipping, at idle priority.

The replica that serves starts this process (``ship_supervisor.ShipperProcess``) and talks
to it over a socket pair, one JSON line a message. It follows the chain files in
``audit.dir`` as the in-process shipper does (``shipping.Shipper``, the same code) and
reports after every pass how far the store holds the serving replica's chain.

Why a process: the store's work (SQLite's above all: 10-20 us of CPU a record) beside the
event loop shared its GIL and its core; requests queued behind it (a cache hit served 0.94
of the minimal endpoint with it, 1.18 without, p99 1.6x against 0.6x; bench/notes.md).
Here it shares neither: its passes run on a thread at ``SCHED_IDLE``, which the kernel runs
only on a core nothing else wants, and they wait while the serving replica says it is
busy (on a core of its own, SQLite's work still slowed the loop's by its use of the shared
caches). So that "idle" cannot mean "never", a pass the serving replica asks for (a reader
waiting for its own records, the lag past its bound, shutdown) runs on a thread at normal
priority, and an idle pass gives way to it between batches.

The process ends when told to (after a last pass) or when its socket closes (the replica
is gone: one last pass, then exit), so it never outlives the replica by more than that.

It also ends, with ``EXIT_STUCK``, when a pass has gone ``stuck_after`` seconds without
progress (every step of a pass is bounded by the store's timeouts: one that is not has hung
on something else), and between reports it says once a second that it is alive, so that
the replica can tell a quiet process from a frozen one (``ship_supervisor``). Either way
the replica starts another, which resumes from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgspec
import structlog

from broker.audit.shipping import Shipper, ShipStatus
from broker.config import AuditSettings, ConfigError
from broker.decoding import decode_untrusted
from broker.metrics import Metrics
from broker.observability import configure_logging
from broker.secrets import open_store

log = structlog.get_logger("broker.audit.ship_worker")

# Exit statuses the supervisor tells apart: a configuration it cannot use will not work
# better on a restart; a pass stuck (see watch_progress) may.
EXIT_CONFIG = 2
EXIT_STUCK = 3
# Between reports, a line a second says the process is not frozen (the supervisor kills one
# that stays silent: ship_supervisor.SILENT_SECONDS).
ALIVE_SECONDS = 1.0


class Start(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The first message: what to ship, where to, and how often."""

    audit: AuditSettings
    instance: str
    log_level: str
    interval_seconds: float


class Hurry(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="hurry"):
    """Ship now, at normal priority (the next pass)."""


class Busy(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="busy"):
    """The serving replica's loop is busy (or no longer): hold idle passes back (or not)."""

    busy: bool


class Close(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="close"):
    """A last pass if ``final_pass``, then exit."""

    final_pass: bool = True


Command = Hurry | Busy | Close


class Alive(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag="alive"):
    """Sent every ``ALIVE_SECONDS``: the process is not frozen."""


class Report(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, tag="report"):
    """After every pass: the store reached or not, how far it holds the serving replica's
    chain, the records this process has stored, and chains it cannot ship."""

    up: bool
    error: str | None
    own_shipped: int
    shipped: int
    stopped: dict[str, str]


Message = Report | Alive

_START = msgspec.json.Decoder(Start)
_COMMAND = msgspec.json.Decoder(Command)

MAX_STOPPED_REPORTED = 100

# A command line is a few bytes; a report names stopped chains (a path and a reason each).
MAX_MESSAGE_BYTES = 1 << 20


def stuck_after(audit: AuditSettings) -> float:
    """Seconds a pass may go without progress before the process gives up on it: each step
    (a batch read, a batch stored) is bounded by the store's timeouts, a few of them each."""
    return max(60.0, 6 * audit.store.timeout_seconds)


def _stuck(seconds: float) -> None:
    # A thread blocked in a call cannot be stopped from here: the process ends, and the
    # supervisor starts another, which resumes from the store.
    log.error("audit_shipper_stuck", seconds=round(seconds))
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
    os._exit(EXIT_STUCK)


async def watch_progress(
    stuck_for: Callable[[], float],
    alive: Callable[[], None],
    limit: float,
    on_stuck: Callable[[float], None] = _stuck,
    every: float = ALIVE_SECONDS,
) -> None:
    """Say the process is alive once ``every`` seconds, until a pass has gone ``limit``
    seconds without progress: then ``on_stuck``."""
    while True:
        await asyncio.sleep(every)
        stuck = stuck_for()
        if stuck > limit:
            on_stuck(stuck)
            return
        alive()


def lower_priority() -> str:
    """Move the calling thread to ``SCHED_IDLE`` (Linux; per thread, unprivileged), or to
    nice 19 where that is refused; returns what it got, for the log."""
    if sys.platform != "linux":
        return "normal"
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return "idle"
    except OSError:
        pass
    try:
        # On Linux a thread id is a valid PRIO_PROCESS target and changes that thread only.
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        return "nice 19"
    except OSError:
        return "normal"


async def serve(sock: socket.socket) -> int:
    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_MESSAGE_BYTES)
    try:
        start = decode_untrusted(_START, await reader.readline())
    except msgspec.DecodeError:
        # Not from a replica of this version: nothing to ship for it.
        return EXIT_CONFIG
    configure_logging(start.log_level)
    try:
        store = open_store(start.audit)
    except ConfigError as exc:
        log.error("audit_shipper_not_started", reason=str(exc))
        return EXIT_CONFIG
    if store is None:
        return EXIT_CONFIG
    idle = ThreadPoolExecutor(
        max_workers=1,
        thread_name_prefix="audit-ship-idle",
        initializer=lambda: log.info("audit_shipper_started", idle_thread=lower_priority()),
    )
    urgent = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-ship")
    encoder = msgspec.json.Encoder()

    def send(message: Message) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            writer.write(encoder.encode(message) + b"\n")

    def report(status: ShipStatus) -> None:
        message = Report(
            up=status.up,
            error=status.error,
            own_shipped=shipper.own_shipped,
            shipped=status.shipped,
            # Bounded: a directory of hostile files could stop any number of chains.
            stopped=dict(sorted(status.stopped.items())[:MAX_STOPPED_REPORTED]),
        )
        send(message)

    shipper = Shipper(
        store,
        Path(start.audit.dir),
        start.instance,
        # The lag is the serving replica's to tell (it knows what it has written).
        lambda: 0,
        executor=idle,
        urgent_executor=urgent,
        metrics=Metrics(),
        batch_records=start.audit.store.batch_records,
        min_interval_seconds=start.interval_seconds,
        idle_wait_seconds=0.0,
        on_pass=report,
        prune_shipped=start.audit.store.prune_shipped_files,
        report_outages=False,
    )
    shipper.start()
    watch = asyncio.create_task(
        watch_progress(shipper.stuck_for, lambda: send(Alive()), stuck_after(start.audit))
    )
    final_pass = True
    try:
        while line := await reader.readline():
            try:
                command = decode_untrusted(_COMMAND, line)
            except msgspec.DecodeError as exc:
                log.error("audit_shipper_bad_command", error=str(exc))
                break
            if isinstance(command, Close):
                final_pass = command.final_pass
                break
            if isinstance(command, Busy):
                shipper.hold(command.busy)
                continue
            shipper.hurry()
    finally:
        await shipper.close(final_pass=final_pass)
        watch.cancel()
        report(shipper.status)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()
        store.close()
        idle.shutdown(wait=False, cancel_futures=True)
        urgent.shutdown(wait=False, cancel_futures=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    sock = socket.socket(fileno=int(args[0]))
    return asyncio.run(serve(sock))


if __name__ == "__main__":
    raise SystemExit(main())
