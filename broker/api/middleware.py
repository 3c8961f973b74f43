"""Request id, no-store caching headers and one access log line for every request."""

from __future__ import annotations

import asyncio
import itertools
import os
import time

import msgspec
import structlog
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from broker.api import routes
from broker.api.errors import CALLER, PROBLEM_CODE, QUIET, problem_type
from broker.metrics import Metrics
from broker.models import Problem
from broker.observability import access_line

_NO_STORE = [
    (b"cache-control", b"no-store"),
    (b"pragma", b"no-cache"),
]


_SHUTTING_DOWN = msgspec.json.encode(
    Problem(
        type=problem_type("shutting_down"),
        title="Service Unavailable",
        status=503,
        code="shutting_down",
        detail="the broker stopped before this request finished; retry",
    )
)
_SHUTTING_DOWN_START: Message = {
    "type": "http.response.start",
    "status": 503,
    "headers": [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(_SHUTTING_DOWN)).encode()),
        (b"retry-after", b"1"),
    ],
}

_ROUTES = routes.ALL
# Request ids: unique, not secret (uuid4 per request showed in profiles). A random prefix
# per process keeps replicas apart; the counter keeps requests apart.
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)


def request_context_middleware(
    app: ASGIApp, metrics: Metrics, *, access_log: bool = True
) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        request_id = f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500

        responded = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                responded = True
                status = message["status"]
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name.lower() not in (b"cache-control", b"pragma")
                ]
                headers.extend(_NO_STORE)
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await app(scope, receive, send_with_headers)
        except asyncio.CancelledError:
            # Cancelled at the end of the shutdown grace: a problem document, not uvicorn's
            # plain-text 500 (the token route records and answers this itself).
            if responded:
                raise
            scope["state"][PROBLEM_CODE] = "shutting_down"
            await send_with_headers(_SHUTTING_DOWN_START)
            await send({"type": "http.response.body", "body": _SHUTTING_DOWN, "more_body": False})
        finally:
            seconds = time.perf_counter() - started
            path = scope["path"]
            metrics.observe_request(path if path in _ROUTES else "other", status, seconds)
            if access_log and not scope["state"].get(QUIET):
                state = scope["state"]
                line = {
                    "method": scope.get("method"),
                    "path": scope["path"],
                    "status": status,
                    "code": state.get(PROBLEM_CODE),
                    "duration_ms": round(seconds * 1000, 3),
                    "request_id": request_id,
                }
                if (caller := state.get(CALLER)) is not None:
                    line["caller"] = caller
                access_line(line)
            structlog.contextvars.clear_contextvars()

    return middleware
