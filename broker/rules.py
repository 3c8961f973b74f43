"""The MKA1 exchange's own limits, and the checks the broker applies before any call."""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import urlsplit

MIN_EXPIRES_IN = 300
MAX_EXPIRES_IN = 2_592_000
EXTERNAL_USER_ID_MAX = 150
AUDIENCE_MAX = 2048
PERMISSIONS_MAX = 64
MAX_BODY = 16 * 1024

# The same rules as patterns, so the OpenAPI schema promises exactly what is enforced.
# Any printable ASCII, but not the lone wildcard (no lookahead: fuzzers must generate it).
EXTERNAL_USER_ID_PATTERN = r"^([\x20-\x29\x2b-\x7e]|[\x20-\x7e]{2,})$"
_PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
# http(s), a host (a name or a bracketed IPv6 literal; no "@", so no user-info), an
# optional port, then printable ASCII except "#" (no fragment) and spaces.
AUDIENCE_PATTERN = (
    r"^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!$&'()*+,;=-]+)"
    rf"(:{_PORT})?([/?][!-\x22\x24-~]*)?$"
)
_AUDIENCE = re.compile(AUDIENCE_PATTERN)

PERMISSION_PATTERN = r"^[\x21-\x7e]{1,128}$"


def enforced(pattern: str) -> str:
    """A documented pattern (ECMA-262, as JSON Schema reads it) as Python must enforce it:
    Python's ``$`` also matches before a trailing newline (``"read:responses\\n"`` would
    pass); ``\\Z`` matches only at the very end."""
    assert pattern.endswith("$")
    return pattern[:-1] + r"\Z"


EXPIRES_IN_RULE = f"must be a JSON integer from {MIN_EXPIRES_IN} to {MAX_EXPIRES_IN}"
EXTERNAL_USER_ID_RULE = (
    f"must be 1 to {EXTERNAL_USER_ID_MAX} printable ASCII characters (0x20 to 0x7E), not '*'"
)
AUDIENCE_RULE = (
    f"must be an absolute http or https URL with a host, without user-info or fragment, "
    f"at most {AUDIENCE_MAX} characters"
)
PERMISSIONS_RULE = (
    f"must be an array of at most {PERMISSIONS_MAX} distinct strings, "
    "each 1 to 128 printable ASCII characters without spaces"
)


def is_printable_ascii(value: str) -> bool:
    """Every character in 0x20..0x7E. For ASCII, ``isprintable`` excludes exactly the
    controls (0x00..0x1F, 0x7F): the same set, checked in C rather than per character."""
    return value.isascii() and value.isprintable()


def external_user_id_problem(value: str) -> str | None:
    """Why ``value`` cannot be an MKA1 ``externalUserId``, or None if it can."""
    if not 1 <= len(value) <= EXTERNAL_USER_ID_MAX:
        return f"has {len(value)} characters"
    if not is_printable_ascii(value):
        return "contains a character outside 0x20 to 0x7E"
    if value == "*":
        return "is the wildcard '*'"
    return None


@lru_cache(maxsize=4096)
def audience_problem(value: str) -> str | None:
    """Why ``value`` cannot be a token audience, or None if it can."""
    if len(value) > AUDIENCE_MAX:
        return f"is longer than {AUDIENCE_MAX} characters"
    if not value.isascii() or not value.isprintable() or " " in value:
        return "contains a character not allowed in a URL"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return "is not a valid URL"
    del port
    if parts.scheme not in ("http", "https"):
        return "must use the http or https scheme"
    if not parts.hostname:
        return "has no host"
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "must not contain user-info"
    if parts.fragment or "#" in value:
        return "must not contain a fragment"
    if _AUDIENCE.fullmatch(value) is None:
        return "is not a valid URL"
    return None


def is_json_media_type(content_type: str | None) -> bool:
    """Whether a Content-Type names JSON: ``application/json``, in any case, with or without
    parameters (RFC 9110 8.3.1: type and subtype are case-insensitive)."""
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() == "application/json"
