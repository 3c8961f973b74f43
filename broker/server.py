"""Serving ASGI apps with uvicorn on httptools, a strict HTTP/1.1 parser (never h11), through
the bounded connection layer of ``broker/transport.py``."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import resource
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
import uvicorn
import uvloop
from litestar.types import ASGIApp

from broker.config import ServerSettings
from broker.forwarded import ForwardedFor
from broker.metrics import Metrics
from broker.observability import EveryInterval
from broker.transport import ConnectionLimits, DirectRoute, bounded

log = structlog.get_logger("broker.server")

# File descriptors kept back from client connections: audit files, the listening socket,
# JWKS fetches, logs, and (added per listener) the upstream pool.
_RESERVED_FILES = 32
# Each connection's kernel send buffer (the kernel doubles it for its own bookkeeping),
# set on the listening socket, whose connections inherit it. Autotuned, the kernel took
# 3 MB of answers a connection that a client did not read: 100 connections that asked for
# /openapi.json and read nothing held 312 MiB of the host's TCP memory (a pod's, under
# cgroup v2), and the connection cap allows ten times as many. The broker's answers are a
# few kilobytes; its largest (an auditor's page) still flows at 64 KiB a round trip.
SEND_BUFFER_BYTES = 64 * 1024


@dataclass(frozen=True)
class Listener:
    app: ASGIApp
    host: str
    port: int
    trusted_proxies: tuple[str, ...] = ()
    shutdown_grace_seconds: float = 20.0
    # None: uvicorn's own httptools protocol, unbounded (only for measuring what the bounds
    # cost, in bench/).
    limits: ConnectionLimits | None = field(default_factory=ConnectionLimits)
    # What its server's own log lines name as their component ("Started server process",
    # "Shutting down"): under ``broker dev`` the simulator's server shares the process.
    component: str = "broker"


def raise_file_limit() -> int:
    """Raise the soft file limit to the hard one (as nginx's worker_rlimit_nofile would) and
    return it: each connection costs a descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


class _RefusalReporter:
    """Counts every refused connection; logs each reason at most once a minute."""

    def __init__(self, metrics: Metrics | None, component: str) -> None:
        self._metrics = metrics
        self._component = component
        self._lines = EveryInterval(60)

    def __call__(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.connections_refused.labels(reason=reason).inc()
        if (count := self._lines.due(reason)) is not None:
            log.warning(
                "connections_refused",
                component=self._component,
                reason=reason,
                count_since_last_line=count,
            )


def connection_limits(
    settings: ServerSettings,
    metrics: Metrics | None = None,
    *,
    reserved_files: int = 0,
    component: str = "broker",
    direct: Mapping[tuple[bytes, bytes], DirectRoute] | None = None,
) -> ConnectionLimits:
    """The configured bounds, with the connection cap kept below the file limit."""
    files = raise_file_limit()
    room = max(8, files - _RESERVED_FILES - min(reserved_files, files // 4))
    return ConnectionLimits(
        max_head_bytes=settings.max_head_bytes,
        max_headers=settings.max_headers,
        head_timeout_seconds=settings.head_timeout_seconds,
        body_timeout_seconds=settings.body_timeout_seconds,
        max_connections=min(settings.max_connections, room),
        on_refusal=_RefusalReporter(metrics, component),
        direct=direct or {},
    )


class _Server(uvicorn.Server):
    """A uvicorn server whose signals are handled by ``serve`` for all its servers at once:
    uvicorn's own handling lets the last server started take the signal, so the others
    (the broker, under ``broker dev``) would never run their shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def uvicorn_config(app: Any, http: Any, **settings: Any) -> uvicorn.Config:
    """uvicorn as the broker runs it, on ``http`` (a protocol class, or "httptools"): the
    loop is the caller's, the logging and the access line the broker's own, no Server
    header, and not uvicorn's own proxy-header handling, which believes whatever text is
    forwarded (``ForwardedFor`` does it). ``settings`` add the rest (address, lifespan)."""
    return uvicorn.Config(
        app,
        http=http,
        loop="none",
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        **settings,
    )


def _server(listener: Listener) -> uvicorn.Server:
    forwarded = (
        ForwardedFor(listener.app, list(listener.trusted_proxies))  # type: ignore[arg-type]
        if listener.trusted_proxies
        else None
    )
    config = uvicorn_config(
        forwarded or listener.app,
        bounded(listener.limits, forwarded) if listener.limits is not None else "httptools",
        host=listener.host,
        port=listener.port,
        lifespan="on",
        # Idle keep-alive connections go when a head would be overdue anyway.
        timeout_keep_alive=(
            listener.limits.head_timeout_seconds if listener.limits is not None else 5
        ),
        timeout_graceful_shutdown=max(1, round(listener.shutdown_grace_seconds)),
    )
    return _Server(config)


class PortBusy(Exception):
    """A listener's address cannot be bound; the message says which and why. ``in_use``:
    the port is taken (another port helps), rather than the address not being one this
    host can listen on (another port does not)."""

    def __init__(self, message: str, *, in_use: bool = False) -> None:
        super().__init__(message)
        self.in_use = in_use


def _bind(listener: Listener) -> socket.socket:
    """The listening socket, bound here rather than inside uvicorn, whose bind failure is a
    traceback and exit status 3: a busy port is a one-line message instead."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            listener.host, listener.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise PortBusy(f"{listener.host}:{listener.port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        where = f"{listener.host}:{listener.port}"
        if exc.errno == errno.EADDRINUSE:
            raise PortBusy(f"{where} is already in use", in_use=True) from None
        raise PortBusy(f"{where}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


async def _serving(server: uvicorn.Server, sock: socket.socket, component: str) -> None:
    # gather runs each in a task of its own, so the binding is this server's alone.
    structlog.contextvars.bind_contextvars(component=component)
    await server.serve(sockets=[sock])


def serve(*listeners: Listener, on_ready: Callable[[], None] | None = None) -> None:
    """Run the listeners in one uvloop event loop until SIGINT or SIGTERM; ``on_ready`` is
    called once every one of them is accepting. Raises PortBusy before serving anything if
    an address cannot be bound."""
    sockets: list[socket.socket] = []
    try:
        for listener in listeners:
            sockets.append(_bind(listener))
    except PortBusy:
        for sock in sockets:
            sock.close()
        raise
    servers = [_server(listener) for listener in listeners]

    def stop(signum: int) -> None:
        for server in servers:
            # A second SIGINT while stopping skips the graceful wait, as in uvicorn.
            if server.should_exit and signum == signal.SIGINT:
                server.force_exit = True
            server.should_exit = True

    async def announce() -> None:
        while not all(server.started for server in servers):
            if any(server.should_exit for server in servers):
                return
            await asyncio.sleep(0.02)
        if on_ready is not None:
            on_ready()

    async def run_all() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop, signum)
        ready = asyncio.create_task(announce())
        await asyncio.gather(
            *(
                _serving(server, sock, listener.component)
                for server, sock, listener in zip(servers, sockets, listeners, strict=True)
            )
        )
        ready.cancel()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run_all())


CONFIG_ENV = "BROKER_CONFIG"


# How often a granian worker looks for its master (one getppid a second).
PARENT_CHECK_SECONDS = 1.0


def stop_when_orphaned(interval: float = PARENT_CHECK_SECONDS) -> threading.Thread:
    """In a granian worker: shut down (SIGTERM to itself, so the chain is sealed as at any
    stop) once the master that started it is gone. A master killed outright (kill -9, an
    OOM kill, a supervisor that signals only the pid it started) left its workers serving on
    the port, each with its cache, its rate limits and its audit chain, and unseen by
    whatever restarts the master. Not PR_SET_PDEATHSIG: that fires when the thread that
    forked the worker ends, which in the master need not be when the master does."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        log.warning("server_parent_gone", parent=parent)
        os.kill(os.getpid(), signal.SIGTERM)

    watcher = threading.Thread(target=watch, name="parent-watch", daemon=True)
    watcher.start()
    return watcher


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
