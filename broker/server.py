"""Serving ASGI apps with uvicorn on httptools, a strict HTTP/1.1 parser (never h11)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
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


class _Server(uvicorn.Server):
    """A uvicorn server whose signals are handled by ``serve`` for all its servers at once:
    uvicorn's own handling lets the last server started take the signal, so the others
    (the broker, under ``broker dev``) would never run their shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


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
    return _Server(config)


def serve(*listeners: Listener) -> None:
    """Run the listeners in one uvloop event loop until SIGINT or SIGTERM."""
    servers = [_server(listener) for listener in listeners]

    def stop(signum: int) -> None:
        for server in servers:
            # A second SIGINT while stopping skips the graceful wait, as in uvicorn.
            if server.should_exit and signum == signal.SIGINT:
                server.force_exit = True
            server.should_exit = True

    async def run_all() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop, signum)
        await asyncio.gather(*(server.serve() for server in servers))

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run_all())


CONFIG_ENV = "BROKER_CONFIG"


def serve_granian(config_path: str, host: str, port: int, workers: int, grace: float) -> None:
    """Run the broker on granian (its HTTP/1.1 parser is hyper's, in Rust). Each worker is a
    process that builds the app from the config file named in ``BROKER_CONFIG``, so each
    has its own cache and its own audit chain, as with separate replicas."""
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops

    os.environ[CONFIG_ENV] = os.path.abspath(config_path)
    Granian(
        "broker.app:asgi_from_environment",
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        loop=Loops.uvloop,
        http=HTTPModes.http1,
        websockets=False,
        log_access=False,
        # Granian's own lines go through the root logger: JSON like every other line.
        log_dictconfig={
            "version": 1,
            "disable_existing_loggers": False,
            "loggers": {"_granian": {"handlers": [], "propagate": True}},
        },
        workers_kill_timeout=max(1, round(grace)),
    ).serve()
