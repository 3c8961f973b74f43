"""``create_app(settings, api_key)``: the broker as a Litestar application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.exceptions import HTTPException
from litestar.types import ASGIApp

from broker.api.audit import audit_events
from broker.api.errors import ProblemError, handle_http_exception, handle_problem, handle_unexpected
from broker.api.health import healthz, readyz
from broker.api.middleware import request_context_middleware
from broker.api.openapi import openapi_document
from broker.api.tokens import issue_token
from broker.audit import CheckpointSigner
from broker.config import Secret, Settings
from broker.limits import MAX_BODY
from broker.runtime import Runtime


def create_app(
    settings: Settings, api_key: Secret, signer: CheckpointSigner | None = None
) -> Litestar:
    runtime = Runtime(settings, api_key, signer)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.close()

    app = Litestar(
        route_handlers=[issue_token, audit_events, healthz, readyz, openapi_document],
        exception_handlers={
            ProblemError: handle_problem,
            HTTPException: handle_http_exception,
            Exception: handle_unexpected,
        },
        lifespan=[lifespan],
        request_max_body_size=MAX_BODY,
        openapi_config=None,
        logging_config=None,
        debug=False,
    )
    app.state.runtime = runtime
    return app


def create_asgi(
    settings: Settings, api_key: Secret, signer: CheckpointSigner | None = None
) -> ASGIApp:
    """The app wrapped so that every response, a routing 404 or 405 included, gets a request
    id and no-store headers (Litestar runs app middleware only for matched routes)."""
    return request_context_middleware(create_app(settings, api_key, signer))
