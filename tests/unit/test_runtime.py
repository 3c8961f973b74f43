"""What the runtime hands the audit shipping process."""

from __future__ import annotations

from pathlib import Path

from broker.config import load_settings
from broker.runtime import shipping_environment


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

[shared_state]
url_env = "REDIS_URL"
encryption_key_env = "SHARED_KEY"
replicas = 2

[[clients]]
id = "svc"
key_sha256 = "%s"
audiences = ["https://api.example.com"]
"""
        % ("0" * 64)
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
