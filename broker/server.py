"""Serving ASGI apps with uvicorn on httptools, a strict HTTP/1.1 parser (never h11)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import uvicorn
import uvloop
from litestar.types import ASGIApp


@dataclass(frozen=True)
class Listener:
    app: ASGIApp
    host: str
    port: int
    trusted_proxies: tuple[str, ...] = ()
    shutdown_grace_seconds: float = 20.0


def _server(listener: Listener) -> uvicorn.Server:
    config = uvicorn.Config(
        listener.app,
        host=listener.host,
        port=listener.port,
        http="httptools",
        loop="none",
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=bool(listener.trusted_proxies),
        forwarded_allow_ips=list(listener.trusted_proxies) or None,
        timeout_graceful_shutdown=max(1, round(listener.shutdown_grace_seconds)),
    )
    return uvicorn.Server(config)


def serve(*listeners: Listener) -> None:
    """Run the listeners in one uvloop event loop until SIGINT or SIGTERM."""
    servers = [_server(listener) for listener in listeners]

    async def run_all() -> None:
        await asyncio.gather(*(server.serve() for server in servers))

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run_all())
