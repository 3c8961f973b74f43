"""The shipping process as the serving replica runs it: a real writer on a temp dir, a real
``ship_worker`` child, a SQLite store. What is shipped, read-your-writes, the lag bound that
hurries an idle process, a killed process restarted, and the last pass at close."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from broker.audit.ship_supervisor import ShipperProcess
from broker.audit.ship_worker import EXIT_STUCK
from broker.audit.signing import CheckpointSigner
from broker.audit.store import AuditStore
from broker.audit.writer import AuditWriter
from broker.config import AuditSettings, AuditStoreSettings
from broker.metrics import Metrics
from tests.support.audit_replica import audit_lines, event, seqs
from tests.support.clock import ManualClock
from tests.support.trails import new_signer

Scenario = Callable[[AuditWriter, ShipperProcess], Awaitable[None]]


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> CheckpointSigner:
    return new_signer(tmp_path_factory.mktemp("keys"))[0]


def _settings(directory: Path) -> AuditSettings:
    return AuditSettings(dir=str(directory), fsync=False, checkpoint_every_records=1000)


def _process(
    settings: AuditSettings,
    written_seq: Callable[[], int],
    *,
    silent_seconds: float = 15.0,
    interval: float = 0.5,
    lag_bound: float = 5.0,
    metrics: Metrics | None = None,
    watch_load: bool = True,
    clock: Callable[[], float] = time.monotonic,
    python: str = sys.executable,
) -> ShipperProcess:
    """The shipping process of a writer whose seq ``written_seq`` tells, as Runtime makes
    it in async mode."""
    return ShipperProcess(
        settings,
        "one",
        written_seq,
        metrics=metrics or Metrics(),
        store_description="sqlite",
        log_level="warning",
        interval_seconds=interval,
        lag_bound_seconds=lag_bound,
        watch_load=watch_load,
        clock=clock,
        python=python,
        silent_seconds=silent_seconds,
    )


async def _until(check: Callable[[], bool], seconds: float) -> None:
    """Poll ``check`` (what it looks at signals nothing) for at most ``seconds``."""
    for _ in range(int(seconds / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {seconds} s")


def _run(
    directory: Path,
    signer: CheckpointSigner,
    scenario: Scenario,
    *,
    interval: float = 0.5,
    lag_bound: float = 5.0,
    metrics: Metrics | None = None,
    watch_load: bool = True,
) -> AuditStore:
    """A writer and its shipping process on ``directory``, as Runtime wires them in async
    mode; returns the store once both have closed."""
    settings = _settings(directory)

    async def run() -> None:
        writer = AuditWriter(settings, signer, instance_id="one")
        process = _process(
            settings,
            lambda: writer.seq,
            interval=interval,
            lag_bound=lag_bound,
            metrics=metrics,
            watch_load=watch_load,
        )
        await writer.start()
        process.start()
        try:
            await scenario(writer, process)
        finally:
            await writer.close()
            await process.close()
        assert process.pid is None

    asyncio.run(run())
    return AuditStore.sqlite(settings.sqlite_path)


def test_every_record_arrives_and_a_reader_gets_its_own_writes(
    tmp_path: Path, signer: CheckpointSigner
) -> None:
    metrics = Metrics()

    async def scenario(writer: AuditWriter, process: ShipperProcess) -> None:
        for n in range(20):
            await writer.append(event(n))
        async with asyncio.timeout(20):
            await process.shipped(writer.seq)
        assert process.own_shipped >= writer.seq
        assert process.status.up
        assert process.status.lag_records == 0
        assert process.pid is not None

    store = _run(tmp_path, signer, scenario, metrics=metrics)
    # The last pass at close took the seal too: every line of the files, once.
    assert seqs(store, "one") == list(range(1, audit_lines(tmp_path) + 1))
    assert metrics.registry.get_sample_value("broker_audit_shipped_records_total") == audit_lines(
        tmp_path
    )


def test_past_the_lag_bound_an_idle_process_is_hurried(
    tmp_path: Path, signer: CheckpointSigner
) -> None:
    """Passes a minute apart: only the bound (0.5 s here) brings the records in soon."""
    took: list[float] = []

    async def scenario(writer: AuditWriter, process: ShipperProcess) -> None:
        async with asyncio.timeout(20):
            await process.shipped(writer.seq)  # the start record; the process is up
        for n in range(5):
            await writer.append(event(n))
        started = time.monotonic()
        store = AuditStore.sqlite(_settings(tmp_path).sqlite_path)
        await _until(lambda: len(seqs(store, "one")) == writer.seq, 20)
        took.append(time.monotonic() - started)

    _run(tmp_path, signer, scenario, interval=60.0, lag_bound=0.5)
    assert took[0] < 10


def test_within_the_lag_bound_nothing_hurries_the_process(
    tmp_path: Path, signer: CheckpointSigner
) -> None:
    """The same, with a bound of an hour: the records wait for the next pass (in a minute)
    and only the close ships them."""

    async def scenario(writer: AuditWriter, process: ShipperProcess) -> None:
        async with asyncio.timeout(20):
            await process.shipped(writer.seq)
        shipped = writer.seq
        for n in range(5):
            await writer.append(event(n))
        await asyncio.sleep(2.5)
        assert process.own_shipped == shipped
        assert process.status.lag_records == 5

    # Not watching the test's own loop: a busy moment and the quiet after it would release
    # a pass (quiet again, the process catches up at once).
    store = _run(tmp_path, signer, scenario, interval=60.0, lag_bound=3600.0, watch_load=False)
    assert seqs(store, "one") == list(range(1, audit_lines(tmp_path) + 1))


def test_a_killed_process_is_restarted_and_ships_what_was_written_meanwhile(
    tmp_path: Path, signer: CheckpointSigner
) -> None:
    async def scenario(writer: AuditWriter, process: ShipperProcess) -> None:
        async with asyncio.timeout(20):
            await process.shipped(writer.seq)
        pid = process.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await _until(lambda: process.restarts > 0, 10)
        assert not process.status.up
        assert process.status.error == "the shipping process stopped (exit status -9)"
        for n in range(10):
            await writer.append(event(n))
        async with asyncio.timeout(20):
            await process.shipped(writer.seq)
        assert process.status.up
        assert process.pid not in (None, pid)

    with capture_logs() as logs:
        store = _run(tmp_path, signer, scenario)
    assert seqs(store, "one") == list(range(1, audit_lines(tmp_path) + 1))
    exited = [line for line in logs if line["event"] == "audit_shipper_exited"]
    assert exited == [
        {"event": "audit_shipper_exited", "status": -9, "restarts": 1, "log_level": "error"}
    ]


def test_a_replica_closing_without_a_last_pass_leaves_the_rest_to_its_successor(
    tmp_path: Path, signer: CheckpointSigner
) -> None:
    settings = _settings(tmp_path)

    async def run() -> int:
        writer = AuditWriter(settings, signer, instance_id="one")
        process = _process(
            settings, lambda: writer.seq, interval=60.0, lag_bound=3600.0, watch_load=False
        )
        await writer.start()
        process.start()
        async with asyncio.timeout(20):
            await process.shipped(writer.seq)
        shipped = writer.seq
        for n in range(3):
            await writer.append(event(n))
        await writer.close()
        await process.close(final_pass=False)
        return shipped

    shipped = asyncio.run(run())
    assert seqs(AuditStore.sqlite(settings.sqlite_path), "one") == list(range(1, shipped + 1))


def test_the_lag_is_the_age_of_the_oldest_record_not_stored(tmp_path: Path) -> None:
    """Measured from the last look (once a second) that saw that record not yet written:
    too long by at most a look, never too short."""
    clock = ManualClock(100.0)
    written = [0]
    process = _process(_settings(tmp_path), lambda: written[0], clock=clock)
    assert process.measure_lag() == 0.0
    # Looks at 100, 101, 102 and 103 see 10, 20, 20 and 40 written.
    for at, seen in ((100.0, 10), (101.0, 20), (102.0, 20), (103.0, 40)):
        clock.now, written[0] = at, seen
        process.measure_lag()
    clock.now = 110.0
    # Records 1-10 were written by 100: the look before them is the first of all.
    assert process.measure_lag() == 10.0
    process._progress.update(10, {})
    # Record 11 was not written at 100.
    assert process.measure_lag() == 10.0
    process._progress.update(20, {})
    # Record 21 was not written at 101 (nor at 102, which saw no new record).
    assert process.measure_lag() == 9.0
    process._progress.update(40, {})
    assert process.measure_lag() == 0.0
    # After catching up (at 110), the next records are measured from that look.
    clock.now, written[0] = 111.5, 45
    assert process.measure_lag() == 1.5


def test_a_busy_replica_is_shipped_for_once_quiet_again(
    tmp_path: Path, signer: CheckpointSigner
) -> None:
    """No pass while the replica says it is busy: its records wait (the bound is an hour
    here) and go in once it is quiet, at once (passes are a minute apart here)."""

    async def scenario(writer: AuditWriter, process: ShipperProcess) -> None:
        async with asyncio.timeout(20):
            await process.shipped(writer.seq)
        shipped = writer.seq
        process.loaded(0.9)
        assert process.busy
        for n in range(5):
            await writer.append(event(n))
        await asyncio.sleep(1.5)
        assert process.own_shipped == shipped
        # The lag in time is the age of the oldest record not stored, looked at each second.
        await _until(lambda: process.status.lag_seconds >= 1.0, 5)
        assert process.status.lag_records == 5
        process.loaded(0.1)
        assert not process.busy
        await _until(lambda: process.own_shipped == writer.seq, 20)
        await _until(lambda: process.status.lag_seconds == 0.0, 5)

    _run(tmp_path, signer, scenario, interval=60.0, lag_bound=3600.0, watch_load=False)


def test_busy_and_quiet_are_told_apart_with_a_margin(tmp_path: Path) -> None:
    process = _process(_settings(tmp_path), lambda: 0)
    seen = []
    for share in (0.5, 0.7, 0.5, 0.35, 0.2, 0.5, 0.65):
        process.loaded(share)
        seen.append(process.busy)
    assert seen == [False, True, True, True, False, False, True]


def test_a_replica_that_stays_busy_is_shipped_for_past_the_lag_bound(
    tmp_path: Path, signer: CheckpointSigner
) -> None:
    async def scenario(writer: AuditWriter, process: ShipperProcess) -> None:
        async with asyncio.timeout(20):
            await process.shipped(writer.seq)
        process.loaded(1.0)
        for n in range(5):
            await writer.append(event(n))
        await _until(lambda: process.own_shipped == writer.seq, 20)
        assert process.busy

    _run(tmp_path, signer, scenario, interval=0.2, lag_bound=0.5, watch_load=False)


def test_a_process_that_cannot_start_shows_as_the_store_down_and_close_does_not_wait(
    tmp_path: Path,
) -> None:
    async def run() -> None:
        process = _process(_settings(tmp_path), lambda: 1, python=str(tmp_path / "no-such-python"))
        process.start()
        await _until(lambda: not process.status.up, 5)
        assert process.status.error == (
            "the shipping process cannot start: No such file or directory"
        )
        started = time.monotonic()
        await process.close()
        assert time.monotonic() - started < 1.0

    asyncio.run(run())


def _stand_in(tmp_path: Path, code: str) -> str:
    """A stand-in for the Python the supervisor starts: it runs ``code`` with the socket it
    is given (``-m broker.audit.ship_worker FD``: the third argument) as ``sys.argv[1]``."""
    script = tmp_path / "stand-in-python"
    script.write_text(f'#!/bin/sh\nexec {sys.executable} -c "{code}" "$3"\n')
    script.chmod(0o755)
    return str(script)


def _misbehaving(tmp_path: Path, report: str) -> str:
    """A stand-in that writes the bytes the expression ``report`` makes on its socket,
    then waits a minute. Only a kill ends it sooner."""
    code = f"import os, sys, time; os.write(int(sys.argv[1]), {report}); time.sleep(60)"
    return _stand_in(tmp_path, code)


@pytest.mark.parametrize(
    "report",
    [
        "b'x' * (2 << 20)",  # past the 1 MiB bound, without a newline
        repr(b"not json\n"),
        repr(
            b'{"type": "report", "up": "yes", "error": null, "own_shipped": 0, "shipped": 0,'
            b' "stopped": {}}\n'
        ),
        repr(
            b'{"type": "report", "up": true, "error": null, "own_shipped": 0, "shipped": 0,'
            b' "stopped": {}, "extra": 1}\n'
        ),
        repr(b'{"type": "done"}\n'),
    ],
    ids=["oversized", "not-json", "wrong-type", "unknown-field", "unknown-message"],
)
def test_a_process_whose_report_does_not_decode_is_killed_and_restarted(
    tmp_path: Path, report: str
) -> None:
    async def run() -> None:
        process = _process(_settings(tmp_path), lambda: 1, python=_misbehaving(tmp_path, report))
        with capture_logs() as logs:
            process.start()
            await _until(lambda: process.restarts >= 1, 10)
            await process.close(final_pass=False)
        exits = [e for e in logs if e["event"] == "audit_shipper_exited"]
        assert exits[0]["status"] == -signal.SIGKILL
        assert not process.status.up

    asyncio.run(run())


def test_a_frozen_process_is_killed_once_silent_and_restarted(tmp_path: Path) -> None:
    async def run() -> None:
        process = _process(_settings(tmp_path), lambda: 1, silent_seconds=2.0)
        with capture_logs() as logs:
            process.start()
            await _until(lambda: process.pid is not None, 10)
            frozen = process.pid
            assert frozen is not None
            # Its Alive lines keep a quiet process from being taken for a frozen one.
            await asyncio.sleep(3.0)
            assert process.restarts == 0
            os.kill(frozen, signal.SIGSTOP)
            await _until(lambda: process.restarts >= 1, 10)
            await _until(lambda: process.pid not in (None, frozen), 10)
            await process.close(final_pass=False)
        killed = [e for e in logs if e["event"] == "audit_shipper_killed"]
        assert killed[0]["reason"] == "silent for 2 s"
        exits = [e for e in logs if e["event"] == "audit_shipper_exited"]
        assert exits[0]["status"] == -signal.SIGKILL

    asyncio.run(run())


def test_a_process_that_ends_stuck_is_said_to_be_and_restarted(tmp_path: Path) -> None:
    stuck = _stand_in(tmp_path, f"exit({EXIT_STUCK})")

    async def run() -> None:
        process = _process(_settings(tmp_path), lambda: 1, python=stuck)
        process.start()
        await _until(lambda: process.restarts >= 1, 10)
        assert process.status.error == (
            "the shipping process stopped (a pass made no progress for too long)"
        )
        await process.close(final_pass=False)

    asyncio.run(run())


def test_a_process_that_cannot_use_the_settings_is_said_to_be(tmp_path: Path) -> None:
    """The real process, ending at once with its own status: read as that status, not as
    the reset of a socket it closed before the start message was read."""
    unusable = AuditSettings(
        dir=str(tmp_path),
        store=AuditStoreSettings(backend="postgresql", url_env="BROKER_TEST_UNSET_URL"),
    )

    async def run() -> None:
        process = _process(unusable, lambda: 1)
        process.start()
        await _until(lambda: process.restarts >= 1, 10)
        assert process.status.error == "the shipping process stopped (it cannot use the settings)"
        await process.close(final_pass=False)

    for _ in range(3):
        asyncio.run(run())
