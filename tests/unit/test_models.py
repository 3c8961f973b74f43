"""The strict decoder on its own: no coercion, unknown fields refused, messages name fields."""

from __future__ import annotations

import json
import re

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.models import InvalidRequest, decode_token_request


def _as_sent(body: bytes) -> dict[str, object]:
    """What the decoder kept, by the body's own names: only the fields the body gave."""
    request = decode_token_request(body)
    return {
        name: value
        for name, value in msgspec.structs.asdict(request).items()
        if value is not msgspec.UNSET and value is not None
    }


def _names(members: dict[str, object]) -> dict[str, object]:
    return {"_".join(_WORDS.findall(name)).lower(): value for name, value in members.items()}


_WORDS = re.compile(r"[a-z]+|[A-Z][a-z]*")


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


def test_an_unknown_field_named_with_the_empty_string_is_named_so() -> None:
    # Not an empty field name, which reads as no name at all.
    ((field, message),) = _errors(b'{"audience":"https://a.example","":1}')
    assert field == '""'
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


_AUDIENCE = '"audience": "https://api.example.com:8443/v1"'


@pytest.mark.parametrize(
    ("body", "field"),
    [
        # The end user two ways: a proxy reading the first would see another user.
        (
            f'{{{_AUDIENCE}, "externalUserId": "alice", "externalUserId": "admin"}}',
            "externalUserId",
        ),
        (f"{{{_AUDIENCE}, {_AUDIENCE}}}", "audience"),
        (f'{{{_AUDIENCE}, "expiresIn": 300, "expiresIn": 2592000}}', "expiresIn"),
        (f'{{{_AUDIENCE}, "permissions": ["a:b"], "permissions": []}}', "permissions"),
        # Whitespace before the colon, and a name spelled with an escape.
        (f'{{{_AUDIENCE}, "externalUserId" : "a", "externalUserId"\n:"b"}}', "externalUserId"),
        (f'{{{_AUDIENCE}, "externalUserId": "a", "external\\u0055serId": "b"}}', "externalUserId"),
        # The dropped value has no colon, the kept one several.
        (f'{{"externalUserId": "a", "externalUserId": "x:y:z", {_AUDIENCE}}}', "externalUserId"),
    ],
)
def test_a_field_given_twice_is_refused_by_name(body: str, field: str) -> None:
    assert _errors(body.encode()) == [(field, "is given more than once; send each field once")]


@pytest.mark.parametrize(
    "body",
    [
        f'{{{_AUDIENCE}, "externalUserId": "urn:user:42", "permissions": ["read:a", "w:b:c"]}}',
        # Colons spelled as escapes, and escaped quotes before a colon, inside values.
        f'{{{_AUDIENCE}, "externalUserId": "a\\u003ab\\":", "expiresIn": 300}}',
        '{"audience" :"https://api.example.com", "permissions" : [ "x\\\\:" ] }',
        f"{{{_AUDIENCE}}}",
    ],
)
def test_colons_inside_values_are_not_taken_for_repeated_fields(body: str) -> None:
    assert _as_sent(body.encode()) == _names(json.loads(body))


_PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=20)
_PERMISSION = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20
)


@st.composite
def _members(draw: st.DrawFn) -> list[tuple[str, object]]:
    members: list[tuple[str, object]] = [("audience", "https://api.example.com:8443/x")]
    user = draw(_PRINTABLE.filter(lambda text: text != "*"))
    members.append(("externalUserId", user))
    if draw(st.booleans()):
        members.append(("permissions", draw(st.lists(_PERMISSION, max_size=3, unique=True))))
    if draw(st.booleans()):
        members.append(("expiresIn", 900))
    return draw(st.permutations(members))


def _encode(members: list[tuple[str, object]], space: str, ascii_only: bool) -> bytes:
    parts = [
        json.dumps(name, ensure_ascii=ascii_only) + space + ":" + space + json.dumps(value)
        for name, value in members
    ]
    return ("{" + ("," + space).join(parts) + "}").encode()


@given(_members(), st.sampled_from(["", " ", "\n\t "]), st.booleans())
def test_a_body_without_repeats_always_decodes(
    members: list[tuple[str, object]], space: str, ascii_only: bool
) -> None:
    assert _as_sent(_encode(members, space, ascii_only)) == _names(dict(members))


@given(_members(), st.sampled_from(["", " ", "\n\t "]), st.data())
def test_any_repeated_field_is_found(
    members: list[tuple[str, object]], space: str, data: st.DataObject
) -> None:
    name, value = data.draw(st.sampled_from(members))
    again = data.draw(st.sampled_from([value, "https://a.example", "x:y", "z"]))
    if name == "expiresIn":
        again = 300
    if name == "permissions":
        again = ["q:r"]
    members.insert(data.draw(st.integers(0, len(members))), (name, again))
    with pytest.raises(InvalidRequest) as caught:
        decode_token_request(_encode(members, space, True))
    [error] = caught.value.errors
    assert (error.field, error.message) == (name, "is given more than once; send each field once")
