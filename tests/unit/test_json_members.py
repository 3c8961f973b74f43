"""Member counts and repeated names of valid JSON documents."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.json_members import member_count, repeated_name


@pytest.mark.parametrize(
    ("document", "count"),
    [
        (b"{}", 0),
        (b"[]", 0),
        (b'"a:b"', 0),
        (b'{"a": 1}', 1),
        (b'{"a": {"b": {"c": [1, {"d": 2}]}}}', 4),
        (b'{"a:b": "c:d", "e": ":"}', 2),
        (b'{"a\\"": 1, "b\\\\": ":"}', 2),  # an escaped quote and a final escaped backslash
        (b'{"a": 1, "a": 2}', 2),
        (b'[{"a": 1}, {"a": 1}]', 2),
    ],
)
def test_members_are_counted_with_colons_inside_strings_left_out(
    document: bytes, count: int
) -> None:
    assert member_count(document) == count


@pytest.mark.parametrize(
    ("document", "name"),
    [
        (b'{"a": 1, "b": 2}', None),
        (b'{"a": 1, "a": 2}', "a"),
        (b'{"a": 1, "b": 2, "b": 3, "a": 4}', "b"),
        # The same name however it is spelled: msgspec reads both as one.
        (b'{"externalUserId": "x", "\\u0065xternalUserId": "y"}', "externalUserId"),
        (b'{"outer": {"a": 1, "a": 2}}', "a"),
        (b'[{"a": 1}, {"a": 2}]', None),
        (b'{"a": {"a": 1}}', None),
        # Past the stdlib's integer digit limit: valid, but its repeat goes unnamed.
        (b'{"a": 1, "a": ' + b"9" * 5000 + b"}", None),
    ],
)
def test_the_first_repeated_name_is_found(document: bytes, name: str | None) -> None:
    assert repeated_name(document) == name


_names = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8)


@given(st.lists(st.tuples(_names, st.one_of(st.integers(), _names)), max_size=12))
def test_a_repeat_is_named_exactly_when_the_members_repeat_a_name(
    members: list[tuple[str, int | str]],
) -> None:
    document = (
        "{" + ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in members) + "}"
    ).encode()
    names = [name for name, _ in members]
    assert member_count(document) == len(members)
    repeated = [name for index, name in enumerate(names) if name in names[:index]]
    assert repeated_name(document) == (repeated[0] if repeated else None)
