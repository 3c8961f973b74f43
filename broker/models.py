"""Wire types of the broker's HTTP API, camelCase like the upstream, and their strict decoder."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec

from broker.json_members import member_count, repeated_name
from broker.rules import (
    AUDIENCE_MAX,
    AUDIENCE_PATTERN,
    AUDIENCE_RULE,
    CREDENTIAL_PROBLEM,
    EXPIRES_IN_RULE,
    EXTERNAL_USER_ID_MAX,
    EXTERNAL_USER_ID_PATTERN,
    EXTERNAL_USER_ID_RULE,
    MAX_EXPIRES_IN,
    MIN_EXPIRES_IN,
    PERMISSION_PATTERN,
    PERMISSIONS_MAX,
    PERMISSIONS_RULE,
    audience_problem,
    enforced,
    external_user_id_problem,
    looks_like_credential,
)

UNSET = msgspec.UNSET
UnsetType = msgspec.UnsetType


class TokenRequest(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, rename="camel", kw_only=True
):
    """Body of ``POST /tokens``."""

    audience: Annotated[
        str,
        msgspec.Meta(
            max_length=AUDIENCE_MAX,
            # Documented here, enforced by audience_problem, which explains a failure.
            extra_json_schema={"pattern": AUDIENCE_PATTERN},
            description="The URL of the service that will accept the token (its `aud`).",
            examples=["https://api.example.com"],
        ),
    ]
    external_user_id: (
        Annotated[
            str,
            msgspec.Meta(
                min_length=1,
                max_length=EXTERNAL_USER_ID_MAX,
                extra_json_schema={"pattern": EXTERNAL_USER_ID_PATTERN},
                description="The end user the token is for (its `sub`). May instead come "
                "from the `X-On-Behalf-Of` header.",
                examples=["user_123"],
            ),
        ]
        | UnsetType
    ) = UNSET
    expires_in: (
        Annotated[
            int,
            msgspec.Meta(
                ge=MIN_EXPIRES_IN,
                le=MAX_EXPIRES_IN,
                description="Requested lifetime in seconds; defaults to the caller's policy.",
                examples=[900],
            ),
        ]
        | UnsetType
    ) = UNSET
    permissions: (
        Annotated[
            list[
                Annotated[
                    str,
                    # Published as PERMISSION_PATTERN by api/openapi.py.
                    msgspec.Meta(pattern=enforced(PERMISSION_PATTERN)),
                ]
            ],
            msgspec.Meta(
                max_length=PERMISSIONS_MAX,
                extra_json_schema={"uniqueItems": True},
                description="Scopes to embed; must be a subset of the caller's allow-list.",
                examples=[["read:responses"]],
            ),
        ]
        | UnsetType
    ) = UNSET


class TokenResponse(msgspec.Struct, frozen=True, rename="camel", kw_only=True):
    """A minted (or reused) MKA1 token and what the caller needs to know about it."""

    token: str
    token_type: str
    expires_in: int
    expires_at: str
    refresh_at: str
    audience: str
    external_user_id: str
    permissions: list[str] | None
    token_id: str | None
    token_sha256: str


class FieldError(msgspec.Struct, frozen=True):
    field: str
    message: str


# Every status the broker answers with a problem document, and its title (RFC 9110 names).
PROBLEM_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}


# On a privileged route's answer: how many of the answering replica's own records the audit
# store did not hold yet (an auditor's page, an admin's change; `broker revoke` reads it).
STORE_BEHIND = "Audit-Store-Behind"

# On every answer, whoever gives it (the edge, or the connection layer's own refusals):
# no-store, for one may carry a token (RFC 6749 5.1), with Pragma for HTTP/1.0 caches; and
# nosniff, so that a browser never reads a JSON answer (or a problem naming a path as
# written) as anything else, whatever a caller put in it.
ON_EVERY_ANSWER: tuple[tuple[bytes, bytes], ...] = (
    (b"cache-control", b"no-store"),
    (b"pragma", b"no-cache"),
    (b"x-content-type-options", b"nosniff"),
)


def problem_type(code: str) -> str:
    return f"urn:mka1-token-broker:problem:{code}"


class Problem(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """RFC 9457 problem details, with a stable machine-readable ``code``."""

    type: str
    title: str
    status: int
    code: str
    detail: str | None = None
    instance: str | None = None
    request_id: str | None = msgspec.field(default=None, name="requestId")
    errors: list[FieldError] | None = None

    @classmethod
    def of(cls, status: int, code: str, detail: str | None, **fields: Any) -> Problem:
        """The document for ``code``: its type URI and its status's title filled in."""
        return cls(
            type=problem_type(code),
            title=PROBLEM_TITLES.get(status, "Error"),
            status=status,
            code=code,
            detail=detail,
            **fields,
        )


class InvalidRequest(Exception):
    """The request body broke a rule; each FieldError names the field and the rule."""

    def __init__(self, errors: list[FieldError], code: str = "invalid_request") -> None:
        super().__init__(code)
        self.errors = errors
        self.code = code


_RULES = {
    "audience": AUDIENCE_RULE,
    "externalUserId": EXTERNAL_USER_ID_RULE,
    "expiresIn": EXPIRES_IN_RULE,
    "permissions": PERMISSIONS_RULE,
}
_AT_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_UNKNOWN_FIELD = re.compile(r"^Object contains unknown field `(?P<name>.*)`$", re.DOTALL)
_MISSING_FIELD = re.compile(r"^Object missing required field `(?P<name>.*)`$")
_DECODER = msgspec.json.Decoder(TokenRequest)


def describe_invalid(error: msgspec.ValidationError, rules: Mapping[str, str]) -> FieldError:
    """msgspec's account of a body of the wrong shape, as the field it names and that
    field's rule (``rules``: each field's name as sent, and its rule)."""
    text = str(error)
    at = _AT_PATH.search(text)
    if at is None:
        if (unknown := _UNKNOWN_FIELD.match(text)) is not None:
            name = unknown.group("name")
            shown = name if len(name) <= 64 and name.isascii() and name.isprintable() else "…"
            shown = shown or '""'  # a member named with the empty string
            return FieldError(shown, f"unknown field; allowed fields are {', '.join(rules)}")
        if (missing := _MISSING_FIELD.match(text)) is not None:
            name = missing.group("name")
            return FieldError(name, f"is required; {rules.get(name, '')}".rstrip("; "))
        return FieldError("(body)", "must be a JSON object")
    path = at.group("path").removeprefix(".")
    top = re.split(r"[.\[]", path, maxsplit=1)[0]
    cause = text[: at.start()]
    rule = rules.get(top, "")
    problem = _what_went_wrong(cause)
    if rule and path != top:
        # An item of a list (permissions[2]): named as such, with the list's rule.
        return FieldError(path, f"{problem}; {rule}")
    return FieldError(path or "(body)", f"{rule} ({problem})" if rule else cause)


def _what_went_wrong(cause: str) -> str:
    if ", got " in cause:
        return "got " + cause.split(", got ", 1)[1].replace("`", "")
    if "matching regex" in cause:
        return "has a character outside the allowed range"
    if cause.startswith("Invalid enum value"):
        return "is not one of them"
    if "length" in cause:
        return "has a length outside the allowed range"
    return "is out of range"


def _repeats_a_name(body: bytes, request: TokenRequest) -> bool:
    """Whether the decoded body named a field twice (see json_members). Without escapes, a
    body's colons are its members' plus those of the string values kept, so counting them
    is exact and costs a fraction of a microsecond; a repeat adds a member's colon, and
    the colons of the value dropped only add more."""
    present, colons = 1, request.audience.count(":")
    if request.external_user_id is not UNSET:
        present, colons = present + 1, colons + request.external_user_id.count(":")
    if request.expires_in is not UNSET:
        present += 1
    if request.permissions is not UNSET:
        present += 1
        colons += sum(permission.count(":") for permission in request.permissions)
    if b"\\" in body:
        # An escape may spell a colon: count outside the strings instead.
        return member_count(body) != present
    return body.count(b":") - colons != present


def decode_token_request(body: bytes) -> TokenRequest:
    """Decode strictly: no coercion, no unknown fields, bounded nesting; then check meaning."""
    try:
        request = _DECODER.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidRequest([describe_invalid(exc, _RULES)]) from None
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise InvalidRequest(
            [FieldError("(body)", "is not valid JSON in UTF-8")], code="malformed_json"
        ) from None
    except RecursionError:
        raise InvalidRequest(
            [FieldError("(body)", "is nested too deeply")], code="malformed_json"
        ) from None

    if _repeats_a_name(body, request):
        # A name given twice: msgspec kept the last value, a proxy may have read the first.
        name = repeated_name(body)
        raise InvalidRequest(
            [
                FieldError(name, "is given more than once; send each field once")
                if name in _RULES
                else FieldError("(body)", "names a field more than once")
            ]
        )
    errors: list[FieldError] = []
    if (problem := audience_problem(request.audience)) is not None:
        errors.append(FieldError("audience", f"{AUDIENCE_RULE} ({problem})"))
    if request.external_user_id is not UNSET and (
        (problem := external_user_id_problem(request.external_user_id)) is not None
    ):
        errors.append(FieldError("externalUserId", f"{EXTERNAL_USER_ID_RULE} ({problem})"))
    if request.permissions is not UNSET and len(set(request.permissions)) != len(
        request.permissions
    ):
        errors.append(FieldError("permissions", f"{PERMISSIONS_RULE} (contains duplicates)"))
    if request.permissions is not UNSET and any(
        looks_like_credential(permission) for permission in request.permissions
    ):
        errors.append(FieldError("permissions", f"{PERMISSIONS_RULE} ({CREDENTIAL_PROBLEM})"))
    if errors:
        raise InvalidRequest(errors)
    return request
