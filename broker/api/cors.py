"""CORS for browsers, by exact origin, per caller.

Litestar's CORS support takes one static allow-list for the whole app; here each client,
issuer and proxy has its own list, lists change on reload, and the final word is given per
request once the caller is known (``api/auth.py`` refuses a POST from an origin that is not
on the caller's list). This layer answers preflights for origins on any caller's list, and
adds ``Access-Control-Allow-Origin`` (that origin, never ``*``) to responses for them.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
from litestar.enums import ScopeType
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Message,
    Receive,
    Scope,
    Send,
)

from broker.api import routes
from broker.api.auth import CORS_DENIED
from broker.api.errors import PROBLEM_CODE, problem_type
from broker.models import FieldError, Problem

_PATHS = routes.BROWSER
_ALLOW_METHODS = b"GET, POST"
_ALLOW_HEADERS = b"Authorization, Content-Type, X-On-Behalf-Of, Cache-Control"
_EXPOSE_HEADERS = b"X-Request-ID, Retry-After"
_MAX_AGE = b"600"
_REFUSED_PREFLIGHT = msgspec.json.encode(
    Problem(
        type=problem_type("origin_not_allowed"),
        title="Forbidden",
        status=403,
        code="origin_not_allowed",
        detail="no caller of this broker may be used from this web origin",
        errors=[FieldError("Origin", "must be on a caller's cors_origins list")],
    )
)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def cors_middleware(app: ASGIApp, allowed_origins: Callable[[], frozenset[str]]) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or scope["path"] not in _PATHS:
            await app(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        if origin is None:
            await app(scope, receive, send)
            return
        listed = origin in allowed_origins()
        if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method"):
            headers = [(b"vary", b"Origin")]
            body = b""
            if not listed:
                body = _REFUSED_PREFLIGHT
                scope.setdefault("state", {})[PROBLEM_CODE] = "origin_not_allowed"
                headers += [
                    (b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode()),
                ]
            if listed:
                headers += [
                    (b"access-control-allow-origin", origin.encode("latin-1")),
                    (b"access-control-allow-methods", _ALLOW_METHODS),
                    (b"access-control-allow-headers", _ALLOW_HEADERS),
                    (b"access-control-max-age", _MAX_AGE),
                ]
            start: HTTPResponseStartEvent = {
                "type": "http.response.start",
                "status": 204 if listed else 403,
                "headers": headers,
            }
            await send(start)
            end: HTTPResponseBodyEvent = {
                "type": "http.response.body",
                "body": body,
                "more_body": False,
            }
            await send(end)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"vary", b"Origin"))
                denied = scope.get("state", {}).get(CORS_DENIED, False)
                if listed and not denied:
                    headers += [
                        (b"access-control-allow-origin", origin.encode("latin-1")),
                        (b"access-control-expose-headers", _EXPOSE_HEADERS),
                    ]
                message["headers"] = headers
            await send(message)

        await app(scope, receive, send_with_cors)

    return middleware
