"""Running ``broker audit`` as an auditor would, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import AuditKeys


def run_audit(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", "audit", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=os.environ | (env or {}),
    )


def verify(directory: Path, keys: AuditKeys, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_audit("verify", directory, "--public-key", keys.public, *extra)
