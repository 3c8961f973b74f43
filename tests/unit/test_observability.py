"""Access lines in-process: the JSON an operator's collector reads, field by field and in
order, with a JWT a client put in the path or method redacted."""

from __future__ import annotations

import json

import pytest
import structlog

from broker.observability import (
    MAX_LOGGED_PATH,
    access_line,
    configure_logging,
    set_level,
    url_passwords,
)

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


def _lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().out.splitlines() if line]


def test_an_access_line_carries_its_fields_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info")
    access_line("POST", "/tokens", 200, None, 1.25, "rid-1", "billing-svc")
    access_line("GET", "/nope", 404, "not_found", 0.5, "rid-2", None)
    first, second = (json.loads(line) for line in _lines(capsys))
    assert list(first) == [
        "method",
        "path",
        "status",
        "code",
        "duration_ms",
        "request_id",
        "caller",
        "component",
        "event",
        "level",
        "timestamp",
    ]
    assert first | {"timestamp": None} == {
        "method": "POST",
        "path": "/tokens",
        "status": 200,
        "code": None,
        "duration_ms": 1.25,
        "request_id": "rid-1",
        "caller": "billing-svc",
        "component": "broker",
        "event": "request",
        "level": "info",
        "timestamp": None,
    }
    assert first["timestamp"].endswith("Z")
    # No caller known: no caller field, rather than a null one.
    assert "caller" not in second
    assert (second["code"], second["status"]) == ("not_found", 404)


def test_a_jwt_in_what_the_client_chose_is_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info")
    access_line(f"X{JWT}", f"/tokens/{JWT}", 404, "not_found", 0.1, "rid", None)
    (line,) = _lines(capsys)
    assert JWT not in line
    assert json.loads(line)["path"] == "/tokens/[redacted-jwt]"


def test_a_long_path_is_cut_after_its_jwts_are_redacted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info")
    # A JWT across the cut: redacted whole, not cut into a prefix that still shows.
    path = "/" + "a" * (MAX_LOGGED_PATH - 20) + JWT + "/" + "b" * 30_000
    access_line("GET", path, 404, "not_found", 0.1, "rid", None)
    (line,) = _lines(capsys)
    logged = json.loads(line)["path"]
    assert "eyJ" not in logged
    redacted = len(path) - len(JWT) + len("[redacted-jwt]")
    assert logged.endswith(f"...({redacted} characters)")
    assert len(logged) <= MAX_LOGGED_PATH + 30
    assert len(line) < 1024


def test_no_access_line_above_info(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("warning")
    try:
        access_line("POST", "/tokens", 200, None, 1.0, "rid", None)
    finally:
        set_level("info")
    assert _lines(capsys) == []


def test_a_secret_the_process_holds_is_redacted_from_any_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # What psycopg_pool logged for a malformed audit store URL: libpq quotes the URL,
    # password and all (and urlsplit refuses that URL, so its password was not found).
    import logging

    from broker.secrets import Secret

    url = "postgresql://auditor:s3cret%2Fpw@[bad/db"
    Secret(url)
    configure_logging("info")
    said = f"error connecting in 'audit-store': ... in URI: \"{url}\""
    logging.getLogger("psycopg.pool").warning(said)
    structlog.get_logger("broker.test").warning("failed", error=f"password s3cret/pw for {url}")
    lines = _lines(capsys)
    assert len(lines) == 2
    for line in lines:
        assert "s3cret" not in line
        assert "[redacted]" in line


@pytest.mark.parametrize(
    ("url", "passwords"),
    [
        ("postgresql://u:pw%40x@host/db", ("pw%40x", "pw@x")),
        ("postgresql://u:pa@ss@[bad/db", ("pa@ss", "pa@ss")),  # up to the last "@"
        ("redis://:secret@valkey:6379/0", ("secret", "secret")),
        ("postgresql://u@host/db", ()),
        ("not a url", ()),
    ],
)
def test_the_password_of_a_url_is_found_even_when_the_url_is_malformed(
    url: str, passwords: tuple[str, ...]
) -> None:
    assert url_passwords(url) == passwords


def test_a_client_key_or_a_held_secret_in_a_path_is_redacted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A client's base URL joined wrongly puts its key in the path; any path reaches the 404
    # and its access line. Only JWTs were redacted there.
    from broker.cli import new_client_key
    from broker.secrets import Secret

    key, _ = new_client_key()
    api_key = Secret("mka1_live_0123456789abcdef").reveal()
    configure_logging("info")
    access_line("GET", f"/v1/{key}/tokens", 404, "not_found", 0.1, "rid", None)
    access_line("GET", f"/{api_key}", 404, "not_found", 0.1, "rid", None)
    first, second = (json.loads(line) for line in _lines(capsys))
    assert first["path"] == "/v1/[redacted-key]/tokens"
    assert second["path"] == "/[redacted]"
