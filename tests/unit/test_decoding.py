"""Decoding bytes from outside: every way msgspec fails on them is msgspec.DecodeError."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from broker.decoding import decode_untrusted

_ANY: msgspec.json.Decoder[Any] = msgspec.json.Decoder()


class _Shape(msgspec.Struct):
    token: str


@pytest.mark.parametrize(
    "data",
    [
        b"{not json",
        b'{"token": "\xff"}',  # msgspec alone raises UnicodeDecodeError
        b'{"\xfe\xff": 1}',
        b'{"x": "\xed\xa0\x80"}',  # a surrogate, encoded: not UTF-8
        b'{"x": ' + b"[" * 3000 + b"]" * 3000 + b"}",  # msgspec alone: RecursionError
    ],
)
def test_whatever_is_wrong_with_the_bytes_is_a_decode_error(data: bytes) -> None:
    for decoder in (_ANY, msgspec.json.Decoder(_Shape)):
        with pytest.raises(msgspec.DecodeError):
            decode_untrusted(decoder, data)


def test_the_wrong_shape_is_still_a_validation_error_and_good_bytes_decode() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_untrusted(msgspec.json.Decoder(_Shape), b'{"token": 5}')
    assert decode_untrusted(msgspec.json.Decoder(_Shape), b'{"token": "a.b.c"}').token == "a.b.c"
    assert decode_untrusted(_ANY, '{"x": "\u00e4"}'.encode()) == {"x": "\u00e4"}
