"""Signals around a running broker: a reload requested while it starts, and requests still
running when the shutdown grace runs out."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from typing import Any

import httpx

from tests.conftest import AuditKeys, BrokerFactory, Simulator
from tests.support import loopback
from tests.support.audit_cli import verify
from tests.support.problems import assert_problem
from tests.support.signal_masks import ignores
from tests.support.waiting import eventually


def test_sighup_while_starting_does_not_kill_the_broker(
    start_broker: BrokerFactory, audit_keys: AuditKeys
) -> None:
    broker = start_broker(name="sighup-start")
    assert broker.server.stopped_cleanly()
    process = subprocess.Popen(
        [sys.executable, "-m", "broker", "serve", "--config", str(broker.config_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=broker.server.environment(),
    )
    try:
        # The interpreter's own start is beyond any program's reach; from the broker's first
        # statement on (imports, config, the app, its lifespan) a SIGHUP must do no harm.
        # That statement's effect shows in /proc: a fixed wait (0.25 s) was sometimes too
        # short on a loaded host, and the test killed a broker still starting Python.
        eventually(lambda: ignores(process.pid, signal.SIGHUP), what="the broker ignores SIGHUP")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            process.send_signal(signal.SIGHUP)
            assert process.poll() is None, "a SIGHUP during start-up killed the broker"
            try:
                if loopback.get(broker.url + "/healthz", timeout=0.2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.01)
        for _ in range(5):
            process.send_signal(signal.SIGHUP)
            time.sleep(0.05)
        assert broker.post_token(fresh=True).status_code == 200
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    result = verify(broker.audit_dir, audit_keys)
    assert result.returncode == 0, result.stdout


def test_requests_cut_off_by_the_shutdown_grace_get_503_and_a_record(
    start_broker: BrokerFactory, simulator: Simulator, audit_keys: AuditKeys
) -> None:
    broker = start_broker(
        name="grace-cut",
        extra_server="shutdown_grace_seconds = 1.0",
        extra_upstream="timeout_seconds = 8.0\ndeadline_seconds = 9.0",
    )
    simulator.fault(delay_seconds=6)
    answers: list[httpx.Response] = []

    def ask() -> None:
        answers.append(broker.post_token(fresh=True))

    thread = threading.Thread(target=ask)
    thread.start()
    deadline = time.monotonic() + 5
    while not simulator.requests() and time.monotonic() < deadline:
        time.sleep(0.02)
    started = time.monotonic()
    assert broker.server.stopped_cleanly()
    thread.join(timeout=10)
    assert time.monotonic() - started < 5
    (answer,) = answers
    problem: dict[str, Any] = assert_problem(answer, 503, "shutting_down")
    assert "retry" in problem["detail"]
    (record,) = [r for r in broker.audit_lines() if r["code"] == "shutting_down"]
    assert (record["outcome"], record["status"], record["reason"]) == (
        "failed",
        503,
        "shutdown_grace_expired",
    )
    result = verify(broker.audit_dir, audit_keys)
    assert result.returncode == 0, result.stdout
    simulator.clear()
