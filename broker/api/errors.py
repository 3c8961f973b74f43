"""Every rejection as RFC 9457 ``application/problem+json`` with a stable ``code``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException

from broker.audit.records import RecordType
from broker.audit.writer import AuditUnavailable, AuditWriter
from broker.models import FieldError, Problem
from broker.refusals import STATUS_OF, Refusal
from broker.rules import MAX_BODY

PROBLEM_JSON = "application/problem+json"
PROBLEM_CODE = "problem_code"
# Set in a request's scope state when its refusal is already logged in bulk (a throttled
# address, a rate-limit flood): that request gets no access line of its own.
QUIET = "quiet"
# The authenticated caller's id, in a request's scope state, for its access line.
CALLER = "caller"
_ENCODER = msgspec.json.Encoder()
log = structlog.get_logger("broker.api")

_HEADERS_OF = {
    "unauthenticated": {"WWW-Authenticate": 'Bearer realm="mka1-token-broker"'},
}


def from_refusal(refusal: Refusal) -> ProblemError:
    """The problem answer to a refusal: status from the table, Retry-After from the refusal."""
    headers = dict(_HEADERS_OF.get(refusal.code, {}))
    headers.update(refusal.headers)
    if refusal.retry_after is not None:
        headers["Retry-After"] = str(refusal.retry_after)
    return ProblemError(
        STATUS_OF[refusal.code],
        refusal.code,
        refusal.detail,
        errors=refusal.errors,
        headers=headers,
        quiet=refusal.quiet,
    )


_CODES_BY_STATUS = {
    400: "bad_request",
    401: "unauthenticated",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


class ProblemError(Exception):
    """Raised by handlers to answer with a problem document."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        errors: list[FieldError] | None = None,
        headers: Mapping[str, str] | None = None,
        quiet: bool = False,
    ) -> None:
        super().__init__(code)
        self.status = status
        self.code = code
        self.detail = detail
        self.errors = errors
        self.headers = dict(headers or {})
        # No access line of its own (a flood counted in bulk).
        self.quiet = quiet


def problem_body(
    scope: Any,
    status: int,
    code: str,
    detail: str | None,
    errors: list[FieldError] | None = None,
) -> bytes:
    """The problem document for a request's scope (its path and request id), noting the
    code in the scope's state for the access line."""
    state = scope.setdefault("state", {})
    # For the access line: which problem this request ended with.
    state[PROBLEM_CODE] = code
    return _ENCODER.encode(
        Problem.of(
            status,
            code,
            detail,
            # The path as received; request.url would re-parse the query, which may not decode.
            instance=scope["path"],
            request_id=state.get("request_id"),
            errors=errors,
        )
    )


def refusal_answer(scope: Any, refusal: Refusal) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body answering a refusal, for routes that speak ASGI directly."""
    problem = from_refusal(refusal)
    if problem.quiet:
        scope.setdefault("state", {})[QUIET] = True
    body = problem_body(scope, problem.status, problem.code, problem.detail, problem.errors)
    headers = [(b"content-type", PROBLEM_JSON.encode()), (b"content-length", b"%d" % len(body))]
    headers += [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in problem.headers.items()
    ]
    return problem.status, headers, body


def problem_response(
    request: Request[Any, Any, Any],
    status: int,
    code: str,
    detail: str | None,
    *,
    errors: list[FieldError] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response[bytes]:
    return Response(
        content=problem_body(request.scope, status, code, detail, errors),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=dict(headers or {}),
    )


def handle_problem(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    assert isinstance(exc, ProblemError)
    if exc.quiet:
        request.scope.setdefault("state", {})[QUIET] = True
    return problem_response(
        request, exc.status, exc.code, exc.detail, errors=exc.errors, headers=exc.headers
    )


def handle_http_exception(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    code = _CODES_BY_STATUS.get(status, "http_error")
    headers = dict(exc.headers or {})
    detail: str
    if status == 413:
        detail = f"the body must be at most {MAX_BODY} bytes"
    elif status == 405:
        detail = f"{request.method} is not allowed here"
    elif status == 404:
        detail = "no such resource"
    else:
        detail = str(exc.detail)
    return problem_response(request, status, code, detail, headers=headers)


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.error("unhandled_exception", error_type=type(exc).__name__, exc_info=exc)
    return problem_response(request, 500, "internal_error", "an unexpected error occurred")


async def record_or_refuse(
    audit: AuditWriter, kind: RecordType, body: msgspec.Struct, undone: str
) -> None:
    """Fail closed for a request that is on the record but issues no token (a read of the
    trail, a revocation): its record is durable, or it is answered 503 ``audit_unavailable``
    and ``undone`` ("the read", "the change ... was not made") did not happen."""
    try:
        await audit.append_record(kind, body)
    except AuditUnavailable:
        raise ProblemError(
            STATUS_OF["audit_unavailable"],
            "audit_unavailable",
            f"{undone}; retry",
            headers={"Retry-After": "1"},
        ) from None
