"""Request id, no-store caching headers and one access log line for every request."""

from __future__ import annotations

import time
import uuid

import structlog
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from broker.metrics import Metrics

log = structlog.get_logger("broker.access")

# Set in a request's scope state by a handler whose refusal is already logged in bulk (a
# throttled address): that request gets no access line of its own.
QUIET = "quiet"

_NO_STORE = [
    (b"cache-control", b"no-store"),
    (b"pragma", b"no-cache"),
]


_ROUTES = frozenset(
    {
        "/tokens",
        "/tokens/policy",
        "/audit/events",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    }
)


def request_context_middleware(app: ASGIApp, metrics: Metrics) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
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
        finally:
            seconds = time.perf_counter() - started
            path = scope["path"]
            metrics.request_seconds.labels(
                route=path if path in _ROUTES else "other", status=str(status)
            ).observe(seconds)
            if not scope["state"].get(QUIET):
                log.info(
                    "request",
                    method=scope.get("method"),
                    path=scope["path"],
                    status=status,
                    duration_ms=round(seconds * 1000, 3),
                )
            structlog.contextvars.clear_contextvars()

    return middleware
