"""The fork server the tests start their servers from (``tests/support/forkserver``): what a
test can see of a forked server (its output, its exit status, its death by a signal) is
what it would see of a new interpreter."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import BrokerFactory
from tests.support import forkserver
from tests.support.paths import deployed_environment
from tests.support.signal_masks import signal_masks
from tests.support.waiting import free_port


def _fork_server(environment: dict[str, str]) -> forkserver.ForkServer:
    forks = forkserver.shared(environment)
    assert forks is not None, "the servers' own environment can be forked"
    return forks


def _forked_and_fresh(*args: str) -> tuple[tuple[int, bytes], tuple[int, bytes]]:
    """``python -m broker ARGS`` forked and fresh, stderr with stdout: status and output."""
    environment = deployed_environment()
    forked = _fork_server(environment).spawn(["-m", "broker", *args], environment, Path.cwd())
    output = forked.stdout.read()
    forked.stdout.close()
    fresh = subprocess.run(
        [sys.executable, "-m", "broker", *args],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=60,
        check=False,
    )
    return (forked.wait(timeout=60), output), (fresh.returncode, fresh.stdout)


def _run_forked_and_fresh(
    command: list[str],
) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """``python COMMAND`` as ``ForkServer.run`` and as ``subprocess.run`` run it."""
    environment = deployed_environment()
    forked = _fork_server(environment).run(command, environment, Path.cwd(), timeout=60)
    fresh = subprocess.run(
        [sys.executable, *command],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return forked, fresh


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("--help",), id="help"),
        pytest.param(("serve", "--config", "/nonexistent/broker.toml"), id="no-config"),
        pytest.param(("sim", "--port", "not-a-port"), id="bad-argument"),
    ],
)
def test_a_forked_command_says_and_exits_as_a_new_interpreter_does(args: tuple[str, ...]) -> None:
    forked, fresh = _forked_and_fresh(*args)
    assert forked == fresh
    assert fresh[1], "each of these says something"


def test_a_forked_broker_stops_and_dies_as_popen_reports_it(
    start_broker: BrokerFactory,
) -> None:
    stopped, killed = start_broker(name="forked-stop"), start_broker(name="forked-kill")
    for broker in (stopped, killed):
        assert isinstance(broker.server.process, forkserver.ForkedProcess)
        assert broker.server.process.poll() is None
    # uvicorn re-raises SIGTERM once it has shut down; see ServerProcess.stopped_cleanly.
    assert stopped.server.stop() in (0, -signal.SIGTERM)
    assert "shutdown" in stopped.server.output().lower()
    process = killed.server.process
    assert isinstance(process, forkserver.ForkedProcess)
    process.kill()
    assert process.wait(timeout=15) == -signal.SIGKILL
    assert process.poll() == -signal.SIGKILL


def test_a_server_with_other_interpreter_settings_gets_a_new_interpreter() -> None:
    assert forkserver.shared(deployed_environment({"PYTHONHASHSEED": "7"})) is None
    assert forkserver.shared(deployed_environment()) is not None


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("audit", "--help"), id="help"),
        pytest.param(
            ("audit", "verify", "/nonexistent", "--public-key", "/nonexistent"), id="no-dir"
        ),
    ],
)
def test_a_forked_command_keeps_stdout_and_stderr_apart_as_run_does(
    args: tuple[str, ...],
) -> None:
    forked, fresh = _run_forked_and_fresh(["-m", "broker", *args])
    assert (forked.returncode, forked.stdout, forked.stderr) == (
        fresh.returncode,
        fresh.stdout,
        fresh.stderr,
    )
    assert fresh.stdout or fresh.stderr


def test_a_forked_command_that_outlasts_its_timeout_is_killed() -> None:
    environment = deployed_environment({"K": "k"})
    port = free_port()
    with pytest.raises(subprocess.TimeoutExpired):
        _fork_server(environment).run(
            ["-m", "broker", "sim", "--port", str(port), "--api-key-env", "K"],
            environment,
            Path.cwd(),
            timeout=1.5,
        )
    # Killed, not left serving: nothing answers on its port.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def _nothing() -> None:
    """A preexec function: the server is then started in a new interpreter."""


def test_a_forked_broker_blocks_ignores_and_catches_the_signals_a_new_one_does(
    start_broker: BrokerFactory,
) -> None:
    forked = start_broker(name="masks-forked")
    fresh = start_broker(name="masks-fresh", preexec=_nothing)
    assert isinstance(forked.server.process, forkserver.ForkedProcess)
    assert isinstance(fresh.server.process, subprocess.Popen)
    assert signal_masks(forked.server.process.pid) == signal_masks(fresh.server.process.pid)


@pytest.mark.parametrize("sighup", [signal.SIG_IGN, signal.SIG_DFL], ids=["ignored", "default"])
def test_a_forked_command_blocks_ignores_and_catches_the_signals_a_new_one_does(
    sighup: signal.Handlers,
) -> None:
    # The fork server ignores SIGINT (a Ctrl-C must not take it down before the servers it
    # reports on), and the worker's own dispositions change during the session (a test
    # that runs the app in-process leaves SIGHUP ignored): a child gets what a process
    # started by the test now would have, not the fork server's.
    previous = signal.signal(signal.SIGHUP, sighup)
    try:
        forked, fresh = _run_forked_and_fresh(["-m", "tests.support.signal_masks"])
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert forked.returncode == fresh.returncode == 0
    assert forked.stdout == fresh.stdout
    assert fresh.stdout.count("Sig") == 3
