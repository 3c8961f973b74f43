"""Every way a token request ends without a token, as one exception type.

A ``Refusal`` names a stable ``code``; where the request is at fault, the fields and rules
(``errors``); how long to wait before retrying (``retry_after``); and, for the audit record,
the ``outcome`` and a ``reason`` that is never shown to the caller. Nothing here knows HTTP:
``broker/api/errors.py`` holds the one table from ``code`` to status, title and headers, used
by every route, the edge layer and the connection layer alike.

    Refusal                     outcome   examples of code
    ├─ the caller               denied    unauthenticated, too_many_auth_failures,
    │                                     origin_not_allowed, ambiguous_header
    ├─ the request's content    rejected  invalid_request, malformed_json,
    │                                     body_too_large, unsupported_media_type,
    │                                     unsupported_content_encoding
    ├─ the caller's policy      denied    audience_not_allowed, subject_not_allowed,
    │   and limits                        rate_limited, minting_not_allowed
    └─ the broker or upstream   failed    upstream_*, audit_unavailable, shutting_down
"""

from __future__ import annotations

from collections.abc import Mapping

from broker.audit.records import Outcome
from broker.models import FieldError
from broker.rules import json_body_problem


class Refusal(Exception):
    """A request that gets no token. ``quiet`` says that it needs no access line of its own
    (a throttled flood: it is counted in bulk)."""

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        outcome: Outcome,
        errors: list[FieldError] | None = None,
        retry_after: int | None = None,
        reason: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(code)
        self.code = code
        self.detail = detail
        self.outcome: Outcome = outcome
        self.errors = errors
        self.retry_after = retry_after
        self.reason = reason
        self.headers = headers or {}
        self.quiet = False


# Every code the broker answers with, and its HTTP status: the one table. Routes, the edge
# layer (CORS) and the router's 404/405 answer from it (through api/errors.py); the token
# service records these statuses in the audit trail.
STATUS_OF: dict[str, int] = {
    # the caller
    "unauthenticated": 401,
    "too_many_auth_failures": 429,
    "origin_not_allowed": 403,
    "ambiguous_header": 400,
    "not_auditor": 403,
    # the request's content
    "invalid_request": 400,
    "malformed_json": 400,
    "conflicting_external_user_id": 400,
    "body_too_large": 413,
    "body_incomplete": 400,
    "unsupported_media_type": 415,
    "unsupported_content_encoding": 415,
    "invalid_query": 400,
    "not_found": 404,
    "method_not_allowed": 405,
    # the caller's policy and limits
    "audience_not_allowed": 403,
    "subject_not_allowed": 403,
    "expires_in_too_long": 403,
    "permission_not_allowed": 403,
    "external_user_id_required": 403,
    "minting_not_allowed": 403,
    "rate_limited": 429,
    "revoked": 403,
    "not_admin": 403,
    # the kill switch's own bounds (POST /admin/revocations)
    "too_many_bars": 409,
    "too_many_revocation_changes": 409,
    # the broker or the upstream
    "upstream_rejected": 400,
    "upstream_credentials": 502,
    "upstream_ip_denied": 502,
    "upstream_refused": 502,
    "upstream_redirected": 502,
    "upstream_rate_limited": 503,
    "upstream_error": 502,
    "upstream_unreachable": 502,
    "upstream_malformed_response": 502,
    "upstream_token_mismatch": 502,
    "upstream_timeout": 504,
    "upstream_circuit_open": 503,
    "upstream_busy": 503,
    "audit_unavailable": 503,
    "audit_store_not_configured": 501,
    "audit_store_unavailable": 503,
    # The store answered with a row that is no record (edited by hand): not worth a retry.
    "audit_store_inconsistent": 502,
    "shared_state_unavailable": 503,
    "shutting_down": 503,
    "internal_error": 500,
}


def shutting_down(reason: str | None = None) -> Refusal:
    """A request still running when the shutdown grace ran out (the service records it,
    with ``reason``; the edge answers one that was not the token route's)."""
    return Refusal(
        "shutting_down",
        "the broker stopped before this request finished; retry",
        outcome="failed",
        retry_after=1,
        reason=reason,
    )


def revoked(detail: str, by: str, reason: str) -> Refusal:
    """A request that a bar (the kill switch) refuses; the record says who barred, and why."""
    return Refusal("revoked", detail, outcome="denied", reason=f"barred by {by}: {reason}")


def bars_unread() -> Refusal:
    """A replica with a shared store that has not read the bars in force since it started:
    it issues nothing (it would serve every barred caller, end user and audience), and it
    lists none (that would tell an admin there are none)."""
    return Refusal(
        "shared_state_unavailable",
        "this replica has not read the bars in force from the shared store since it "
        "started, so it issues nothing; retry",
        outcome="failed",
        retry_after=1,
        reason="revocations_unread",
    )


def internal_error(exc: Exception) -> Refusal:
    """A fault of the broker's own (a bug): the same 500 wherever it is met, with the
    exception's class (never its text) as the reason a record gives."""
    return Refusal(
        "internal_error",
        "an unexpected error occurred",
        outcome="failed",
        reason=type(exc).__name__,
    )


def ambiguous_header(name: str) -> Refusal:
    """A header that decides the request, sent more than once: which one counts would be a
    guess, and a proxy in front may have read the other."""
    return Refusal(
        "ambiguous_header",
        "a header that decides who is calling, for whom or how was sent more than once",
        outcome="denied",
        errors=[FieldError(name, "must be sent at most once")],
        reason="ambiguous_header",
    )


def unreadable_body(headers: Mapping[str, str]) -> Refusal | None:
    """The refusal of a body that cannot be read as the JSON it claims to be (its
    ``content-type`` and ``content-encoding``, lower-case names), or None."""
    problem = json_body_problem(headers.get("content-type"), headers.get("content-encoding"))
    if problem is None:
        return None
    # RFC 9110 12.5.3: a 415 for a content coding says which codings would do.
    coded = problem.header == "Content-Encoding"
    return Refusal(
        problem.code,
        problem.detail,
        outcome="rejected",
        errors=[FieldError(problem.header, problem.rule)],
        headers={"Accept-Encoding": "identity"} if coded else None,
    )
