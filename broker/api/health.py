"""Liveness and readiness for orchestrators."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from broker.resilience import STATE_VALUES
from broker.runtime import Runtime


@get("/healthz", summary="The process is alive", operation_id="healthz", include_in_schema=False)
async def healthz() -> Response[dict[str, str]]:
    return Response({"status": "ok"})


@get("/readyz", summary="Ready to issue tokens", operation_id="readyz", include_in_schema=False)
async def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, object]]:
    runtime: Runtime = request.app.state.runtime
    # While failing, each probe tries a write, so readiness returns without traffic.
    audit_ok = await runtime.audit.probe()
    checks = {
        "config": "ok",
        "audit": "ok" if audit_ok else "failing",
        "circuit": "open" if runtime.upstream.breaker.state == "open" else "ok",
    }
    ready = all(value == "ok" for value in checks.values())
    return Response(
        {"status": "ready" if ready else "not_ready", "checks": checks},
        status_code=200 if ready else 503,
    )


@get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    runtime: Runtime = request.app.state.runtime
    runtime.metrics.circuit_state.set(STATE_VALUES[runtime.upstream.breaker.state])
    # Litestar adds the charset of text/* types itself.
    media_type = CONTENT_TYPE_LATEST.replace("; charset=utf-8", "")
    return Response(generate_latest(runtime.metrics.registry), media_type=media_type)
