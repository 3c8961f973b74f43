"""What the runtime hands the audit shipping process, what it makes each replica's own, and what
it says at start."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from broker.config import load_settings
from broker.runtime import Runtime, shipping_environment

_A_CLIENT = f"""
[[clients]]
id = "svc"
key_sha256 = "{"0" * 64}"
audiences = ["https://api.example.com"]
"""
_SHARED_STATE_AND_A_CLIENT = (
    """
[shared_state]
url_env = "REDIS_URL"
encryption_key_env = "SHARED_KEY"
replicas = 2
"""
    + _A_CLIENT
)


def test_the_shipping_process_gets_no_secret_it_has_no_use_for(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text(
        """
[upstream]
base_url = "http://127.0.0.1:9"
api_key_env = "MKA1_KEY"
api_key_next_env = "MKA1_NEXT_KEY"

[audit]
signing_key_env = "SIGNING_KEY"

[audit.store]
backend = "postgresql"
url_env = "AUDIT_URL"
"""
        + _SHARED_STATE_AND_A_CLIENT
    )
    settings = load_settings(config)
    environ = {
        name: "secret"
        for name in (
            "MKA1_KEY",
            "MKA1_NEXT_KEY",
            "SIGNING_KEY",
            "REDIS_URL",
            "SHARED_KEY",
            "AUDIT_URL",
        )
    } | {"PATH": "/usr/bin", "HOME": "/home/broker"}
    assert shipping_environment(settings, environ) == {
        "AUDIT_URL": "secret",
        "PATH": "/usr/bin",
        "HOME": "/home/broker",
    }


def test_each_runtime_holds_leases_as_itself_even_with_the_same_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The lease lets one replica mint for all; only its holder may release it. With the
    # instance id unset (the default), every replica held as "".
    config = tmp_path / "broker.toml"
    config.write_text(
        f"""
[upstream]
base_url = "http://127.0.0.1:9"
api_key_env = "MKA1_KEY"

[audit]
dir = "{tmp_path / "audit"}"
"""
        + _SHARED_STATE_AND_A_CLIENT
    )
    monkeypatch.setenv("MKA1_KEY", "mka1_test_key")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # never dialled here
    monkeypatch.setenv("SHARED_KEY", base64.b64encode(os.urandom(32)).decode())
    settings = load_settings(config)
    holders = [Runtime(settings).minting._holder for _ in range(2)]
    assert all(holders)
    assert holders[0] != holders[1]


def test_a_runtime_without_any_caller_says_so_at_start_and_at_a_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "broker.toml"
    callerless = f"""
[upstream]
base_url = "http://127.0.0.1:9"
api_key_env = "MKA1_KEY"

[audit]
dir = "{tmp_path / "audit"}"

[audit.store]
backend = "none"
"""
    config.write_text(callerless)
    monkeypatch.setenv("MKA1_KEY", "mka1_test_key")

    def warned(logs: list[MutableMapping[str, Any]]) -> list[str]:
        return [
            line["detail"]
            for line in logs
            if line["event"] == "no_callers_configured" and line["log_level"] == "warning"
        ]

    async def start_reload_and_close() -> list[list[str]]:
        runtime = Runtime(load_settings(config), config_path=config)
        said = []
        with capture_logs() as logs:
            await runtime.start()
        said.append(warned(logs))
        config.write_text(callerless + _A_CLIENT)
        with capture_logs() as logs:
            assert runtime.reload()
        said.append(warned(logs))
        config.write_text(callerless)
        with capture_logs() as logs:
            assert runtime.reload()
        said.append(warned(logs))
        await runtime.close()
        return said

    at_start, with_a_client, without_again = asyncio.run(start_reload_and_close())
    assert len(at_start) == 1
    assert at_start[0].startswith("no callers are configured")
    assert with_a_client == []
    assert without_again == at_start
