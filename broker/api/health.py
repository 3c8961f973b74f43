"""Liveness and readiness for orchestrators."""

from __future__ import annotations

import msgspec
import structlog
from litestar import MediaType, Response, get, head
from litestar.di import NamedDependency
from prometheus_client import CONTENT_TYPE_LATEST

from broker.api.auth import DEPENDENCIES
from broker.api.heads import headless
from broker.api.routes import HEALTHZ, METRICS, READYZ
from broker.observability import EveryInterval
from broker.resilience import STATE_VALUES
from broker.runtime import Runtime

log = structlog.get_logger("broker.api.health")
# Scrapes past their share of the time (broker.metrics.Exposition): a line a minute.
_SERVED_AGAIN_LINES = EveryInterval(60)

# Litestar adds the charset of text/* types itself.
_METRICS_MEDIA_TYPE = CONTENT_TYPE_LATEST.replace("; charset=utf-8", "")


_ALIVE = msgspec.json.encode({"status": "ok"})


@get(HEALTHZ, summary="The process is alive", operation_id="healthz", include_in_schema=False)
async def healthz() -> Response[bytes]:
    return Response(_ALIVE, media_type=MediaType.JSON)


@head(HEALTHZ, include_in_schema=False)
async def healthz_head() -> Response[None]:
    return headless(200, MediaType.JSON, len(_ALIVE))


@get(
    READYZ,
    summary="Ready to issue tokens",
    operation_id="readyz",
    include_in_schema=False,
    dependencies=DEPENDENCIES,
)
async def readyz(runtime: NamedDependency[Runtime]) -> Response[bytes]:
    report, status = await _readiness(runtime)
    return Response(report, status_code=status, media_type=MediaType.JSON)


@head(READYZ, include_in_schema=False, dependencies=DEPENDENCIES)
async def readyz_head(runtime: NamedDependency[Runtime]) -> Response[None]:
    report, status = await _readiness(runtime)
    return headless(status, MediaType.JSON, len(report))


async def _readiness(runtime: Runtime) -> tuple[bytes, int]:
    """The readiness report as sent, and its status: 200 ready, 503 not."""
    # While failing, each probe tries a write, so readiness returns without traffic.
    audit_ok = await runtime.audit.probe()
    # An open circuit (an MKA1 outage) does not make a replica unready: taken out of the
    # Service, every replica would leave callers with connection errors instead of a
    # 503 upstream_circuit_open that says what is wrong and when to retry.
    ready = audit_ok
    checks = {"config": "ok", "audit": "ok" if audit_ok else "failing"}
    detail: dict[str, object] = {"circuit": runtime.upstream.breaker.state}
    if not runtime.revocations.known:
        # Started while the shared store was away: it issues nothing until it has read the
        # bars in force (the kill switch), so it takes no traffic either.
        ready = False
        checks["revocations"] = "unread"
    if runtime.shared is not None:
        # Away, each replica runs on local state (limits / N): said here, never unready
        # once it has read the bars.
        detail["sharedState"] = {
            "state": "ok" if runtime.shared.up else "unreachable",
            "fallback": None if runtime.shared.up else "local state, limits / replicas",
        }
    if runtime.shipper is not None:
        # A store outage does not make a replica unready either (in async mode, tokens go on
        # with their file records); it shows here, in the metrics and in the log.
        status = runtime.shipper.status
        detail["auditStore"] = {
            "state": "ok" if status.up else "unreachable",
            "lagRecords": status.lag_records,
            "lagSeconds": round(status.lag_seconds, 1),
            "chainsStopped": sorted(status.stopped),
        }
        if runtime.settings.audit.store.mode == "sync" and (
            not status.up or runtime.audit.instance_id in status.stopped
        ):
            # In sync mode no token leaves without the store: this replica cannot issue,
            # whether the store is away or its own chain can no longer be shipped (each
            # request then waited out its deadline on a replica that said it was ready).
            ready = False
            checks["auditStore"] = "failing"
    report: dict[str, object] = {
        "status": "ready" if ready else "not_ready",
        "checks": checks,
        "detail": detail,
    }
    return msgspec.json.encode(report), 200 if ready else 503


@get(METRICS, summary="Prometheus metrics", include_in_schema=False, dependencies=DEPENDENCIES)
async def metrics(runtime: NamedDependency[Runtime]) -> Response[bytes]:
    runtime.metrics.circuit_state.set(STATE_VALUES[runtime.upstream.breaker.state])
    text, fresh = runtime.metrics.exposition.render()
    if not fresh and (count := _SERVED_AGAIN_LINES.due("metrics")) is not None:
        log.warning("metrics_served_again", count_since_last_line=count)
    return Response(text, media_type=_METRICS_MEDIA_TYPE)


@head(METRICS, include_in_schema=False)
async def metrics_head() -> Response[None]:
    # The exposition is not rendered to be thrown away: no Content-Length (RFC 9110 9.3.2
    # lets a HEAD answer leave out what only the content would tell). As sent by the GET:
    return headless(200, CONTENT_TYPE_LATEST)
