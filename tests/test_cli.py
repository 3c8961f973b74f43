"""``broker dev``: the README's run command prints a curl that returns a token."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import ServerProcess, free_port


def test_dev_prints_a_curl_that_returns_a_token(tmp_path: Path) -> None:
    port, sim_port = free_port(), free_port()
    server = ServerProcess(
        [
            "dev",
            "--port",
            str(port),
            "--sim-port",
            str(sim_port),
            "--audit-dir",
            str(tmp_path / "a"),
        ],
        port,
        tmp_path / "dev.log",
    )
    server.start()
    try:
        output = server.wait_for_output("curl ")
        command = re.search(r"^curl .*?\}'$", output, re.MULTILINE | re.DOTALL)
        assert command, output
        argv = shlex.split(command.group(0).replace("\\\n", " "))
        result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == 0, result.stderr
        assert '"token":"eyJ' in result.stdout
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
    finally:
        assert server.stopped_cleanly()
    # Both servers in the one process got the SIGTERM: the broker sealed its audit chain.
    verified = subprocess.run(
        [
            sys.executable,
            "-m",
            "broker",
            "audit",
            "verify",
            str(tmp_path / "a"),
            "--public-key",
            str(tmp_path / "audit-keys" / "audit-signing.pub"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verified.returncode == 0, verified.stdout
    assert "1 record(s)" in verified.stdout
