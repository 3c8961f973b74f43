"""The checks applied before any call: whether a body can be read as declared, and why a
value cannot be an audience."""

from __future__ import annotations

import pytest

from broker.rules import (
    CREDENTIAL_PROBLEM,
    audience_problem,
    external_user_id_problem,
    json_body_problem,
    looks_like_credential,
)


@pytest.mark.parametrize(
    ("content_type", "content_encoding"),
    [
        ("application/json", None),
        ("Application/JSON", None),
        ("application/json; charset=utf-8", None),
        ('application/json ; CHARSET="UTF-8"', None),
        ("application/json;charset=utf-8;foo=bar", None),
        ("application/json", ""),
        ("application/json", "identity"),
        ("application/json", " Identity "),
    ],
)
def test_json_in_utf_8_as_sent_is_readable(content_type: str, content_encoding: str | None) -> None:
    assert json_body_problem(content_type, content_encoding) is None


@pytest.mark.parametrize(
    ("content_type", "content_encoding", "code", "header"),
    [
        (None, None, "unsupported_media_type", "Content-Type"),
        ("", None, "unsupported_media_type", "Content-Type"),
        ("text/plain", None, "unsupported_media_type", "Content-Type"),
        ("application/jsonx", None, "unsupported_media_type", "Content-Type"),
        ("application/problem+json", None, "unsupported_media_type", "Content-Type"),
        ("application/json; charset=latin-1", None, "unsupported_media_type", "Content-Type"),
        ("application/json; charset=utf8", None, "unsupported_media_type", "Content-Type"),
        ("application/json; charset=", None, "unsupported_media_type", "Content-Type"),
        ("application/json", "gzip", "unsupported_content_encoding", "Content-Encoding"),
        ("application/json", "identity, br", "unsupported_content_encoding", "Content-Encoding"),
        ("application/json", "GZIP", "unsupported_content_encoding", "Content-Encoding"),
        # A coding is refused before the type is looked at: both are wrong, one answer.
        ("text/plain", "deflate", "unsupported_content_encoding", "Content-Encoding"),
    ],
)
def test_anything_else_is_named_with_its_header(
    content_type: str | None, content_encoding: str | None, code: str, header: str
) -> None:
    problem = json_body_problem(content_type, content_encoding)
    assert problem is not None
    assert (problem.code, problem.header) == (code, header)
    assert problem.rule.startswith("must ")
    # Neither header's value is echoed back.
    for sent in (content_type, content_encoding):
        if sent and sent not in ("application/json", "text/plain"):
            assert sent.lower() not in (problem.detail + problem.rule).lower()


@pytest.mark.parametrize(
    "text",
    [
        "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJl",
        "https://api.example.com/?t=eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1In0.",
        "bk_" + "A" * 43,
        "key=bk_" + "-" * 43 + "&x",
    ],
)
def test_a_jwt_or_a_client_key_is_known_by_its_shape(text: str) -> None:
    assert looks_like_credential(text)
    assert external_user_id_problem(text) == CREDENTIAL_PROBLEM


def test_every_key_broker_client_key_makes_is_known_by_its_shape() -> None:
    from broker.cli import new_client_key

    # Random bytes: some keys start or end with "-" or "_", which the shape must still take.
    for _ in range(500):
        key, _digest = new_client_key()
        assert looks_like_credential(key)
        assert looks_like_credential(f"end user {key}.")


@pytest.mark.parametrize(
    "text",
    [
        "user_123",
        "eyJoe.smith.x",  # starts like a JWT, is no JSON
        "eyJane.doe@example.com",
        "bk_customer_000123456789",  # a prefix, not a key's 43 characters
        "bk_" + "A" * 44,
        "xbk_" + "A" * 43,
        "https://api.example.com/tokens",
    ],
)
def test_what_merely_starts_like_one_is_not_refused(text: str) -> None:
    assert not looks_like_credential(text)
    assert external_user_id_problem(text) is None


@pytest.mark.parametrize(
    ("audience", "problem"),
    [
        ("https://api.example.com", None),
        ("http://127.0.0.1:8080/v1/x?y=z", None),
        ("https://" + "a" * 2041, "is longer than 2048 characters"),
        ("https://api.example.com/a b", "contains a character not allowed in a URL"),
        ("https://api.exämple.com", "contains a character not allowed in a URL"),
        ("https://api.example.com:99999", "is not a valid URL"),
        ("ftp://api.example.com", "must use the http or https scheme"),
        ("api.example.com", "must use the http or https scheme"),
        # The token's aud, compared exactly: one spelling of a scheme.
        ("HTTPS://api.example.com", "must write its scheme in lower case (http or https)"),
        ("Http://api.example.com", "must write its scheme in lower case (http or https)"),
        ("https:///path", "has no host"),
        ("https://user:pw@api.example.com", "must not contain user-info"),
        ("https://api.example.com/#top", "must not contain a fragment"),
    ],
)
def test_an_audience_is_an_http_url_and_a_refusal_says_what_is_wrong(
    audience: str, problem: str | None
) -> None:
    assert audience_problem(audience) == problem
