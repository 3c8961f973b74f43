"""The strict decoder on its own: no coercion, unknown fields refused, messages name fields."""

from __future__ import annotations

import pytest

from broker.models import InvalidRequest, decode_token_request


def _errors(body: bytes) -> list[tuple[str, str]]:
    with pytest.raises(InvalidRequest) as caught:
        decode_token_request(body)
    return [(error.field, error.message) for error in caught.value.errors]


def test_a_full_request_decodes() -> None:
    request = decode_token_request(
        b'{"audience":"https://a.example","externalUserId":"u","expiresIn":300,'
        b'"permissions":["read:x"]}'
    )
    assert (request.audience, request.external_user_id, request.expires_in) == (
        "https://a.example",
        "u",
        300,
    )
    assert request.permissions == ["read:x"]


@pytest.mark.parametrize("value", ['"300"', "300.0", "3e2", "true", "false", "null", "1e400"])
def test_expires_in_is_never_coerced(value: str) -> None:
    body = f'{{"audience":"https://a.example","expiresIn":{value}}}'.encode()
    ((field, message),) = _errors(body)
    assert field == "expiresIn"
    assert message.startswith("must be a JSON integer from 300 to 2592000")


def test_several_semantic_problems_are_reported_together() -> None:
    fields = [field for field, _ in _errors(b'{"audience":"ftp://x","externalUserId":"*"}')]
    assert fields == ["audience", "externalUserId"]


def test_unknown_field_names_are_not_echoed_when_odd() -> None:
    ((field, message),) = _errors(b'{"audience":"https://a.example","\\u0000evil":1}')
    assert field == "…"
    assert "unknown field" in message


def test_missing_audience() -> None:
    ((field, message),) = _errors(b'{"externalUserId":"u"}')
    assert field == "audience"
    assert message.startswith("is required")


def test_patterns_match_the_whole_value_not_before_a_trailing_newline() -> None:
    import pytest

    from broker.models import InvalidRequest, decode_token_request

    body = b'{"audience": "https://api.example.com", "permissions": ["read:responses\\n"]}'
    with pytest.raises(InvalidRequest) as invalid:
        decode_token_request(body)
    assert invalid.value.errors[0].field == "permissions[0]"
