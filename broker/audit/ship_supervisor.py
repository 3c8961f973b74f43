"""The serving replica's side of the shipping process (``ship_worker``): start it, tell it
when to hurry, follow its reports, restart it when it dies, and close it at shutdown.

To readers, ``/readyz`` and the metrics it looks like the in-process shipper: the same
``ShipProgress`` (lag, up or down, waiters for a seq). The writer hands it nothing (the
process reads the files), so that shipping costs the loop nothing per record: after each
report and once a second between them, this side looks at the written seq, for the lag's
age.

It also tells the process when this replica is busy (its loop's thread used most of a
core over the last tenth of a second) and when it is quiet again: idle passes wait for
quiet, so that a burst is served as by a replica without a store, and the store catches up
after it. Waiting and idle priority could mean never under a sustained load; the bound is
here, where the written seq is known: once this replica's oldest record not yet stored is
older than ``lag_bound_seconds``, the process is told to hurry (a pass at normal priority,
busy or not), so the store is never much more than that behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping

import msgspec
import structlog

from broker.audit.ship_worker import (
    EXIT_CONFIG,
    EXIT_STUCK,
    MAX_MESSAGE_BYTES,
    Alive,
    Busy,
    Close,
    Command,
    Hurry,
    Message,
    Start,
)
from broker.audit.shipping import ShipProgress, ShipStatus
from broker.config import AuditSettings
from broker.decoding import decode_untrusted
from broker.metrics import Metrics

log = structlog.get_logger("broker.audit.ship_supervisor")

# Looks at the written seq remembered for the lag's age, at most (one a second: a store
# away for hours does not grow them; past this the age is measured from an older look,
# too long rather than too short).
_MAX_SAMPLES = 4096
_RESTART_BACKOFF = (0.5, 30.0)
# A process that ran this long before it died starts again without waiting long.
_STABLE_SECONDS = 60.0

# The loop is busy while its thread used more than this share of a core over the last
# window, and quiet again below the lower share (between the two it stays as it was).
_LOAD_WINDOW = 0.1
_BUSY_SHARE = 0.6
_QUIET_SHARE = 0.3

# A process that sends nothing, not even its once-a-second Alive, for this long is frozen
# (stopped, or its event loop blocked): it is killed and started again.
SILENT_SECONDS = 15.0

_MESSAGES = msgspec.json.Decoder(Message)
# What an exit status says, for the store's error in /readyz and the metrics.
_REASONS = {
    EXIT_CONFIG: "it cannot use the settings",
    EXIT_STUCK: "a pass made no progress for too long",
}
_ENCODER = msgspec.json.Encoder()


class ShipperProcess:
    def __init__(
        self,
        audit: AuditSettings,
        instance: str,
        written_seq: Callable[[], int],
        *,
        metrics: Metrics,
        store_description: str,
        log_level: str,
        interval_seconds: float,
        lag_bound_seconds: float = 5.0,
        python: str = sys.executable,
        clock: Callable[[], float] = time.monotonic,
        watch_load: bool = True,
        environment: Mapping[str, str] | None = None,
        silent_seconds: float = SILENT_SECONDS,
    ) -> None:
        self._silent_seconds = silent_seconds
        self._watch_load = watch_load
        self._environment = dict(environment) if environment is not None else None
        self._clock = clock
        self._start_message = _ENCODER.encode(
            Start(
                audit=audit,
                instance=instance,
                log_level=log_level,
                interval_seconds=interval_seconds,
            )
        )
        self._metrics = metrics
        self._written_seq = written_seq
        self._progress = ShipProgress(
            store_description, written_seq, metrics, age_of_oldest=self._age_of_oldest
        )
        self._lag_bound = lag_bound_seconds
        self._python = python
        # A last pass may take several of the store's statement timeouts.
        self._close_timeout = 10.0 + 2 * audit.store.timeout_seconds
        self._samples: deque[tuple[int, float]] = deque()
        self._stopped: dict[str, str] = {}
        self._process: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._hurried = False
        self._busy = False
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._pacing: asyncio.Task[None] | None = None
        self.restarts = 0

    @property
    def status(self) -> ShipStatus:
        return self._progress.status

    @property
    def own_shipped(self) -> int:
        return self._progress.own_shipped

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.returncode is None else None

    def start(self) -> None:
        self._samples.append((self._written_seq(), self._clock()))
        self._task = asyncio.create_task(self._supervise(), name="audit-shipper-process")
        if self._watch_load:
            self._pacing = asyncio.create_task(self._pace(), name="audit-shipper-pacing")

    @property
    def busy(self) -> bool:
        """Whether the process was last told that this replica is busy."""
        return self._busy

    def loaded(self, share: float) -> None:
        """The loop's thread used ``share`` of a core over the last window: tell the
        process when that makes the replica busy, or quiet again."""
        busy = share > _BUSY_SHARE if not self._busy else share >= _QUIET_SHARE
        if busy != self._busy:
            self._busy = busy
            self._send(Busy(busy=busy))

    async def _pace(self) -> None:
        # On the loop's own thread: thread_time is the loop's CPU. A timer ten times a
        # second costs the loop nothing measurable.
        cpu, wall = time.thread_time(), time.monotonic()
        while True:
            await asyncio.sleep(_LOAD_WINDOW)
            cpu_now, wall_now = time.thread_time(), time.monotonic()
            self.loaded((cpu_now - cpu) / max(wall_now - wall, 1e-6))
            cpu, wall = cpu_now, wall_now

    async def shipped(self, seq: int) -> None:
        """Return once this replica's records up to ``seq`` are in the store (unbounded
        here: callers bound their wait)."""
        waiter = self._progress.waiter(seq)
        if waiter is None:
            return
        self._send(Hurry())
        await waiter

    def measure_lag(self) -> float:
        """Seconds since the oldest record of this replica not yet in the store was made
        durable, at most one look too long (0 when the store holds them all)."""
        return self._age_of_oldest(self._written_seq(), self._progress.own_shipped)

    def _age_of_oldest(self, written: int, shipped: int) -> float:
        # Each call is a look at the written seq (after each report, and once a second).
        now = self._clock()
        samples = self._samples
        if shipped >= written:
            # Whatever comes next is written after this look.
            samples.clear()
            samples.append((written, now))
            return 0.0
        if not samples or (written > samples[-1][0] and len(samples) < _MAX_SAMPLES):
            samples.append((written, now))
        # Keep the last look that saw the first record not stored still unwritten: it was
        # written after that look, and no earlier.
        oldest = shipped + 1
        while len(samples) >= 2 and samples[1][0] < oldest:
            samples.popleft()
        return now - samples[0][1]

    async def close(self, *, final_pass: bool = True) -> None:
        """Tell the process to make a last pass (the writer's seal among it) and exit;
        killed if it takes longer than a few of the store's timeouts."""
        self._closing = True
        if self._pacing is not None:
            self._pacing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pacing
            self._pacing = None
        task = self._task
        if task is None:
            return
        self._task = None
        if self._writer is None:
            # No process now (between a death and its restart): nothing to wait for.
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return
        self._send(Close(final_pass=final_pass))
        try:
            async with asyncio.timeout(self._close_timeout):
                await asyncio.shield(task)
        except TimeoutError:
            log.error("audit_shipper_killed", reason="no exit after its last pass")
            self._kill()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- supervision -------------------------------------------------------------------

    def _send(self, command: Command) -> None:
        writer = self._writer
        if writer is None or writer.is_closing():
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            writer.write(_ENCODER.encode(command) + b"\n")

    async def _exited_within(self, seconds: float) -> None:
        process = self._process
        if process is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await process.wait()

    def _kill(self) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()

    async def _supervise(self) -> None:
        backoff = _RESTART_BACKOFF[0]
        try:
            while not self._closing:
                started = time.monotonic()
                try:
                    reader = await self._spawn()
                except OSError as exc:
                    self._progress.down(f"the shipping process cannot start: {exc.strerror}")
                else:
                    await self._follow(reader)
                    assert self._process is not None
                    code = await self._process.wait()
                    self._writer = None
                    if self._closing:
                        return
                    self.restarts += 1
                    reason = _REASONS.get(code, f"exit status {code}")
                    log.error("audit_shipper_exited", status=code, restarts=self.restarts)
                    self._progress.down(f"the shipping process stopped ({reason})")
                    if time.monotonic() - started > _STABLE_SECONDS:
                        backoff = _RESTART_BACKOFF[0]
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _RESTART_BACKOFF[1])
        finally:
            self._kill()

    async def _spawn(self) -> asyncio.StreamReader:
        ours, theirs = socket.socketpair()
        try:
            self._process = await asyncio.create_subprocess_exec(
                self._python,
                "-m",
                "broker.audit.ship_worker",
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env=self._environment,
                # Its own process group: a Ctrl-C at the terminal is the replica's to act
                # on; the process ends when told to, or when this socket closes.
                start_new_session=True,
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        reader, self._writer = await asyncio.open_unix_connection(
            sock=ours, limit=MAX_MESSAGE_BYTES
        )
        self._writer.write(self._start_message + b"\n")
        self._hurried = False
        if self._busy:
            self._send(Busy(busy=True))
        if self._progress.waiting:
            self._send(Hurry())
        return reader

    async def _follow(self, reader: asyncio.StreamReader) -> None:
        """Take the process's reports until it exits; between them, once a second, look at
        the lag."""
        shipped_before = 0
        heard = time.monotonic()
        while True:
            try:
                async with asyncio.timeout(1.0):
                    line = await reader.readline()
            except TimeoutError:
                if time.monotonic() - heard > self._silent_seconds:
                    silent = f"silent for {self._silent_seconds:g} s"
                    log.error("audit_shipper_killed", reason=silent)
                    self._kill()
                    return
                self._look_at_lag()
                continue
            except ConnectionError:
                # The socket is gone: the process has exited, or is exiting. Killed only if
                # it has not within a second: a kill polls the child first (subprocess's
                # send_signal), which can reap it before the loop's own watcher, and the
                # exit status that says why it ended (2, 3) would read as 255.
                await self._exited_within(1.0)
                self._kill()
                return
            except ValueError:
                # A line past the bound: not a process to trust further.
                self._kill()
                return
            if not line:
                return
            try:
                report = decode_untrusted(_MESSAGES, line)
            except msgspec.DecodeError:
                self._kill()
                return
            heard = time.monotonic()
            if isinstance(report, Alive):
                self._look_at_lag()
                continue
            self._metrics.audit_shipped_records.inc(max(0, report.shipped - shipped_before))
            shipped_before = report.shipped
            self._stopped = report.stopped
            self._hurried = False
            self._look_at_lag(report.own_shipped)
            if report.up:
                self._progress.reached()
            else:
                self._progress.down(report.error or "the audit store cannot be reached")

    def _look_at_lag(self, own_shipped: int | None = None) -> None:
        # The lag in time is the age of the oldest record not stored (see ShipProgress):
        # under a steady load the store rarely holds every record at the moment it is
        # asked, so "since it last did" would grow for as long as the load lasts.
        progress = self._progress
        progress.update(progress.own_shipped if own_shipped is None else own_shipped, self._stopped)
        if self._hurried:
            return
        if progress.waiting or progress.status.lag_seconds > self._lag_bound:
            self._hurried = True
            self._send(Hurry())
