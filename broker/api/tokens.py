"""``POST /tokens``: authenticate, decode strictly, decide, obtain, audit, and only then answer.

Every outcome, from a 400 to a 200, leaves exactly one audit record. A token is released
only once its record is durable.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import msgspec
import structlog
from litestar import Request, Response, post
from litestar.exceptions import HTTPException

from broker.api.auth import AuthRefused, authenticate
from broker.api.errors import ProblemError
from broker.api.middleware import QUIET
from broker.audit import AuditEvent, AuditUnavailable, Outcome
from broker.callers import Caller
from broker.clock import now_rfc3339_millis, rfc3339
from broker.issuance import IssuedToken, TokenMismatch
from broker.limits import EXTERNAL_USER_ID_RULE, MAX_BODY, external_user_id_problem
from broker.models import (
    FieldError,
    InvalidRequest,
    TokenRequest,
    TokenResponse,
    decode_token_request,
)
from broker.policy import Denied, Grant, decide
from broker.ratelimit import TokenBuckets
from broker.runtime import Runtime
from broker.upstream import UpstreamFailure

log = structlog.get_logger("broker.tokens")
_ENCODER = msgspec.json.Encoder()
_JSON_TYPES = ("application/json",)
# Share of a token's life after which a client should come back for a new one.
REFRESH_RATIO = 0.8


class _Attempt:
    """What is known so far about one request, for its audit record."""

    def __init__(self, request: Request[Any, Any, Any]) -> None:
        self.request_id: str = request.scope.get("state", {}).get("request_id", "")
        self.source = request.client.host if request.client else None
        self.caller: Caller | None = None
        self.body: TokenRequest | None = None
        self.grant: Grant | None = None
        self.upstream_status: int | None = None
        self.upstream_latency_ms: float | None = None

    def event(
        self,
        outcome: Outcome,
        code: str,
        status: int,
        *,
        issued: IssuedToken | None = None,
        cache: str | None = None,
        reason: str | None = None,
    ) -> AuditEvent:
        body, grant = self.body, self.grant
        requested = body.expires_in if body and body.expires_in is not msgspec.UNSET else None
        subject = grant.external_user_id if grant else None
        if subject is None and body and body.external_user_id is not msgspec.UNSET:
            subject = body.external_user_id
        permissions = None
        if grant and grant.permissions is not None:
            permissions = list(grant.permissions)
        elif body and body.permissions is not msgspec.UNSET:
            permissions = sorted(body.permissions)
        return AuditEvent(
            time=now_rfc3339_millis(),
            request_id=self.request_id,
            outcome=outcome,
            code=code,
            status=status,
            caller=self.caller.id if self.caller else None,
            auth_method=self.caller.method if self.caller else None,
            source_address=self.source,
            external_user_id=subject,
            audience=grant.audience if grant else (body.audience if body else None),
            permissions=permissions,
            requested_expires_in=requested,
            granted_expires_in=grant.expires_in if grant and issued else None,
            expires_at=rfc3339(issued.expires_at) if issued else None,
            upstream_status=self.upstream_status,
            upstream_latency_ms=self.upstream_latency_ms,
            token_sha256=issued.sha256 if issued else None,
            token_id=issued.jti if issued else None,
            cache=cache,
            reason=reason,
        )


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type in _JSON_TYPES


def _end_user(body: TokenRequest, header: str | None) -> str | None:
    """Reconcile ``externalUserId`` with ``X-On-Behalf-Of``; both must agree."""
    from_body = body.external_user_id if body.external_user_id is not msgspec.UNSET else None
    if header is not None:
        if (problem := external_user_id_problem(header)) is not None:
            raise InvalidRequest(
                [FieldError("X-On-Behalf-Of", f"{EXTERNAL_USER_ID_RULE} ({problem})")]
            )
        if from_body is not None and from_body != header:
            raise InvalidRequest(
                [
                    FieldError(
                        "X-On-Behalf-Of",
                        "differs from externalUserId; send one, or the same value in both",
                    )
                ],
                code="conflicting_external_user_id",
            )
        return header
    return from_body


async def _record(runtime: Runtime, event: AuditEvent) -> None:
    """Record a refusal. The refusal stands even if the record fails: no token is at stake."""
    try:
        await runtime.audit.append(event)
    except AuditUnavailable:
        log.error("audit_record_lost", outcome=event.outcome, code=event.code)


_UPSTREAM_STATUS = {
    "rejected": (400, "upstream_rejected"),
    "credentials": (502, "upstream_credentials"),
    "ip_denied": (502, "upstream_ip_denied"),
    "refused": (502, "upstream_refused"),
    "redirected": (502, "upstream_redirected"),
    "rate_limited": (503, "upstream_rate_limited"),
    "server_error": (502, "upstream_error"),
    "unreachable": (502, "upstream_unreachable"),
    "malformed": (502, "upstream_malformed_response"),
    "timeout": (504, "upstream_timeout"),
    "circuit_open": (503, "upstream_circuit_open"),
    "pool_exhausted": (503, "upstream_busy"),
}
_UPSTREAM_DETAIL = {
    "rejected": "the MKA1 exchange rejected the request",
    "credentials": "the broker's own MKA1 credentials were refused; operators have been told",
    "ip_denied": "the MKA1 organisation's inbound IP rules refuse the broker's address; "
    "operators have been told",
    "refused": "the MKA1 exchange refused the request; operators have been told",
    "redirected": "the MKA1 exchange answered with a redirect, which the broker never follows; "
    "operators have been told",
    "rate_limited": "the MKA1 exchange is rate limiting the broker; retry later",
    "server_error": "the MKA1 exchange failed",
    "unreachable": "the MKA1 exchange could not be reached",
    "malformed": "the MKA1 exchange answered with a malformed response",
    "timeout": "the MKA1 exchange did not answer in time",
    "circuit_open": "the MKA1 exchange keeps failing; the broker is not calling it for a while",
    "pool_exhausted": "every connection to the MKA1 exchange is busy; retry shortly",
}


def _upstream_problem(failure: UpstreamFailure) -> ProblemError:
    status, code = _UPSTREAM_STATUS[failure.kind]
    detail = _UPSTREAM_DETAIL[failure.kind]
    if failure.kind == "rejected" and failure.message:
        detail = f"{detail}; fields it named: {failure.message}"
    headers = {}
    if failure.kind in ("rate_limited", "circuit_open", "pool_exhausted"):
        headers["Retry-After"] = str(failure.retry_after or 1)
    return ProblemError(status, code, detail, headers=headers)


def _rate_limited(
    request: Request[Any, Any, Any],
    runtime: Runtime,
    buckets: TokenBuckets | None,
    key: str,
    name: str,
    whom: str,
) -> tuple[ProblemError, bool] | None:
    """The 429 for ``key``'s empty bucket, and whether it deserves its own audit record:
    the first refusal of a key in each second does; the rest of a flood is counted in
    metrics only, with no record and no access line."""
    if buckets is None or (wait := buckets.take(key)) is None:
        return None
    runtime.metrics.rate_limited.labels(limit=name).inc()
    problem = ProblemError(
        429,
        "rate_limited",
        f"too many token requests for {whom}; retry later",
        headers={"Retry-After": str(max(1, math.ceil(wait)))},
    )
    recorded = runtime.recently_limited
    first = key not in recorded
    if first:
        recorded[key] = True
    else:
        request.scope["state"][QUIET] = True
    return problem, first


@post(
    "/tokens",
    summary="Obtain an MKA1 token for an end user",
    operation_id="issueToken",
    status_code=200,
    include_in_schema=False,
)
async def issue_token(request: Request[Any, Any, Any]) -> Response[bytes]:
    runtime: Runtime = request.app.state.runtime
    attempt = _Attempt(request)
    try:
        return await _issue(request, runtime, attempt)
    except asyncio.CancelledError:
        # uvicorn cancels what still runs when shutdown_grace_seconds expires, before the
        # audit log is sealed: the request is still answered, and still on the record.
        problem = ProblemError(
            503,
            "shutting_down",
            "the broker stopped before this request finished; retry",
            headers={"Retry-After": "1"},
        )
        await _record(
            runtime, attempt.event("failed", problem.code, 503, reason="shutdown_grace_expired")
        )
        runtime.metrics.tokens.labels(outcome="failed", code=problem.code, cache="none").inc()
        raise problem from None


async def _issue(
    request: Request[Any, Any, Any], runtime: Runtime, attempt: _Attempt
) -> Response[bytes]:
    snapshot = runtime.snapshot

    async def refuse(
        outcome: Outcome, problem: ProblemError, reason: str | None = None
    ) -> ProblemError:
        event = attempt.event(outcome, problem.code, problem.status, reason=reason)
        if attempt.caller is None:
            event.unrecorded_before = runtime.anonymous_records.take_unrecorded()
        await _record(runtime, event)
        runtime.metrics.tokens.labels(outcome=outcome, code=problem.code, cache="none").inc()
        return problem

    async def refuse_limited(problem: ProblemError, record: bool) -> ProblemError:
        if record:
            return await refuse("denied", problem)
        runtime.metrics.tokens.labels(outcome="denied", code=problem.code, cache="none").inc()
        return problem

    try:
        attempt.caller = caller = await authenticate(request, runtime, snapshot)
    except AuthRefused as refused:
        if not refused.audit:
            runtime.metrics.tokens.labels(
                outcome="denied", code=refused.problem.code, cache="none"
            ).inc()
            raise refused.problem from None
        attempt.caller = refused.caller
        if refused.caller is None and not runtime.anonymous_records.admit():
            # Over the deployment-wide budget for records nobody is accountable for: counted,
            # and carried by the next record that is written (unrecordedBefore).
            request.scope["state"][QUIET] = True
            runtime.metrics.tokens.labels(
                outcome="denied", code=refused.problem.code, cache="none"
            ).inc()
            raise refused.problem from None
        raise await refuse("denied", refused.problem, reason=refused.reason) from None
    structlog.contextvars.bind_contextvars(caller=caller.id)
    caller_key = f"{caller.method}:{caller.id}"

    # Every request of a known caller spends from its bucket, refused ones included, so
    # that neither denials nor malformed bodies can flood the audit log.
    limited = _rate_limited(
        request, runtime, runtime.caller_limits, caller_key, "per_caller", "this caller"
    )
    if limited is not None:
        raise await refuse_limited(*limited) from None

    if not _is_json(request.headers.get("content-type")):
        raise await refuse(
            "rejected",
            ProblemError(415, "unsupported_media_type", "the body must be application/json"),
        )
    try:
        raw = await request.body()
    except HTTPException as exc:
        if exc.status_code == 413:
            problem = ProblemError(
                413, "body_too_large", f"the body must be at most {MAX_BODY} bytes"
            )
        else:
            # The client went away mid-body (or the body timeout closed it): nobody is
            # listening, but the attempt is still on the record, and never as a 500.
            problem = ProblemError(
                400, "body_incomplete", "the body ended before its Content-Length"
            )
        raise await refuse("rejected", problem) from None

    try:
        attempt.body = body = decode_token_request(raw)
        end_user = _end_user(body, request.headers.get("x-on-behalf-of"))
    except InvalidRequest as exc:
        raise await refuse(
            "rejected",
            ProblemError(400, exc.code, "the request is invalid", errors=exc.errors),
        ) from None

    try:
        attempt.grant = grant = decide(
            caller.policy,
            caller.subject,
            audience=body.audience,
            external_user_id=end_user,
            expires_in=body.expires_in if body.expires_in is not msgspec.UNSET else None,
            permissions=body.permissions if body.permissions is not msgspec.UNSET else None,
        )
    except Denied as exc:
        raise await refuse(
            "denied",
            ProblemError(
                403,
                exc.code,
                "the request is outside this caller's policy",
                errors=[FieldError(exc.field, exc.message)],
            ),
        ) from None

    # Keyed by caller and end user: one caller exhausting an end user's bucket must not lock
    # that user out of every other caller (their own browser session included).
    limited = _rate_limited(
        request,
        runtime,
        runtime.end_user_limits,
        f"{caller_key}\x00{grant.external_user_id}",
        "per_end_user",
        "this end user from this caller",
    )
    if limited is not None:
        raise await refuse_limited(*limited) from None

    fresh = "no-cache" in request.headers.get("cache-control", "").lower()
    try:
        issued, cache_result = await runtime.issuer.obtain(
            grant, use_cache=caller.cache, fresh=fresh
        )
    except UpstreamFailure as failure:
        attempt.upstream_status = failure.status
        attempt.upstream_latency_ms = failure.latency_ms
        if failure.kind == "credentials":
            log.error("upstream_credentials_refused", upstream_status=failure.status)
        raise await refuse("failed", _upstream_problem(failure), reason=failure.kind) from None
    except TokenMismatch as mismatch:
        attempt.upstream_status = mismatch.status
        attempt.upstream_latency_ms = mismatch.latency_ms
        log.error("upstream_token_mismatch", reason=mismatch.reason)
        raise await refuse(
            "failed",
            ProblemError(
                502,
                "upstream_token_mismatch",
                "the MKA1 exchange returned a token that does not match the request; "
                "it was discarded",
            ),
            reason=mismatch.reason,
        ) from None
    if cache_result != "hit":
        attempt.upstream_status = issued.upstream_status
        attempt.upstream_latency_ms = issued.upstream_latency_ms

    try:
        await runtime.audit.append(
            attempt.event("issued", "issued", 200, issued=issued, cache=cache_result)
        )
    except AuditUnavailable:
        runtime.metrics.tokens.labels(
            outcome="failed", code="audit_unavailable", cache=cache_result
        ).inc()
        log.error("token_withheld_audit_unavailable")
        raise ProblemError(
            503,
            "audit_unavailable",
            "the audit record could not be written, so no token was issued; retry later",
            headers={"Retry-After": "1"},
        ) from None

    now = time.time()
    remaining = max(0, issued.expires_at - int(now))
    response = TokenResponse(
        token=issued.token,
        token_type="Bearer",
        expires_in=remaining,
        expires_at=rfc3339(issued.expires_at),
        refresh_at=rfc3339(now + remaining * REFRESH_RATIO),
        audience=grant.audience,
        external_user_id=grant.external_user_id,
        permissions=list(issued.permissions) if issued.permissions is not None else None,
        token_id=issued.jti,
        token_sha256=issued.sha256,
    )
    runtime.metrics.tokens.labels(outcome="issued", code="issued", cache=cache_result).inc()
    # The audit record is the record of issuance; this line is for debugging only.
    log.debug(
        "token_issued",
        audience=grant.audience,
        token_id=issued.jti,
        expires_in=remaining,
        cache=cache_result,
    )
    return Response(content=_ENCODER.encode(response), media_type="application/json")
