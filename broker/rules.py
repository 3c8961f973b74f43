"""The MKA1 exchange's own limits, and the checks the broker applies before any call."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple
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


# Credentials by their shapes, for what must never hold one: a log line, and any value the
# audit trail keeps (a request's audience, end user and permissions, an auditor's filter, a
# bar's value and reason). A client key as `broker client-key` makes them ("bk_" and 43
# characters): the broker holds only their digests, so a key is known by its shape.
# Redaction errs wide (a line that loses a word loses little); refusal errs narrow, so that
# no end user or audience that merely starts like one is refused: a JWT's header and payload
# are both JSON objects ("eyJ" is the base64 of '{"'), and a client key is exactly 43
# characters after its prefix.
CLIENT_KEY_PREFIX = "bk_"
CLIENT_KEY_RANDOM_BYTES = 32
# secrets.token_urlsafe's length: base64url without padding, 4 characters per 3 bytes.
_CLIENT_KEY_CHARACTERS = -(-CLIENT_KEY_RANDOM_BYTES * 4 // 3)
JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")
CLIENT_KEY_SHAPE = re.compile(CLIENT_KEY_PREFIX + r"[A-Za-z0-9_-]{20,}")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")
_CLIENT_KEY = re.compile(
    rf"(?<![A-Za-z0-9_-]){CLIENT_KEY_PREFIX}[A-Za-z0-9_-]{{{_CLIENT_KEY_CHARACTERS}}}(?![A-Za-z0-9_-])"
)
CREDENTIAL_PROBLEM = "holds a token or a client key, which the audit trail must never keep"


def looks_like_credential(text: str) -> bool:
    """Whether ``text`` holds a JWT or a client key, by their shapes."""
    return ("eyJ" in text and _JWT.search(text) is not None) or (
        CLIENT_KEY_PREFIX in text and _CLIENT_KEY.search(text) is not None
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
    if looks_like_credential(value):
        return CREDENTIAL_PROBLEM
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
    if not value.startswith(parts.scheme):
        # urlsplit lowers the scheme; the audience is the token's aud, compared exactly.
        return "must write its scheme in lower case (http or https)"
    if not parts.hostname:
        return "has no host"
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        return "must not contain user-info"
    if parts.fragment or "#" in value:
        return "must not contain a fragment"
    if _AUDIENCE.fullmatch(value) is None:
        return "is not a valid URL"
    if looks_like_credential(value):
        return CREDENTIAL_PROBLEM
    return None


class BodyFormatProblem(NamedTuple):
    """Why a body cannot be read as declared: the refusal's code and detail, and the header
    at fault with its rule."""

    code: str
    detail: str
    header: str
    rule: str


_NOT_JSON = BodyFormatProblem(
    "unsupported_media_type",
    "the body must be application/json",
    "Content-Type",
    "must be application/json",
)
_NOT_UTF8 = BodyFormatProblem(
    "unsupported_media_type",
    "the body must be application/json in UTF-8",
    "Content-Type",
    "must name no charset or UTF-8: JSON is UTF-8",
)
_CODED = BodyFormatProblem(
    "unsupported_content_encoding",
    "the body must be sent without a content coding",
    "Content-Encoding",
    "must be absent or identity: the body is read as sent, never decompressed",
)


def json_body_problem(
    content_type: str | None, content_encoding: str | None
) -> BodyFormatProblem | None:
    """Why a body declared by these headers cannot be read as the JSON it claims to be, or
    None if it can.

    Type and subtype are case-insensitive (RFC 9110 8.3.1). JSON is UTF-8 (RFC 8259 8.1),
    so a body declared in another charset, or compressed, would be read as something other
    than its sender meant: it is refused (415, RFC 9110 15.5.16), not guessed at. Neither
    header's value is echoed back.
    """
    if content_encoding and any(
        coding.strip().lower() not in ("", "identity") for coding in content_encoding.split(",")
    ):
        return _CODED
    if content_type == "application/json":  # the common case, without parsing
        return None
    media_type, _, parameters = (content_type or "").partition(";")
    if media_type.strip().lower() != "application/json":
        return _NOT_JSON
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() != "utf-8":
            return _NOT_UTF8
    return None
