"""JSON objects that name a member twice.

RFC 8259 leaves a repeated name to each parser: msgspec, like most, keeps the last value,
while a proxy, a gateway's schema check or a client library in front of the broker may act
on the first. ``{"externalUserId": "alice", "externalUserId": "admin"}`` then means one end
user to them and another here, so request bodies that repeat a name are refused instead.

The check runs after a strict decode has succeeded, so the document is known to be valid
JSON: outside strings, a colon appears only between a member's name and its value.
"""

from __future__ import annotations

import json
import re
from typing import Any

# A JSON string, escapes included. Possessive: the document is valid JSON by now, so every
# string ends, and nothing here ever backtracks into one.
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"')


def member_count(document: bytes) -> int:
    """How many members the objects of a valid JSON document have, counting repeats."""
    return _STRING.sub(b"", document).count(b":")


def repeated_name(document: bytes) -> str | None:
    """The first member name that some object of a valid JSON document repeats, or None."""
    found: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for name, _ in items:
            if name in seen and not found:
                found.append(name)
            seen.add(name)
        return {}

    try:
        json.loads(document, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        # Valid for msgspec but not for the stdlib (an integer over its digit limit, say):
        # the repeat, if any, goes unnamed.
        return None
    return found[0] if found else None
