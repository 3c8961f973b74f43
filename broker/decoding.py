"""Decoding bytes that come from outside: request bodies, the exchange's answers, key sets,
audit files and store rows.

msgspec fails on such bytes in three ways, not one: ``msgspec.DecodeError`` (its
``ValidationError`` included) for malformed JSON, ``UnicodeDecodeError`` for a string that
is not UTF-8, and ``RecursionError`` past about a thousand levels of nesting, even inside a
field it skips. A caller that catches only the first turns the other two into a 500, a
traceback from ``broker audit verify``, or a shipper that stops. Here all three are
``msgspec.DecodeError``.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec

T = TypeVar("T")


def decode_untrusted(decoder: msgspec.json.Decoder[T], data: bytes) -> T:
    """``decoder.decode(data)``, failing only with msgspec.DecodeError (or its
    ValidationError, for well-formed JSON of the wrong shape)."""
    try:
        return decoder.decode(data)
    except RecursionError:
        raise msgspec.DecodeError("JSON nested too deeply") from None
    except UnicodeDecodeError:
        raise msgspec.DecodeError("a string that is not valid UTF-8") from None
