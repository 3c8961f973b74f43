"""The settings file: strict decoding, errors that name the field and never a secret."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broker.config import (
    ConfigError,
    UpstreamSettings,
    callerless_warnings,
    cleartext_warnings,
    parse_settings,
    unanchored_warnings,
)
from broker.secrets import ApiKeySource, Secret


def resolve_api_key(upstream: UpstreamSettings) -> Secret:
    return ApiKeySource.current_key(upstream, None).get()


KEY_HASH = "a" * 64
VALID = f"""
[upstream]
api_key_env = "MKA1_API_KEY"

[[clients]]
id = "billing-service"
key_sha256 = "{KEY_HASH}"
audiences = ["https://billing.example.com"]
subjects = "any"
max_expires_in = 86400
default_expires_in = 900
permissions = ["read:responses"]
"""


def test_the_documented_shape_loads() -> None:
    document = """
[server]
host = "127.0.0.1"
port = 8080

[upstream]
base_url = "https://apigw.mka1.com"
exchange_path = "/api/v1/authentication/api-key/exchange-token"
api_key_file = "/run/secrets/mka1-api-key"
timeout_seconds = 5.0

[tokens]
default_expires_in = 3600

[audit]
dir = "var/audit"
""" + VALID.split("\n[[clients]]", 1)[1].join(["\n[[clients]]", ""])
    settings = parse_settings(document)
    assert settings.clients[0].id == "billing-service"
    assert settings.clients[0].subjects == "any"
    assert settings.upstream.api_key_file == "/run/secrets/mka1-api-key"
    assert settings.tokens.default_expires_in == 3600


def test_subject_patterns_load() -> None:
    settings = parse_settings(VALID.replace('subjects = "any"', 'subjects = ["tenant-a:*"]'))
    assert settings.clients[0].subjects == ["tenant-a:*"]


_SHARED = '[shared_state]\nurl_env = "U"\nencryption_key_env = "K"\n'


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (("max_expires_in = 86400", "max_expires_in = 299"), "clients[0].max_expires_in"),
        (("max_expires_in = 86400", "max_expires_in = 2592001"), "clients[0].max_expires_in"),
        (("max_expires_in = 86400", 'max_expires_in = "86400"'), "clients[0].max_expires_in"),
        ((f'key_sha256 = "{KEY_HASH}"', 'key_sha256 = "abc"'), "clients[0].key_sha256"),
        ((f'key_sha256 = "{KEY_HASH}"', f'key_sha256 = "{"A" * 64}"'), "clients[0].key_sha256"),
        (('subjects = "any"', 'subjects = "everyone"'), "clients[0].subjects"),
        (('subjects = "any"', "subjects = []"), "clients[0].subjects"),
        (
            ("default_expires_in = 900", "default_expires_in = 90000"),
            "clients[0].default_expires_in",
        ),
        (
            ('audiences = ["https://billing.example.com"]', 'audiences = ["billing"]'),
            "clients[0].audiences[0]",
        ),
        (('audiences = ["https://billing.example.com"]', "audiences = []"), "clients[0].audiences"),
        (('id = "billing-service"', 'id = "billing-service"\ncolour = "red"'), "clients[0]"),
        (("[upstream]", "[upstream]\ntimeout_seconds = 0"), "upstream.timeout_seconds"),
        (("[upstream]", "[upstream]\ntimeout_seconds = nan"), "upstream.timeout_seconds"),
        # Denormal: no bound, and a wait's arithmetic overflowed on it.
        *(
            (("[upstream]", f"{section}\n{field} = 5e-324\n[upstream]"), f"{section[1:-1]}.{field}")
            for section, field in (
                ("[server]", "head_timeout_seconds"),
                ("[server]", "body_timeout_seconds"),
                ("[audit]", "write_timeout_seconds"),
                ("[audit]", "checkpoint_interval_seconds"),
            )
        ),
        (
            ("[upstream]", "[upstream]\ncircuit_cooldown_seconds = 0.0009"),
            "upstream.circuit_cooldown_seconds",
        ),
        (
            (
                "[upstream]",
                "[rate_limits]\nper_caller = { rate_per_second = 5e-324, burst = 1 }\n[upstream]",
            ),
            "rate_limits.per_caller.rate_per_second",
        ),
        (
            (
                "[upstream]",
                '[[issuers]]\nid = "idp"\nissuer = "https://idp.example.com"\naudience = "b"\n'
                'audiences = ["https://billing.example.com"]\njwks_min_refresh_seconds = 0\n'
                "[upstream]",
            ),
            "issuers[0].jwks_min_refresh_seconds",
        ),
        (
            (
                "[upstream]",
                '[[issuers]]\nid = "idp"\nissuer = "https://idp.example.com/?tenant=a"\n'
                'audience = "b"\naudiences = ["https://billing.example.com"]\n[upstream]',
            ),
            "issuers[0].issuer: must not contain a query",
        ),
        (("[upstream]", "[audit]\nrotate_seconds = 0.001\n[upstream]"), "audit.rotate_seconds"),
        (("[upstream]", "[audit]\nrotate_seconds = inf\n[upstream]"), "audit.rotate_seconds"),
        (("[upstream]", '[upstream]\nbase_url = "https://x.example/"'), "upstream.base_url"),
        (
            ("[upstream]", '[upstream]\nbase_url = "https://u:pw@x.example"'),
            "upstream.base_url: must not contain user-info",
        ),
        # The exchange path went into the query: every exchange asked the base URL's path.
        (
            ("[upstream]", '[upstream]\nbase_url = "https://x.example/api?v=1"'),
            "upstream.base_url: must not contain a query",
        ),
        *(
            (
                ("[upstream]", f"[upstream]\nexchange_path = {json.dumps(path)}"),
                "upstream.exchange_path: must be a path starting with /",
            )
            for path in ("api/v1/x", "/api/v1/x#f", "/api/v1/ x", "/api/v1/\u00e9", "/a\tb")
        ),
        (('api_key_env = "MKA1_API_KEY"', ""), "upstream"),
        # "*" believed every client's X-Forwarded-For; the others were never matched.
        *(
            (("[upstream]", f'[server]\ntrusted_proxies = ["{entry}"]\n[upstream]'), field)
            for entry, field in (
                ("*", "server.trusted_proxies[0]"),
                ("10.1.2.3/8", "server.trusted_proxies[0]"),
                ("10.0.0.0/33", "server.trusted_proxies[0]"),
                ("proxy.internal", "server.trusted_proxies[0]"),
                ("", "server.trusted_proxies[0]"),
            )
        ),
        (('api_key_env = "MKA1_API_KEY"', 'api_key_env = "A"\napi_key_file = "/f"'), "upstream"),
        # Periods of loops that never paused: a file read, a store call, each without end.
        (
            ("[upstream]", "[upstream]\napi_key_check_seconds = 1e-9"),
            "upstream.api_key_check_seconds: Expected `float` >= 0.1",
        ),
        (
            ("[upstream]", _SHARED + "revocation_refresh_seconds = 0.001\n[upstream]"),
            "shared_state.revocation_refresh_seconds: Expected `float` >= 0.1",
        ),
    ],
)
def test_impossible_values_name_their_field(change: tuple[str, str], field: str) -> None:
    old, new = change
    assert old in VALID
    with pytest.raises(ConfigError) as caught:
        parse_settings(VALID.replace(old, new, 1))
    assert str(caught.value).startswith(field), str(caught.value)


def test_unknown_sections_are_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown field `extra`"):
        parse_settings(VALID + "\n[extra]\nx = 1\n")


def test_duplicate_clients_are_rejected() -> None:
    twice = VALID + VALID.split("\n[[clients]]", 1)[1].join(["\n[[clients]]", ""])
    with pytest.raises(
        ConfigError, match=r"clients\[1\]\.(id|key_sha256): (duplicate|the same key)"
    ):
        parse_settings(twice)


def test_errors_never_show_a_key_hash() -> None:
    secretish = "f" * 63 + "g"
    with pytest.raises(ConfigError) as caught:
        parse_settings(VALID.replace(KEY_HASH, secretish))
    assert secretish not in str(caught.value)


def test_api_key_from_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MKA1_API_KEY", "mka1_secret_value")
    key = resolve_api_key(parse_settings(VALID).upstream)
    assert key.reveal() == "mka1_secret_value"
    assert "mka1_secret_value" not in repr(key)
    assert "mka1_secret_value" not in str(key)

    secret_file = tmp_path / "key"
    secret_file.write_text("mka1_from_file\n")
    from_file = parse_settings(
        VALID.replace('api_key_env = "MKA1_API_KEY"', f'api_key_file = "{secret_file}"')
    )
    assert resolve_api_key(from_file.upstream).reveal() == "mka1_from_file"

    secret_file.write_text("")
    with pytest.raises(ConfigError, match=r"upstream\.api_key_file"):
        resolve_api_key(from_file.upstream)
    monkeypatch.delenv("MKA1_API_KEY")
    with pytest.raises(ConfigError, match=r"upstream\.api_key_env"):
        resolve_api_key(parse_settings(VALID).upstream)


def test_secret_is_opaque() -> None:
    assert "hunter2" not in f"{Secret('hunter2')!r} {Secret('hunter2')}"


def _broker(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=os.environ | (env or {}),
        check=False,
    )


def test_check_config_and_serve_exit_2_naming_the_field(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(VALID)
    result = _broker("check-config", str(good), env={"MKA1_API_KEY": "mka1_x"})
    assert result.returncode == 0, result.stderr
    assert "OK (1 client(s), 0 issuer(s), 0 prox(ies)" in result.stdout

    bad = tmp_path / "bad.toml"
    bad.write_text(VALID.replace("max_expires_in = 86400", "max_expires_in = 100"))
    for command in (["check-config", str(bad)], ["serve", "--config", str(bad)]):
        result = _broker(*command)
        assert result.returncode == 2
        assert "clients[0].max_expires_in" in result.stderr


@pytest.mark.parametrize("key", ["mka1_a\nmka1_b", "mka1 key", "mka1_\x1b", "mka1_\u00e9"])
def test_an_api_key_no_header_can_carry_is_refused_and_a_replacement_like_it_kept_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    # In the Authorization header it made aiohttp refuse every call: each miss a 500.
    monkeypatch.setenv("MKA1_API_KEY", key)
    with pytest.raises(ConfigError) as refused:
        resolve_api_key(parse_settings(VALID).upstream)
    assert str(refused.value) == (
        "upstream.api_key_env: variable MKA1_API_KEY holds more than one line, a space or a "
        "character outside printable ASCII"
    )
    assert key not in str(refused.value)
    secret_file = tmp_path / "key"
    secret_file.write_text("mka1_good\n")
    source = ApiKeySource(env=None, file=str(secret_file), check_seconds=0.1)
    secret_file.write_text(key + "\n")
    time.sleep(0.11)
    assert source.get().reveal() == "mka1_good"  # the last good key kept


def test_serve_without_the_api_key_exits_2_without_showing_values(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(VALID)
    result = _broker("serve", "--config", str(config), env={"MKA1_API_KEY": ""})
    assert result.returncode == 2
    assert "upstream.api_key_env" in result.stderr


def test_client_key_prints_a_key_and_its_hash() -> None:
    import hashlib
    import re

    result = _broker("client-key")
    assert result.returncode == 0
    key = re.search(r"(bk_[A-Za-z0-9_-]{43})", result.stdout)
    digest = re.search(r'"([0-9a-f]{64})"', result.stdout)
    assert key
    assert digest
    assert hashlib.sha256(key.group(1).encode()).hexdigest() == digest.group(1)
    assert _broker("client-key").stdout != result.stdout


def test_check_config_reads_what_serve_reads_unless_told_not_to(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(VALID)
    unset = _broker("check-config", str(config), env={"MKA1_API_KEY": ""})
    assert unset.returncode == 2
    assert f"{config}: upstream.api_key_env" in unset.stderr
    skipped = _broker("check-config", str(config), "--skip-secrets", env={"MKA1_API_KEY": ""})
    assert skipped.returncode == 0, skipped.stderr
    assert "secrets not read" in skipped.stdout

    config.write_text(VALID + '\n[audit]\nsigning_key_file = "keys/missing.key"\n')
    missing = _broker("check-config", str(config), env={"MKA1_API_KEY": "mka1_x"})
    assert missing.returncode == 2
    assert str(config) in missing.stderr
    assert "audit.signing_key_file" in missing.stderr


def test_relative_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    from broker.audit.signing import generate_key_pair
    from broker.config import load_settings

    home = tmp_path / "etc"
    generate_key_pair(home / "keys")
    config = home / "broker.toml"
    config.write_text(
        VALID + '\n[audit]\ndir = "audit"\nsigning_key_file = "keys/audit-signing.key"\n'
    )
    elsewhere = subprocess.run(
        [sys.executable, "-m", "broker", "check-config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env={**__import__("os").environ, "MKA1_API_KEY": "mka1_x"},
        check=False,
    )
    assert elsewhere.returncode == 0, elsewhere.stderr
    settings = load_settings(config)
    assert settings.audit.dir == str(home / "audit")
    assert settings.audit.signing_key_file == str(home / "keys" / "audit-signing.key")


@pytest.mark.parametrize(
    ("typo", "suggested", "where"),
    [
        ("max_expire_in = 900", "max_expires_in", "clients[0]"),
        ("audience = []", "audiences", "clients[0]"),
    ],
)
def test_an_unknown_key_gets_the_closest_known_one(typo: str, suggested: str, where: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_settings(VALID + typo + "\n")
    assert where in str(error.value)
    assert f"did you mean `{suggested}`" in str(error.value)
    with pytest.raises(ConfigError) as section:
        parse_settings(VALID.replace("[upstream]", "[upstream]\ntimeout_secs = 5"))
    assert "did you mean `timeout_seconds`" in str(section.value)


def test_a_pasted_client_key_is_recognised_and_not_repeated() -> None:
    pasted = "bk_" + "Q" * 43
    with pytest.raises(ConfigError) as error:
        parse_settings(VALID.replace(KEY_HASH, pasted))
    assert "clients[0].key_sha256: this is a client key, not its SHA-256" in str(error.value)
    assert pasted not in str(error.value)


def test_an_auditor_may_have_roles_and_no_audiences() -> None:
    auditor_only = (
        VALID
        + '''
[[clients]]
id = "auditor"
key_sha256 = "'''
        + "b" * 64
        + """"
roles = ["auditor"]
"""
    )
    settings = parse_settings(auditor_only)
    assert settings.clients[1].audiences == []
    with pytest.raises(ConfigError) as error:
        parse_settings(auditor_only.replace('roles = ["auditor"]', ""))
    assert "clients[1].audiences" in str(error.value)


@pytest.mark.parametrize(
    ("before", "after", "field"),
    [
        ('id = "billing-service"', 'id = "billing-service\\n"', "clients[0].id"),
        (f'key_sha256 = "{KEY_HASH}"', f'key_sha256 = "{KEY_HASH}\\n"', "clients[0].key_sha256"),
        ('permissions = ["read:responses"]', 'permissions = ["read:responses\\n"]', "permissions"),
    ],
)
def test_config_patterns_refuse_a_trailing_newline(before: str, after: str, field: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_settings(VALID.replace(before, after))
    assert field in str(error.value)


def _refusal(path: Path) -> str:
    from broker.config import load_settings

    with pytest.raises(ConfigError) as refused:
        load_settings(path)
    return str(refused.value)


def test_a_settings_path_that_is_not_a_small_regular_file_is_refused_without_reading_it(
    tmp_path: Path,
) -> None:
    import os

    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    # Opening a FIFO for reading waits for a writer: this returned only once it did not.
    assert _refusal(fifo) == f"{fifo}: is not a regular file"
    assert _refusal(tmp_path) == f"{tmp_path}: is not a regular file"
    assert _refusal(Path("/dev/zero")) == "/dev/zero: is not a regular file"
    huge = tmp_path / "huge.toml"
    with huge.open("wb") as handle:
        handle.truncate(16 * 1024 * 1024 + 1)
    assert _refusal(huge) == f"{huge}: is larger than 16777216 bytes"


def test_settings_nested_too_deeply_are_a_config_error(tmp_path: Path) -> None:
    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert _refusal(deep).endswith("arrays or tables nested too deeply")
    result = _broker("check-config", str(deep))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_a_secret_file_that_is_not_a_small_regular_file_is_refused(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "key"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as refused:
        ApiKeySource(env=None, file=str(fifo), check_seconds=1.0)
    assert str(refused.value) == f"upstream.api_key_file: {fifo} cannot be read"


def test_trusted_proxies_take_addresses_and_networks_of_either_family() -> None:
    document = VALID.replace(
        "[upstream]",
        '[server]\ntrusted_proxies = ["127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8"]\n[upstream]',
        1,
    )
    assert parse_settings(document).server.trusted_proxies == [
        "127.0.0.1",
        "10.0.0.0/8",
        "::1",
        "fd00::/8",
    ]


def _origin_refused(written: str) -> str:
    """The configuration error for a client whose one CORS origin is ``written``."""
    document = VALID.replace("permissions = [", f'cors_origins = ["{written}"]\npermissions = [', 1)
    with pytest.raises(ConfigError) as refused:
        parse_settings(document)
    return str(refused.value)


@pytest.mark.parametrize(
    ("written", "sent"),
    [
        ("https://APP.example.com", "https://app.example.com"),
        ("https://app.example.com:443", "https://app.example.com"),
        ("http://app.example.com:80", "http://app.example.com"),
        ("https://[::1]:443", "https://[::1]"),
        ("https://app.example.com:08443", "https://app.example.com:8443"),
        ("https://[0:0:0:0:0:0:0:1]", "https://[::1]"),
        ("https://[FD00::1]:8443", "https://[fd00::1]:8443"),
    ],
)
def test_a_cors_origin_no_browser_sends_names_the_one_it_does(written: str, sent: str) -> None:
    # Compared as written with the Origin header, it never matched: every page got 403.
    assert _origin_refused(written) == (
        f"clients[0].cors_origins[0]: write it as browsers send it, {sent} "
        "(the host in lower case, no default port)"
    )


@pytest.mark.parametrize(
    ("written", "why"),
    [
        ("http://app.example.com:99999", "the port must be a number from 1 to 65535"),
        ("http://app.example.com:0", "the port must be a number from 1 to 65535"),
        ("http://app.example.com:", "the port must be a number from 1 to 65535"),
        ("http://app.example.com:000000080", "the port must be a number from 1 to 65535"),
        ("https://:8443", "the host must be a name, an IPv4 address or an [IPv6] address"),
        ("https://a:b:8443", "the host must be a name, an IPv4 address or an [IPv6] address"),
        ("https://[::1", "the host must be a name, an IPv4 address or an [IPv6] address"),
        ("https://[app.example.com]", "[...] must hold an IPv6 address"),
        ("https://127.1", "an IPv4 address is four decimal numbers, a.b.c.d"),
        ("https://10.0.0.256", "an IPv4 address is four decimal numbers, a.b.c.d"),
        ("https://010.0.0.1", "an IPv4 address is four decimal numbers, a.b.c.d"),
    ],
)
def test_a_cors_origin_no_page_can_have_is_refused_saying_why(written: str, why: str) -> None:
    # Accepted before, and compared as written with the Origin header: it never matched, so
    # the mistake showed only as every page's 403 origin_not_allowed.
    assert _origin_refused(written) == f"clients[0].cors_origins[0]: no browser sends it: {why}"


@pytest.mark.parametrize(
    "origin",
    [
        "http://app.example.com:8080",
        "https://app.example.com",
        "https://[::1]:8443",
        "https://app.example.com.",
        "http://127.0.0.1:5173",
        "https://app-2.example.com:65535",
        "https://[fd00::1]",
    ],
)
def test_a_cors_origin_as_browsers_send_it_loads(origin: str) -> None:
    document = VALID.replace("permissions = [", f'cors_origins = ["{origin}"]\npermissions = [', 1)
    assert parse_settings(document).clients[0].cors_origins == [origin]


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (
            (f'key_sha256 = "{KEY_HASH}"', 'key_sha256 = "abc"'),
            "clients[0].key_sha256: must be 64 lower-case hexadecimal digits",
        ),
        (
            ("permissions = [", 'cors_origins = ["https://app.example.com/"]\npermissions = ['),
            "clients[0].cors_origins[0]: must be a web origin, http(s)://host[:port] and nothing",
        ),
        (
            ('id = "billing-service"', 'id = "-billing"'),
            "clients[0].id: must be 1 to 128 letters, digits or . _ : @ -",
        ),
    ],
)
def test_a_value_that_breaks_a_pattern_is_told_the_rule_not_the_regex(
    change: tuple[str, str], said: str
) -> None:
    old, new = change
    with pytest.raises(ConfigError) as refused:
        parse_settings(VALID.replace(old, new, 1))
    assert str(refused.value).startswith(said), str(refused.value)
    assert "regex" not in str(refused.value)


def _issuer(issuer: str, jwks_url: str | None = None) -> str:
    jwks = f'jwks_url = "{jwks_url}"\n' if jwks_url else ""
    return (
        f'\n[[issuers]]\nid = "idp"\nissuer = "{issuer}"\n{jwks}audience = "broker"\n'
        'audiences = ["https://billing.example.com"]\nsubjects = "self"\n'
    )


@pytest.mark.parametrize(
    ("base_url", "issuer", "said"),
    [
        ("http://mka1.internal", "", ["upstream.base_url is http://"]),
        ("http://127.0.0.1:8090", "", []),
        ("https://apigw.mka1.com", "", []),
        ("https://apigw.mka1.com", _issuer("http://sso.example.com"), ["issuers[0].issuer is"]),
        (
            "https://apigw.mka1.com",
            _issuer("http://sso.example.com", "https://sso.example.com/keys"),
            [],
        ),
        (
            "https://apigw.mka1.com",
            _issuer("https://sso.example.com", "http://keys.example.com/jwks"),
            ["issuers[0].jwks_url is http://"],
        ),
        ("https://apigw.mka1.com", _issuer("http://localhost:8000"), []),
    ],
)
def test_what_would_cross_a_network_in_clear_is_warned_of(
    base_url: str, issuer: str, said: list[str]
) -> None:
    # Warned of, not refused: behind a mesh sidecar that originates TLS, it is how it is done.
    document = VALID.replace("[upstream]", f'[upstream]\nbase_url = "{base_url}"', 1) + issuer
    warnings = cleartext_warnings(parse_settings(document))
    assert [w[: len(s)] for w, s in zip(warnings, said, strict=True)] == said


def test_check_config_prints_the_warnings_and_still_exits_0(tmp_path: Path) -> None:
    settings = tmp_path / "broker.toml"
    settings.write_text(
        VALID.replace("[upstream]", '[upstream]\nbase_url = "http://mka1.internal"')
    )
    result = _broker("check-config", str(settings), env={"MKA1_API_KEY": "mka1_x"})
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("broker: warning: upstream.base_url is http:// to a host")
    assert "in clear" in result.stderr


@pytest.mark.parametrize(
    ("audit", "level", "warned"),
    [
        ('signing_key_file = "k.pem"', "warning", True),
        ('signing_key_env = "AUDIT_KEY"', "error", True),
        ('signing_key_file = "k.pem"', "info", False),
        ('signing_key_file = "k.pem"', "debug", False),
        ("", "warning", False),  # nothing signed: no heads to log
    ],
)
def test_a_log_level_that_drops_the_trails_heads_is_warned_of(
    audit: str, level: str, warned: bool
) -> None:
    document = VALID + f'\n[audit]\n{audit}\n\n[logging]\nlevel = "{level}"\n'
    warnings = unanchored_warnings(parse_settings(document))
    assert bool(warnings) is warned
    if warned:
        assert warnings[0].startswith(f'logging.level = "{level}" drops the audit checkpoints')
        assert "--anchors" in warnings[0]


def test_a_config_without_any_caller_is_warned_of() -> None:
    assert callerless_warnings(parse_settings(VALID)) == []
    without = VALID[: VALID.index("[[clients]]")]
    (warning,) = callerless_warnings(parse_settings(without))
    assert warning.startswith("no callers are configured (clients, issuers and proxies are all")
    assert "refused 401" in warning
    issuer_only = without + (
        '\n[[issuers]]\nid = "sso"\nissuer = "https://sso.example.com"\n'
        'audience = "mka1-token-broker"\naudiences = ["https://billing.example.com"]\n'
    )
    assert callerless_warnings(parse_settings(issuer_only)) == []


def test_check_config_says_when_the_trails_heads_would_not_be_logged(tmp_path: Path) -> None:
    settings = tmp_path / "broker.toml"
    settings.write_text(
        VALID + '\n[audit]\nsigning_key_file = "k.pem"\n\n[logging]\nlevel = "warning"\n'
    )
    result = _broker("check-config", str(settings), "--skip-secrets")
    assert result.returncode == 0, result.stderr
    assert 'broker: warning: logging.level = "warning" drops the audit' in result.stderr


@pytest.mark.parametrize("backend", ['backend = "sqlite"', 'backend = "none"', ""])
def test_pruning_shipped_files_needs_a_postgresql_store(backend: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_settings(VALID + f"\n[audit.store]\n{backend}\nprune_shipped_files = true\n")
    assert str(caught.value).startswith("audit.store.prune_shipped_files: only with")
    settings = parse_settings(
        VALID + '\n[audit.store]\nbackend = "postgresql"\nurl_env = "AUDIT_URL"\n'
        "prune_shipped_files = true\n"
    )
    assert settings.audit.store.prune_shipped_files
