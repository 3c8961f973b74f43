"""What the runtime hands the audit shipping process, and what it makes each replica's own."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from broker.config import load_settings
from broker.runtime import Runtime, shipping_environment

_SHARED_STATE_AND_A_CLIENT = f"""
[shared_state]
url_env = "REDIS_URL"
encryption_key_env = "SHARED_KEY"
replicas = 2

[[clients]]
id = "svc"
key_sha256 = "{"0" * 64}"
audiences = ["https://api.example.com"]
"""


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
