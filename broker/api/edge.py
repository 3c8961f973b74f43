"""The one ASGI layer in front of the app: request id, no-store headers, CORS, access line.

Every response, a router 404/405 included (Litestar runs its own middleware only for
matched routes), gets ``Cache-Control: no-store`` (RFC 6749 section 5.1: it may carry a
token), ``Pragma: no-cache``, ``X-Content-Type-Options: nosniff`` and an ``X-Request-ID``,
and one access line with its problem ``code``.

CORS, by exact origin and per caller: Litestar's CORS support takes one static allow-list
for the whole app; here each client, issuer and proxy has its own list, lists change on
reload, and the final word is given per request once the caller is known (the routes
refuse a request from an origin that is not on its caller's list, 403
``origin_not_allowed``: the browser would hide the answer, but the request would still have
run). This layer answers preflights for origins on any caller's list (and refuses others
with a problem document, as starlette's CORSMiddleware answers 400: a browser enforces CORS,
but a clear refusal helps the developer who sees it), and adds
``Access-Control-Allow-Origin`` (that origin, never ``*``) to responses for listed origins.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from broker import refusals
from broker.api import routes
from broker.api.auth import CORS_DENIED, repeated_header
from broker.api.errors import CALLER, PROBLEM_CODE, QUIET, refusal_answer
from broker.metrics import Metrics
from broker.models import ON_EVERY_ANSWER, FieldError
from broker.observability import access_line
from broker.refusals import Refusal

_REPLACED = frozenset(name for name, _ in ON_EVERY_ANSWER)
_ALLOW_METHODS = b"GET, POST"
_ALLOW_HEADERS = b"Authorization, Content-Type, X-On-Behalf-Of, Cache-Control"
# What a page may read of an answer: WWW-Authenticate too, so that it can tell an expired
# session (error="invalid_token": sign in again) from any other 401.
_EXPOSE_HEADERS = b"X-Request-ID, Retry-After, WWW-Authenticate"
_MAX_AGE = b"600"
# Request ids: unique, not secret (uuid4 per request showed in profiles). A random prefix
# per process keeps replicas apart; the counter keeps requests apart.
_ID_PREFIX: str
_ID_COUNTER: itertools.count[int]


def _new_request_ids() -> None:
    """Drawn at import, and again in a forked process, which is another process: granian
    forks its workers after the master has imported this module, and they shared the
    prefix and the counter (the same ids for different requests in the logs and the audit
    trail)."""
    global _ID_PREFIX, _ID_COUNTER
    _ID_PREFIX = os.urandom(8).hex()
    _ID_COUNTER = itertools.count(1)


_new_request_ids()
os.register_at_fork(after_in_child=_new_request_ids)


# Refusals the edge answers itself, through the same table and document as every route's:
# with the request's path and id.
_REFUSED_PREFLIGHT = Refusal(
    "origin_not_allowed",
    "no caller of this broker may be used from this web origin",
    outcome="denied",
    errors=[FieldError("Origin", "must be on a caller's cors_origins list")],
)
_ORIGIN = frozenset({b"origin"})
_AMBIGUOUS_ORIGIN = refusals.ambiguous_header("Origin")
_SHUTTING_DOWN = refusals.shutting_down()
_NOT_CANONICAL = Refusal(
    "not_found",
    "no such resource: paths are matched as written, without percent-encoding, empty or "
    "dot segments, or a trailing slash",
    outcome="rejected",
)


def canonical(scope: Any) -> bool:
    """Whether the request's path is written as the routes are. Any other spelling of a
    route (``/admin%2Frevocations``, ``//admin/revocations``, ``/admin/revocations/``) may
    name it here and not to a proxy in front that allows or denies by path, so none is
    routed: the router's own leniency (a trailing slash, a repeated one, an escaped one, all
    reaching the route) is not extended to what a gateway checked differently."""
    path: str = scope["path"]
    raw = scope.get("raw_path")
    # The server unquotes ``path`` from the raw bytes: any escape makes the two differ.
    if raw is not None and raw.decode("latin-1") != path:
        return False
    if path == "/":
        return True
    return not (
        path.endswith("/")
        or "//" in path
        or "/./" in path
        or "/../" in path
        or path.endswith(("/.", "/.."))
    )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def _answer(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _preflight(scope: Scope, send: Send, origin: str, listed: bool) -> None:
    """An OPTIONS preflight: allowed for an origin on some caller's list, else refused."""
    headers = [(b"vary", b"Origin")]
    if repeated_header(scope["headers"], _ORIGIN) is not None:
        # As on the routes themselves: which one counts is a guess (the first was allowed).
        status, refused, body = refusal_answer(scope, _AMBIGUOUS_ORIGIN)
        await _answer(send, status, headers + refused, body)
        return
    if listed:
        headers += [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-methods", _ALLOW_METHODS),
            (b"access-control-allow-headers", _ALLOW_HEADERS),
            (b"access-control-max-age", _MAX_AGE),
        ]
        await _answer(send, 204, headers, b"")
        return
    status, refused, body = refusal_answer(scope, _REFUSED_PREFLIGHT)
    await _answer(send, status, headers + refused, body)


@dataclass(slots=True)
class Passage:
    """One request through the edge: what its response headers and access line need."""

    request_id: str
    started: float
    origin: str | None
    listed: bool
    preflight: bool
    bound: bool = True


class Edge:
    """The edge's work, for the ASGI layer (``asgi``) and for routes the server answers
    without ASGI (``begin``, ``headers``, ``end`` around their own handling), so that both
    ways give the same headers and the same access line. ``allowed_origins`` (every origin
    any caller may use, read per request so that a reload applies) turns CORS on for the
    browser routes."""

    def __init__(
        self,
        metrics: Metrics,
        allowed_origins: Callable[[], frozenset[str]] | None = None,
        *,
        access_log: bool = True,
    ) -> None:
        self._metrics = metrics
        self._allowed_origins = allowed_origins
        self._access_log = access_log

    # A scope is Litestar's or uvicorn's (direct routes): the keys read here are in both.
    # ``bind``: the request id in the log context, for a request run as a task of its own;
    # a request answered from callbacks has no context of its own to bind it in.
    def begin(self, scope: Any, *, bind: bool = True) -> Passage:
        request_id = f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        if bind:
            structlog.contextvars.bind_contextvars(request_id=request_id)
        origin = None
        if self._allowed_origins is not None and scope["path"] in routes.BROWSER:
            origin = _header(scope, b"origin")
        listed = origin is not None and origin in self._allowed_origins()  # type: ignore[misc]
        preflight = (
            origin is not None
            and scope["method"] == "OPTIONS"
            and _header(scope, b"access-control-request-method") is not None
        )
        return Passage(request_id, time.perf_counter(), origin, listed, preflight, bind)

    def headers(
        self, passage: Passage, headers: list[tuple[bytes, bytes]], state: dict[str, Any]
    ) -> list[tuple[bytes, bytes]]:
        """A response's headers as they leave: no-store and nosniff, the request id, CORS."""
        out = [h for h in headers if h[0] not in _REPLACED]
        out += ON_EVERY_ANSWER
        out.append((b"x-request-id", passage.request_id.encode()))
        origin = passage.origin
        if origin is not None and not passage.preflight:
            out.append((b"vary", b"Origin"))
            if passage.listed and not state.get(CORS_DENIED):
                out.append((b"access-control-allow-origin", origin.encode("latin-1")))
                out.append((b"access-control-expose-headers", _EXPOSE_HEADERS))
        return out

    def end(self, passage: Passage, scope: Any, status: int) -> None:
        """Count the request and write its access line."""
        seconds = time.perf_counter() - passage.started
        path = scope["path"]
        self._metrics.observe_request(path if path in routes.ALL else "other", status, seconds)
        state = scope["state"]
        if self._access_log and not state.get(QUIET):
            access_line(
                scope["method"],
                path,
                status,
                state.get(PROBLEM_CODE),
                round(seconds * 1000, 3),
                passage.request_id,
                state.get(CALLER),
            )
        if passage.bound:
            structlog.contextvars.clear_contextvars()

    def asgi(self, app: ASGIApp, direct: dict[tuple[str, str], ASGIApp] | None = None) -> ASGIApp:
        """``app`` behind the edge. ``direct`` maps (method, path) to a handler called
        without the app's router (the hot route)."""
        shortcuts = direct or {}

        async def layer(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            passage = self.begin(scope)
            state = scope["state"]
            status = 500
            responded = False

            async def send_with_headers(message: Message) -> None:
                nonlocal status, responded
                if message["type"] == "http.response.start":
                    responded = True
                    status = message["status"]
                    message["headers"] = self.headers(
                        passage, list(message.get("headers", [])), state
                    )
                await send(message)

            try:
                if not canonical(scope):
                    # Answered, logged and counted as written: unquoted, "/admin%2Frevocations"
                    # read as a 404 of the route it is not (in `instance`, the access line and
                    # the route's request metrics).
                    if (raw := scope.get("raw_path")) is not None:
                        scope["path"] = raw.decode("latin-1")
                    await _answer(send_with_headers, *refusal_answer(scope, _NOT_CANONICAL))
                elif passage.preflight:
                    assert passage.origin is not None
                    await _preflight(scope, send_with_headers, passage.origin, passage.listed)
                elif (handler := shortcuts.get((scope["method"], scope["path"]))) is not None:
                    await handler(scope, receive, send_with_headers)
                else:
                    await app(scope, receive, send_with_headers)
            except asyncio.CancelledError:
                # Cancelled at the end of the shutdown grace: a problem document, not
                # uvicorn's plain-text 500 (the token route records and answers this itself).
                if responded:
                    raise
                await _answer(send_with_headers, *shutting_down(scope))
            finally:
                self.end(passage, scope, status)

        return layer


def shutting_down(scope: Any) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The answer to a request cut off at the end of the shutdown grace."""
    return refusal_answer(scope, _SHUTTING_DOWN)


def edge(
    app: ASGIApp,
    metrics: Metrics,
    allowed_origins: Callable[[], frozenset[str]] | None = None,
    *,
    access_log: bool = True,
    direct: dict[tuple[str, str], ASGIApp] | None = None,
) -> ASGIApp:
    """``app`` behind a new ``Edge`` (see there)."""
    return Edge(metrics, allowed_origins, access_log=access_log).asgi(app, direct)
