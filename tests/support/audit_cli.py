"""Running ``broker audit`` as an auditor would, in a process of its own (forked, see
``forkserver``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import AuditKeys
from tests.support import forkserver
from tests.support.paths import deployed_environment


def run_audit(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``broker audit ARGS``: its exit status, stdout and stderr."""
    environment = deployed_environment(env)
    command = ["-m", "broker", "audit", *map(str, args)]
    forks = forkserver.shared(environment)
    if forks is not None:
        return forks.run(command, environment, Path.cwd(), timeout=60)
    return subprocess.run(
        [sys.executable, *command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=environment,
    )


def verify(directory: Path, keys: AuditKeys, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_audit("verify", directory, "--public-key", keys.public, *extra)
