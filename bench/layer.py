"""What the broker's connection layer costs a request, in-process: the same requests fed
through ``BoundedHttpToolsProtocol`` and through uvicorn's own ``HttpToolsProtocol`` on one
keep-alive connection, to the same ASGI app, in interleaved rounds, timed by the process's
CPU clock. No sockets and no load generator: a difference of a microsecond a request is
visible here, where ``make bench``'s head-to-head rounds of two servers spread by 8% between
two copies of one tree (``bench/notes.md``).

    python -m bench.layer [--rounds 7] [--requests 20000] [--app minimal|raw]

``minimal`` is ``bench.baseline``'s Litestar endpoint (what ``make bench``'s bounded-layer
verdict serves); ``raw`` is a bare ASGI app, so the layers' own costs are most of the time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import uvloop
from litestar import Litestar
from uvicorn.server import ServerState

from bench.baseline import tokens
from broker.server import uvicorn_config
from broker.transport import ConnectionLimits, bounded

_BODY = b'{"audience":"https://api.mka1.com","externalUserId":"hit-user","expiresIn":900}'
REQUEST = (
    b"POST /tokens HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: bench\r\n"
    b"Accept: */*\r\nContent-Type: application/json\r\n"
    b"Content-Length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY
)


async def _raw_app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await receive()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")],
        }
    )
    await send({"type": "http.response.body", "body": b"{}"})


class _Transport(asyncio.Transport):
    """A peer that takes every write and counts complete responses."""

    def __init__(self, ending: bytes) -> None:
        super().__init__()
        self.ending = ending
        self.answered = 0
        self.done: asyncio.Future[None] | None = None
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        written = bytes(data)
        if written.startswith(b"HTTP/") and not written.startswith(b"HTTP/1.1 200 "):
            # A refusal would never end as expected: stop the round instead of waiting.
            if self.done is not None and not self.done.done():
                self.done.set_exception(RuntimeError(written.split(b"\r\n", 1)[0].decode()))
            return
        # Every response here ends with its body, written last.
        if written.endswith(self.ending):
            self.answered += 1
            if self.done is not None and not self.done.done():
                self.done.set_result(None)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 40000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def _protocol(app: Any, ending: bytes, *, layer: str) -> tuple[asyncio.Protocol, _Transport]:
    # Deadlines no round reaches: the sweep would close the connection idle between rounds.
    limits = ConnectionLimits(head_timeout_seconds=3600, body_timeout_seconds=3600)
    http: Any = bounded(limits) if layer == "bounded" else "httptools"
    config = uvicorn_config(app, http, lifespan="off")
    config.load()
    protocol = config.http_protocol_class(  # type: ignore[call-arg]
        config=config, server_state=ServerState(), app_state={}
    )
    transport = _Transport(ending)
    protocol.connection_made(transport)
    return protocol, transport


async def _serve(protocol: asyncio.Protocol, transport: _Transport, requests: int) -> float:
    """CPU seconds a request, for ``requests`` requests one after the other."""
    loop = asyncio.get_running_loop()
    started = time.process_time()
    for _ in range(requests):
        transport.done = loop.create_future()
        protocol.data_received(REQUEST)
        await transport.done
        # The response is complete once its cycle says so; uvicorn then resumes reading.
        await asyncio.sleep(0)
    return (time.process_time() - started) / requests


async def _main(rounds: int, requests: int, app_name: str) -> dict[str, Any]:
    app: Any = _raw_app
    ending = b"{}"
    if app_name == "minimal":
        app = Litestar(route_handlers=[tokens], openapi_config=None, logging_config=None)
        ending = b"900}"
    layers = {name: _protocol(app, ending, layer=name) for name in ("bounded", "uvicorn")}
    for protocol, transport in layers.values():
        await _serve(protocol, transport, 500)  # warm up
    found: dict[str, list[float]] = {name: [] for name in layers}
    for number in range(rounds):
        order = list(layers) if number % 2 == 0 else list(reversed(layers))
        for name in order:
            found[name].append(await _serve(*layers[name], requests) * 1e6)
    for name, (_, transport) in layers.items():
        expected = 500 + rounds * requests
        if transport.answered != expected:
            raise RuntimeError(f"{name}: {transport.answered} answers, {expected} expected")
    bounded_us = statistics.median(found["bounded"])
    uvicorn_us = statistics.median(found["uvicorn"])
    return {
        "app": app_name,
        "requests_a_round": requests,
        "us_a_request": {name: [round(v, 2) for v in values] for name, values in found.items()},
        "median_us": {"bounded": round(bounded_us, 2), "uvicorn": round(uvicorn_us, 2)},
        "layer_adds_us": round(bounded_us - uvicorn_us, 2),
        "cpu_ratio_bounded_over_uvicorn": round(bounded_us / uvicorn_us, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--app", choices=("minimal", "raw"), default="minimal")
    args = parser.parse_args()
    result = uvloop.run(_main(args.rounds, args.requests, args.app))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
