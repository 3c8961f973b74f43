"""``POST /tokens``: read the request, authenticate, and hand the rest to the token service.

The service (``broker/service.py``) owns the step order, the audit record and the
fail-closed rule; this handler translates HTTP to it and its answer back: a token, or a
``Refusal`` answered from the one table in ``api/errors.py``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import structlog
from litestar import Request, Response, post
from litestar.exceptions import HTTPException

from broker.api.auth import authenticate, check_origin, source_address
from broker.api.errors import from_refusal
from broker.clock import rfc3339
from broker.limits import MAX_BODY
from broker.models import TokenResponse
from broker.refusals import Refusal
from broker.runtime import Runtime
from broker.service import Attempt, Issued, RequestFacts

log = structlog.get_logger("broker.tokens")
_ENCODER = msgspec.json.Encoder()
_JSON_TYPES = ("application/json",)


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type in _JSON_TYPES


def _facts(request: Request[Any, Any, Any]) -> RequestFacts:
    headers = request.headers
    return RequestFacts(
        request_id=request.scope.get("state", {}).get("request_id", ""),
        source=source_address(request),
        fresh="no-cache" in headers.get("cache-control", "").lower(),
        on_behalf_of=headers.get("x-on-behalf-of"),
    )


def _response(issued: Issued) -> TokenResponse:
    token, grant = issued.token, issued.grant
    return TokenResponse(
        token=token.token,
        token_type="Bearer",
        expires_in=issued.expires_in,
        expires_at=rfc3339(token.expires_at),
        refresh_at=issued.refresh_at,
        audience=grant.audience,
        external_user_id=grant.external_user_id,
        permissions=list(token.permissions) if token.permissions is not None else None,
        token_id=token.jti,
        token_sha256=token.sha256,
    )


@post(
    "/tokens",
    summary="Obtain an MKA1 token for an end user",
    operation_id="issueToken",
    status_code=200,
    include_in_schema=False,
)
async def issue_token(request: Request[Any, Any, Any]) -> Response[bytes]:
    runtime: Runtime = request.app.state.runtime
    attempt = Attempt(_facts(request))
    try:
        issued = await _issue(request, runtime, attempt)
    except Refusal as refusal:
        raise from_refusal(refusal) from None
    except asyncio.CancelledError:
        # uvicorn cancels what still runs when shutdown_grace_seconds expires, before the
        # audit log is sealed: the request is still answered, and still on the record.
        raise from_refusal(await runtime.service.interrupted(attempt)) from None
    # The audit record is the record of issuance; this line is for debugging only.
    log.debug("token_issued", token_id=issued.token.jti, cache=issued.cache)
    return Response(content=_ENCODER.encode(_response(issued)), media_type="application/json")


async def _issue(request: Request[Any, Any, Any], runtime: Runtime, attempt: Attempt) -> Issued:
    service = runtime.service
    try:
        caller = await authenticate(request, runtime, runtime.snapshot)
    except Refusal as refusal:
        if refusal.quiet:
            raise service.refuse_unrecorded(refusal) from None
        raise await service.refuse(attempt, refusal) from None
    attempt.caller = caller
    try:
        check_origin(request, caller)
    except Refusal as refusal:
        raise await service.refuse(attempt, refusal) from None
    structlog.contextvars.bind_contextvars(caller=caller.id)
    await service.admit(attempt, caller)

    if not _is_json(request.headers.get("content-type")):
        raise await service.refuse(
            attempt,
            Refusal(
                "unsupported_media_type", "the body must be application/json", outcome="rejected"
            ),
        )
    try:
        raw = await request.body()
    except HTTPException as exc:
        if exc.status_code == 413:
            unread = Refusal(
                "body_too_large", f"the body must be at most {MAX_BODY} bytes", outcome="rejected"
            )
        else:
            # The client went away mid-body (or the body timeout closed it): nobody is
            # listening, but the attempt is still on the record, and never as a 500.
            unread = Refusal(
                "body_incomplete", "the body ended before its Content-Length", outcome="rejected"
            )
        raise await service.refuse(attempt, unread) from None
    return await service.issue(attempt, raw)
