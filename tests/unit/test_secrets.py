"""The stores' URLs are secrets (``broker/secrets.py``): what they would send in clear across
a network is warned of, and the warning never holds the URL or its password."""

from __future__ import annotations

import base64

import pytest

from broker.config import Settings, parse_settings
from broker.secrets import secret_cleartext_warnings

PASSWORD = "s3cret-pw"
_BASE = """
[upstream]
api_key_env = "MKA1_API_KEY"

[audit]
dir = "/tmp/unused-audit"
"""
_SHARED = """
[shared_state]
url_env = "SHARED_URL"
encryption_key_env = "SHARED_KEY"
"""
_STORE = """
[audit.store]
backend = "postgresql"
url_env = "STORE_URL"
"""


def _settings(monkeypatch: pytest.MonkeyPatch, *, shared: str = "", store: str = "") -> Settings:
    document = _BASE
    if shared:
        monkeypatch.setenv("SHARED_URL", shared)
        monkeypatch.setenv("SHARED_KEY", base64.b64encode(b"k" * 32).decode())
        document += _SHARED
    if store:
        monkeypatch.setenv("STORE_URL", store)
        document += _STORE
    return parse_settings(document)


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        (f"redis://:{PASSWORD}@redis.internal:6379/0", True),
        (f"rediss://:{PASSWORD}@redis.internal:6379/0", False),
        (f"redis://:{PASSWORD}@127.0.0.1:6379/0", False),
        ("unix:///run/redis/redis.sock", False),
    ],
)
def test_a_shared_store_reached_in_clear_is_warned_of(
    monkeypatch: pytest.MonkeyPatch, url: str, warned: bool
) -> None:
    warnings = secret_cleartext_warnings(_settings(monkeypatch, shared=url))
    assert [w.split(" is ")[0] for w in warnings] == (["shared_state.url"] if warned else [])
    assert all(PASSWORD not in w and "redis.internal" not in w for w in warnings)


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        (f"postgresql://broker:{PASSWORD}@db.internal/audit", True),
        (f"postgresql://broker:{PASSWORD}@db.internal/audit?sslmode=prefer", True),
        (f"postgresql://broker:{PASSWORD}@127.0.0.1,db.internal/audit", True),
        (f"postgresql://broker:{PASSWORD}@db.internal/audit?sslmode=require", False),
        (f"postgresql://broker:{PASSWORD}@db.internal/audit?sslmode=verify-full", False),
        (f"postgresql://broker:{PASSWORD}@localhost/audit", False),
        ("postgresql:///audit?host=/var/run/postgresql", False),
    ],
)
def test_an_audit_store_reached_without_tls_is_warned_of(
    monkeypatch: pytest.MonkeyPatch, url: str, warned: bool
) -> None:
    warnings = secret_cleartext_warnings(_settings(monkeypatch, store=url))
    assert len(warnings) == (1 if warned else 0)
    assert all(w.startswith("audit.store's URL reaches a host") for w in warnings)
    assert all(PASSWORD not in w and "db.internal" not in w for w in warnings)


_KEY = base64.b64encode(b"k" * 32).decode()
_OTHER = base64.b64encode(b"o" * 32).decode()


@pytest.mark.parametrize(
    ("lines", "said"),
    [
        ({"previous_env": "OTHER_KEY"}, None),
        ({"next_env": "OTHER_KEY"}, None),
        (
            {"previous_env": "SHARED_KEY"},
            "shared_state.encryption_key_previous: is encryption_key itself",
        ),
        ({"next_env": "NOT_BASE64"}, "shared_state.encryption_key_next: must be 32 random bytes"),
        ({"next_env": "UNSET_KEY"}, "shared_state.encryption_key_next_env: variable UNSET_KEY"),
        (
            {"previous_env": "OTHER_KEY", "previous_file": "/run/k"},
            "shared_state: set at most one of encryption_key_previous_env or "
            "encryption_key_previous_file",
        ),
    ],
)
def test_the_keys_read_while_the_encryption_key_is_changed_are_checked_as_it_is(
    monkeypatch: pytest.MonkeyPatch, lines: dict[str, str], said: str | None
) -> None:
    from broker.config import ConfigError
    from broker.secrets import shared_state_other_keys, shared_state_secrets

    monkeypatch.setenv("SHARED_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("SHARED_KEY", _KEY)
    monkeypatch.setenv("OTHER_KEY", _OTHER)
    monkeypatch.setenv("NOT_BASE64", "not a key")
    monkeypatch.delenv("UNSET_KEY", raising=False)
    document = (
        _BASE
        + _SHARED
        + "".join(f'encryption_key_{name} = "{value}"\n' for name, value in lines.items())
    )

    def keys() -> tuple[bytes | None, bytes | None]:
        settings = parse_settings(document)
        assert settings.shared_state is not None
        _, key = shared_state_secrets(settings.shared_state)
        return shared_state_other_keys(settings.shared_state, key)

    if said is not None:
        with pytest.raises(ConfigError) as refused:
            keys()
        assert str(refused.value).startswith(said), str(refused.value)
        assert _KEY not in str(refused.value)
        assert _OTHER not in str(refused.value)
        return
    other = base64.b64decode(_OTHER)
    assert keys() == ((other, None) if "previous_env" in lines else (None, other))
