"""Refusals that need no HTTP: here, a body that cannot be read as declared."""

from __future__ import annotations

from broker.models import FieldError
from broker.refusals import STATUS_OF, unreadable_body


def test_a_readable_body_is_not_refused() -> None:
    assert unreadable_body({"content-type": "application/json"}) is None
    assert unreadable_body({"content-type": "application/json", "content-encoding": ""}) is None


def test_a_compressed_body_is_415_and_says_which_coding_would_do() -> None:
    refusal = unreadable_body({"content-type": "application/json", "content-encoding": "gzip"})
    assert refusal is not None
    assert STATUS_OF[refusal.code] == 415
    assert refusal.code == "unsupported_content_encoding"
    assert refusal.outcome == "rejected"
    assert refusal.headers == {"Accept-Encoding": "identity"}
    assert refusal.errors is not None
    assert [error.field for error in refusal.errors] == ["Content-Encoding"]


def test_a_body_in_another_charset_is_415_without_accept_encoding() -> None:
    refusal = unreadable_body({"content-type": "application/json; charset=iso-8859-1"})
    assert refusal is not None
    assert (STATUS_OF[refusal.code], refusal.code) == (415, "unsupported_media_type")
    assert refusal.headers == {}
    assert refusal.errors == [
        FieldError("Content-Type", "must name no charset or UTF-8: JSON is UTF-8")
    ]
