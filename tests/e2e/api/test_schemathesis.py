"""Schemathesis fuzzes the running broker from its own OpenAPI document: every check, with
negative data too. Nothing may answer outside the documented contract, nor with a 500."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import Broker
from tests.support.paths import REPOSITORY
from tests.support.tools import tool


@pytest.mark.timeout(600)
def test_the_api_holds_its_contract_under_fuzzing(broker: Broker) -> None:
    schemathesis = tool("schemathesis")
    if schemathesis is None:
        pytest.fail("schemathesis is not installed")
    auditor = broker.clients["auditor"].key
    result = subprocess.run(
        [
            schemathesis,
            "--config-file",
            str(REPOSITORY / "schemathesis.toml"),
            "run",
            broker.url + "/openapi.json",
            "--checks",
            "all",
            "--mode",
            "all",
            "--max-examples",
            "60",
            "--seed",
            "20261127",
            "--workers",
            "2",
            "--header",
            f"Authorization: Bearer {auditor}",
            "--generation-database",
            "none",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
