"""``create_app(settings, api_key)``: the broker as a Litestar application."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import NamedTuple

from litestar import Litestar
from litestar.exceptions import HTTPException
from litestar.types import ASGIApp

from broker.api.admin import revocations
from broker.api.audit import audit_events
from broker.api.edge import Edge, edge
from broker.api.errors import ProblemError, handle_http_exception, handle_problem, handle_unexpected
from broker.api.health import (
    healthz,
    healthz_head,
    metrics,
    metrics_head,
    readyz,
    readyz_head,
)
from broker.api.openapi import openapi_document, openapi_document_head
from broker.api.policy import caller_policy, caller_policy_head
from broker.api.privileged import record_fault
from broker.api.routes import TOKENS
from broker.api.tokens import direct as tokens_direct
from broker.api.tokens import direct_route, issue_token
from broker.audit.signing import CheckpointSigner
from broker.config import Settings
from broker.rules import MAX_BODY
from broker.runtime import Runtime
from broker.transport import DirectRoute


def create_app(
    settings: Settings,
    signer: CheckpointSigner | None = None,
    config_path: str | Path | None = None,
) -> Litestar:
    """Build the app. Raises ConfigError if a secret it needs cannot be read."""
    runtime = Runtime(settings, signer, config_path)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await runtime.start()
        # Everything built so far lives as long as the process: keep it out of the
        # collector's way, so that full collections stay short (they showed in p99).
        gc.collect()
        gc.freeze()
        # The store's threads (shipping, readers) hold the GIL for a pass at a time; the
        # default 5 ms before the loop may take it back showed as the requests' p99.
        sys.setswitchinterval(0.001)
        loop = asyncio.get_running_loop()
        if config_path is not None:
            loop.add_signal_handler(signal.SIGHUP, runtime.reload)
        try:
            yield
        finally:
            if config_path is not None:
                loop.remove_signal_handler(signal.SIGHUP)
                # Removing restores the default, which kills: not while the chain is sealed.
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
            await runtime.close()

    app = Litestar(
        route_handlers=[
            issue_token,
            caller_policy,
            caller_policy_head,
            audit_events,
            revocations,
            openapi_document,
            openapi_document_head,
            # With a telemetry port, probes and metrics are served there only (as dex and
            # oauth2-proxy do): the public port, and any Ingress in front of it, carry the API.
            *(TELEMETRY_ROUTES if settings.server.telemetry_port is None else ()),
        ],
        exception_handlers={
            ProblemError: handle_problem,
            HTTPException: handle_http_exception,
            Exception: handle_unexpected,
        },
        after_exception=[record_fault],
        lifespan=[lifespan],
        request_max_body_size=MAX_BODY,
        openapi_config=None,
        logging_config=None,
        debug=False,
    )
    app.state.runtime = runtime
    return app


TELEMETRY_ROUTES = (healthz, healthz_head, readyz, readyz_head, metrics, metrics_head)


def create_telemetry_app(runtime: Runtime) -> ASGIApp:
    """Probes and metrics, for ``server.telemetry_port``: the same runtime as the API (its
    lifespan is the API app's), the same headers, no access log (probes would fill it)."""
    app = Litestar(
        route_handlers=list(TELEMETRY_ROUTES),
        exception_handlers={
            ProblemError: handle_problem,
            HTTPException: handle_http_exception,
            Exception: handle_unexpected,
        },
        openapi_config=None,
        logging_config=None,
        debug=False,
    )
    app.state.runtime = runtime
    return edge(app, runtime.metrics, access_log=False)


def create_asgi(
    settings: Settings,
    signer: CheckpointSigner | None = None,
    config_path: str | Path | None = None,
) -> ASGIApp:
    """The app wrapped so that every response, a routing 404 or 405 included, gets a request
    id and no-store headers (Litestar runs app middleware only for matched routes)."""
    return create_served(settings, signer, config_path)[0]


class Served(NamedTuple):
    """What the server layer serves: the ASGI app behind the edge, the runtime behind it
    (for the server layer's metrics), and the routes it answers without ASGI."""

    app: ASGIApp
    runtime: Runtime
    direct: dict[tuple[bytes, bytes], DirectRoute]


def create_served(
    settings: Settings,
    signer: CheckpointSigner | None = None,
    config_path: str | Path | None = None,
) -> Served:
    """``create_asgi``, with the runtime and the direct routes. ``POST /tokens`` is served
    three ways, all with the same behaviour: by the server without ASGI (a plain request),
    by the edge without the router (any other POST), and through Litestar's router
    (every other method: 405, and OpenAPI)."""
    app = create_app(settings, signer, config_path)
    runtime: Runtime = app.state.runtime
    front = Edge(runtime.metrics, lambda: runtime.snapshot.cors_origins)
    layer = front.asgi(app, {("POST", TOKENS): tokens_direct(runtime)})
    return Served(layer, runtime, {(b"POST", TOKENS.encode()): direct_route(runtime, front)})


def asgi_from_environment() -> ASGIApp:
    """The factory a multi-process server (granian) calls in each worker: the config file
    named in ``BROKER_CONFIG``, logging set up, the app built."""
    from broker.config import load_settings
    from broker.observability import configure_logging
    from broker.secrets import load_signer
    from broker.server import CONFIG_ENV, stop_when_orphaned

    stop_when_orphaned()
    config_path = os.environ[CONFIG_ENV]
    settings = load_settings(config_path)
    configure_logging(settings.logging.level)
    app = create_asgi(settings, load_signer(settings), config_path)
    if not settings.server.trusted_proxies:
        return app
    # Granian reads no X-Forwarded-For itself: the same rules as on uvicorn.
    from broker.forwarded import ForwardedFor

    return ForwardedFor(app, list(settings.server.trusted_proxies))  # type: ignore[arg-type,return-value]
