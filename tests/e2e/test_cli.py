"""``make dev``: the README's run command, followed as a new user would: the banner comes
once both servers listen, its curl returns a token, its verify command works as printed
after a clean stop (busy or idle), and a busy port is one line and exit status 2."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from broker.audit.writer import AuditWriter
from broker.config import AuditSettings
from tests.conftest import ServerProcess
from tests.support import loopback
from tests.support.paths import REPOSITORY
from tests.support.trails import new_signer, write_trail
from tests.support.waiting import free_port


def _make_dev(tmp_path: Path, port: int, sim_port: int) -> ServerProcess:
    """The README's run command itself, with ports and an audit directory of the test's own."""
    return ServerProcess(
        [],
        port,
        tmp_path / "dev.log",
        command=[
            "make",
            "--no-print-directory",
            "dev",
            f"PORT={port}",
            f"SIM_PORT={sim_port}",
            f"AUDIT_DIR={tmp_path / 'a'}",
        ],
        cwd=REPOSITORY,
    )


def _printed_verify(output: str) -> str:
    command = re.search(r"^\S*broker audit verify .*$", output, re.MULTILINE)
    assert command, output
    return command.group(0)


def _run_as_printed(command: str) -> subprocess.CompletedProcess[str]:
    # Through a shell, exactly as a user would paste it.
    return subprocess.run(  # noqa: S602
        command, shell=True, capture_output=True, text=True, timeout=60, cwd=REPOSITORY, check=False
    )


@pytest.mark.parametrize("requests", [1, 0], ids=["after a token", "idle"])
def test_the_dev_walkthrough_works_as_printed(tmp_path: Path, requests: int) -> None:
    port, sim_port = free_port(), free_port()
    server = _make_dev(tmp_path, port, sim_port).start()
    try:
        output = server.wait_for_output("is ready", timeout=30)
        assert loopback.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
        command = re.search(r"^curl .*?\}'$", output, re.MULTILINE | re.DOTALL)
        assert command, output
        argv = shlex.split(command.group(0).replace("\\\n", " "))
        for _ in range(requests):
            result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
            assert result.returncode == 0, result.stderr
            assert '"token":"eyJ' in result.stdout
    finally:
        # Ctrl-C, as the banner says: make and the broker both get SIGINT.
        server.interrupt()
    assert "audit_chain_sealed" in server.output()
    assert output.count("is ready") == 1
    # The settings sit beside the audit directory, the developer's own, not in shared /tmp.
    config = tmp_path / f"broker-dev-{port}.toml"
    assert f"config written to {config};" in output
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert not (Path(tempfile.gettempdir()) / f"mka1-token-broker-dev-{port}.toml").exists()
    verified = _run_as_printed(_printed_verify(output))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"{requests} record(s)" in verified.stdout
    assert ", sealed" in verified.stdout
    # The whole output as collected (the banner, both servers' lines) is the log the trail
    # is held against.
    anchored = _run_as_printed(
        f"{_printed_verify(output)} --anchors {shlex.quote(str(server.log_path))}"
    )
    assert anchored.returncode == 0, anchored.stdout + anchored.stderr
    assert "head(s) of 1 instance(s)" in anchored.stdout
    assert "all found" in anchored.stdout

    # Every log line names its component; the simulator logs the exchanges it served.
    lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    assert lines
    assert all(line.get("component") in ("broker", "simulator") for line in lines), lines
    served = [line for line in lines if line.get("event") == "request"]
    if requests:
        assert {"simulator", "broker"} <= {line["component"] for line in served}
    # uvicorn's own lines too: each server's start is under its own name, once.
    servers = [line["component"] for line in lines if line["event"].startswith("Started server")]
    assert sorted(servers) == ["broker", "simulator"], servers
    started = next(line for line in lines if line.get("event") == "broker_started")
    assert started["clients"] == 1
    assert started["signing_key_id"]
    assert any(line.get("event") == "audit_chain_sealed" for line in lines)


def test_a_busy_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "broker",
                "dev",
                "--port",
                str(port),
                "--sim-port",
                str(free_port()),
                "--audit-dir",
                str(tmp_path / "a"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2
    assert f"127.0.0.1:{port} is already in use" in result.stderr
    assert "make dev PORT=" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "is ready" not in result.stdout


def test_make_dev_passes_its_ports() -> None:
    dry = subprocess.run(
        ["make", "-n", "dev", "PORT=18080", "SIM_PORT=18090", "AUDIT_DIR=/tmp/x"],
        capture_output=True,
        text=True,
        cwd=REPOSITORY,
        check=False,
    )
    assert "broker dev --port 18080 --sim-port 18090 --audit-dir /tmp/x" in dry.stdout


def _serve_once(config: Path) -> subprocess.CompletedProcess[str]:
    """``broker serve`` with ``config``, its API key in ``K``, run until it exits."""
    return subprocess.run(
        [sys.executable, "-m", "broker", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "K": "mka1_x"},
        check=False,
    )


def test_serve_on_a_busy_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config.write_text(
            f'[server]\nport = {port}\n[upstream]\napi_key_env = "K"\n'
            f'[audit]\ndir = "{tmp_path / "audit"}"\n'
        )
        result = _serve_once(config)
    assert result.returncode == 2
    assert f"127.0.0.1:{port} is already in use" in result.stderr
    assert "choose another with --port or server.port" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_on_an_address_not_this_hosts_says_so_not_to_choose_a_port(tmp_path: Path) -> None:
    # It read "192.0.2.1:8080 is Cannot assign requested address; choose another with --port".
    config = tmp_path / "broker.toml"
    config.write_text(
        '[server]\nhost = "192.0.2.1"\n[upstream]\napi_key_env = "K"\n'
        f'[audit]\ndir = "{tmp_path / "audit"}"\n'
    )
    result = _serve_once(config)
    assert result.returncode == 2
    assert result.stderr.endswith(
        "broker: cannot listen: 192.0.2.1:8080: Cannot assign requested address; "
        "check the listen address\n"
    )


@pytest.mark.parametrize("command", ["audit verify", "openapi"])
def test_a_reader_that_leaves_early_gets_no_traceback(tmp_path: Path, command: str) -> None:
    # `broker audit verify ... | head -1`: the rest of the output met a closed pipe, and the
    # command ended in a BrokenPipeError traceback on stderr. Both ways in: the auditor's
    # commands' own entry point, and every other command's.
    directory = tmp_path / "audit"
    signer, public = new_signer(tmp_path / "keys")
    writer = AuditWriter(
        AuditSettings(dir=str(directory), fsync=False), signer, instance_id="piped"
    )
    write_trail(writer, [])
    argv = [sys.executable, "-m", "broker", *command.split()]
    if command == "audit verify":
        argv += [str(directory), "--public-key", str(public)]
    reader, writer_end = os.pipe()
    os.close(reader)
    try:
        result = subprocess.run(
            argv,
            stdout=writer_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        os.close(writer_end)
    assert "Traceback" not in result.stderr
    assert "BrokenPipeError" not in result.stderr
    assert result.returncode == 141


@pytest.mark.parametrize("command", [["audit", "query"], ["openapi"]])
def test_output_that_cannot_be_written_is_one_line(tmp_path: Path, command: list[str]) -> None:
    # `> /dev/full`, or a full disk: an OSError traceback before.
    directory = tmp_path / "audit"
    write_trail(AuditWriter(AuditSettings(dir=str(directory), fsync=False)), [])
    argv = [sys.executable, "-m", "broker", *command]
    if command[0] == "audit":
        argv.append(str(directory))
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            argv, stdout=full, stderr=subprocess.PIPE, text=True, timeout=30, check=False
        )
    assert result.stderr == "broker: cannot write the output: No space left on device\n"
    assert result.returncode == 1
