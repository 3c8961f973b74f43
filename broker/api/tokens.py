"""``POST /tokens``: read the request, authenticate, and hand the rest to the token service.

The service (``broker/service.py``) owns the step order, the audit record and the
fail-closed rule; this route translates HTTP to it and its answer back: a token, or a
``Refusal`` answered from the one table in ``api/errors.py``.

The request is read and the response written here, from the raw scope, without the
per-request ``Request``/``Response`` machinery of a regular handler, which cost more than
everything the broker does for a cache hit (issue 12, bench/RESULTS.md). ``POST /tokens`` is
called by the edge layer directly (``direct``: no router, no exception middleware; +12% cache
hits); Litestar still routes every other method here (405 with ``Allow``) and documents it.
The body is still decoded strictly by the service, and every behaviour and error shape is
the same.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import structlog
from litestar import asgi
from litestar.types import Message, Receive, Scope, Send

from broker.api.auth import Credentials, authenticate, check_origin, repeated_header
from broker.api.edge import Edge, shutting_down
from broker.api.errors import CALLER, refusal_answer
from broker.api.routes import TOKENS
from broker.clock import rfc3339
from broker.forwarded import peer_of
from broker.models import TokenResponse
from broker.observability import debugging
from broker.refusals import Refusal, internal_error, unreadable_body
from broker.rules import MAX_BODY
from broker.runtime import Runtime
from broker.service import Attempt, Issued, RequestFacts
from broker.transport import DirectAnswer, DirectRoute, Lane

log = structlog.get_logger("broker.tokens")
_ENCODER = msgspec.json.Encoder()
_JSON = (b"content-type", b"application/json")
_ALLOW = (b"allow", b"POST, OPTIONS")


class _Unread(Exception):
    """The body could not be read: too large, or the client went away."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.code)
        self.refusal = refusal


def _headers(scope: Any) -> dict[str, str]:
    """Header names are lower-case in ASGI; the first of each is kept (a repeat of any that
    matters is refused by authentication)."""
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return headers


def _too_large() -> _Unread:
    return _Unread(
        Refusal("body_too_large", f"the body must be at most {MAX_BODY} bytes", outcome="rejected")
    )


def _incomplete() -> _Unread:
    # The client went away mid-body (or the body timeout closed it): nobody is listening,
    # but the attempt is still on the record, and never as a 500.
    return _Unread(
        Refusal("body_incomplete", "the body ended before its Content-Length", outcome="rejected")
    )


# Reads a request's body, given its declared Content-Length; raises _Unread.
BodyReader = Callable[[str | None], Awaitable[bytes]]


def _receiver(receive: Receive) -> BodyReader:
    async def read(declared: str | None) -> bytes:
        # ASCII digits only: str.isdigit() also takes "²", which int() refuses (a 500).
        if (
            declared is not None
            and declared.isascii()
            and declared.isdigit()
            and int(declared) > MAX_BODY
        ):
            raise _too_large()
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _incomplete()
            chunk = message.get("body", b"")
            assert isinstance(chunk, bytes)
            size += len(chunk)
            if size > MAX_BODY:
                raise _too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    return read


def _buffered(body: bytes | None) -> BodyReader:
    """The body a direct route was given: whole, within MAX_BODY (the server's condition
    for taking the route), or None when it never completed."""

    async def read(_: str | None) -> bytes:
        if body is None:
            raise _incomplete()
        return body

    return read


def _response(issued: Issued) -> bytes:
    token, grant = issued.token, issued.grant
    return _ENCODER.encode(
        TokenResponse(
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
    )


async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


@asgi(TOKENS, copy_scope=False)
async def issue_token(scope: Scope, receive: Receive, send: Send) -> None:
    """Through Litestar's router: what the edge does not take itself (see ``direct``)."""
    await serve_tokens(scope["app"].state.runtime, scope, receive, send)


def direct(runtime: Runtime) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """``POST /tokens`` for the edge layer to call without Litestar's router and exception
    middleware (about a tenth of a cache hit's time): the same handler, and an unexpected
    exception answered as Litestar's handler would (500 ``internal_error``, logged)."""

    async def handle(scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await serve_tokens(runtime, scope, receive, tracking_send)
        except Exception as exc:
            if started:
                _log_unexpected(exc)
                raise
            await _send(send, *_unexpected(scope, exc))

    return handle


def _log_unexpected(exc: Exception) -> None:
    log.error("unhandled_exception", error_type=type(exc).__name__, exc_info=exc)


def _unexpected(scope: Any, exc: Exception) -> DirectAnswer:
    """An exception nothing expected: logged, and answered as Litestar's handler would
    (500 ``internal_error``)."""
    _log_unexpected(exc)
    return refusal_answer(scope, internal_error(exc))


async def serve_tokens(runtime: Runtime, scope: Scope, receive: Receive, send: Send) -> None:
    method = scope.get("method")
    if method == "OPTIONS":
        # What the router answers on every other route (the edge answers a CORS preflight
        # before it gets here): 405 here contradicted its own Allow header.
        await _send(send, 204, [_ALLOW], b"")
        return
    if method != "POST":
        refusal = Refusal("method_not_allowed", f"{method} is not allowed here", outcome="rejected")
        status, answer_headers, body = refusal_answer(scope, refusal)
        await _send(send, status, [*answer_headers, _ALLOW], body)
        return
    await _send(send, *await token_answer(runtime, scope, _receiver(receive)))


async def token_answer(runtime: Runtime, scope: Any, read_body: BodyReader) -> DirectAnswer:
    """``POST /tokens``, from the request's scope and body to status, headers and body."""
    headers = _headers(scope)
    state = scope.setdefault("state", {})
    client = scope.get("client")
    attempt = Attempt(_facts(state, client[0] if client else None, headers))
    try:
        issued = await _issue(scope, read_body, runtime, attempt, headers)
    except Refusal as refusal:
        return refusal_answer(scope, refusal)
    except asyncio.CancelledError:
        # uvicorn cancels what still runs when shutdown_grace_seconds expires, before the
        # audit log is sealed: the request is still answered, and still on the record.
        return refusal_answer(scope, await runtime.service.interrupted(attempt))
    except Exception as exc:
        # A bug before the token service took the request (authentication, the body): on
        # the record too. The service answers its own.
        return refusal_answer(scope, await runtime.service.fault(attempt, exc))
    return _issued_answer(issued, attempt.facts.request_id)


def _facts(state: dict[str, Any], source: str | None, headers: dict[str, str]) -> RequestFacts:
    return RequestFacts(
        request_id=state.get("request_id", ""),
        source=source,
        fresh="no-cache" in headers.get("cache-control", "").lower(),
        on_behalf_of=headers.get("x-on-behalf-of"),
    )


def _issued_answer(issued: Issued, request_id: str) -> DirectAnswer:
    body = _response(issued)
    if debugging():
        # The audit record is the record of issuance; this line is for debugging only (and
        # guarded: a filtered line still costs its processing on every hit).
        log.debug(
            "token_issued", request_id=request_id, token_id=issued.token.jti, cache=issued.cache
        )
    return 200, [_JSON, (b"content-length", b"%d" % len(body))], body


def direct_route(runtime: Runtime, edge: Edge) -> DirectRoute:
    """``POST /tokens`` for the server to answer without ASGI (``broker/transport.py``):
    the edge's work, then the same answer as through the ASGI app."""

    async def handle(scope: dict[str, Any], body: bytes | None) -> DirectAnswer:
        passage = edge.begin(scope)
        status = 500
        try:
            try:
                status, headers, content = await token_answer(runtime, scope, _buffered(body))
            except asyncio.CancelledError:
                status, headers, content = shutting_down(scope)
            except Exception as exc:
                status, headers, content = _unexpected(scope, exc)
            return status, edge.headers(passage, headers, scope["state"]), content
        finally:
            edge.end(passage, scope, status)

    return DirectRoute(handle, MAX_BODY, lane(runtime, edge))


def lane(runtime: Runtime, edge: Edge) -> Lane:
    """A cache hit answered from callbacks: no task, no coroutine (``broker/transport.py``).

    It takes a request only when nothing about it needs an await or could be refused: the
    checks ``_issue`` makes that can be made without spending anything (no repeated header,
    a caller known without an await, its origin, the media type), then
    ``TokenService.issue_now``. Anything else goes the way of ``handle``, which
    decides it all again; the answer, the record and the access line are the same either
    way (``tests/unit/test_service.py`` and ``tests/e2e/api/test_tokens_direct.py`` hold
    them side by side)."""
    service = runtime.service

    def take(scope: dict[str, Any], body: bytes, reply: Callable[[DirectAnswer], None]) -> bool:
        try:
            return take_hit(scope, body, reply)
        except Exception as exc:
            # Declined, not answered 500: the task way decides it all again, and a fault it
            # meets too goes on the trail there (TokenService.fault); a request the lane
            # alone trips on is served. Either way the fault is logged.
            _log_unexpected(exc)
            return False

    def take_hit(scope: dict[str, Any], body: bytes, reply: Callable[[DirectAnswer], None]) -> bool:
        headers = _headers(scope)
        client = scope.get("client")
        source = client[0] if client else None
        snapshot = runtime.snapshot
        # A throttled address needs no check here: a caller known without an await gets in
        # from one as from anywhere (api/auth.authenticate), and nothing else is taken.
        if repeated_header(scope["headers"], snapshot.single_headers) is not None:
            return False
        caller = snapshot.authenticator.authenticate_now(headers, peer_of(scope))
        if caller is None:
            return False
        state = scope["state"]
        try:
            check_origin(headers, caller, state)
        except Refusal:
            return False  # refused and recorded the task way
        if unreadable_body(headers) is not None:
            return False
        passage = edge.begin(scope, bind=False)
        attempt = Attempt(_facts(state, source, headers), caller)

        def answer(outcome: Issued | Refusal) -> None:
            status = 500
            try:
                state[CALLER] = caller.id
                if isinstance(outcome, Refusal):
                    status, headers, content = refusal_answer(scope, outcome)
                else:
                    status, headers, content = _issued_answer(outcome, attempt.facts.request_id)
                headers = edge.headers(passage, headers, state)
            except Exception as exc:
                status, headers, content = _unexpected(scope, exc)
            finally:
                edge.end(passage, scope, status)
            reply((status, headers, content))

        return service.issue_now(attempt, body, answer)

    return take


async def _issue(
    scope: Any, read_body: BodyReader, runtime: Runtime, attempt: Attempt, headers: dict[str, str]
) -> Issued:
    service = runtime.service
    credentials = Credentials(headers, list(scope["headers"]), attempt.facts.source, peer_of(scope))
    try:
        caller = await authenticate(credentials, runtime, runtime.snapshot)
    except Refusal as refusal:
        if refusal.quiet:
            raise service.refuse_throttled(refusal) from None
        raise await service.refuse(attempt, refusal) from None
    attempt.caller = caller
    try:
        check_origin(headers, caller, scope["state"])
    except Refusal as refusal:
        raise await service.refuse(attempt, refusal) from None
    scope["state"][CALLER] = caller.id
    structlog.contextvars.bind_contextvars(caller=caller.id)
    await service.admit(attempt, caller)

    if (unreadable := unreadable_body(headers)) is not None:
        raise await service.refuse(attempt, unreadable)
    try:
        raw = await read_body(headers.get("content-length"))
    except _Unread as unread:
        raise await service.refuse(attempt, unread.refusal) from None
    return await service.issue(attempt, raw)
