"""Driving an ASGI app in-process with raw bytes: any header name or value, any query
string, any body, none of it filtered by an HTTP client's or parser's own validation."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from litestar.types import ASGIApp


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


class AsgiDriver:
    """Runs the app's lifespan on a loop of its own; ``request`` calls it once."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self.loop = asyncio.new_event_loop()
        self._lifespan_in: asyncio.Queue[dict[str, Any]] | None = None
        self._lifespan_out: asyncio.Queue[dict[str, Any]] | None = None
        self._lifespan: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.loop.run_until_complete(self._start())

    async def _start(self) -> None:
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._lifespan_in, self._lifespan_out = inbox, outbox

        async def send(message: Any) -> None:
            await outbox.put(message)

        lifespan: Any = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        receive: Any = inbox.get
        running: Any = self._app(lifespan, receive, send)
        self._lifespan = asyncio.create_task(running)
        await inbox.put({"type": "lifespan.startup"})
        message = await outbox.get()
        assert message["type"] == "lifespan.startup.complete", message

    def stop(self) -> None:
        async def stop() -> None:
            assert self._lifespan_in is not None
            assert self._lifespan_out is not None
            await self._lifespan_in.put({"type": "lifespan.shutdown"})
            await self._lifespan_out.get()
            assert self._lifespan is not None
            await self._lifespan

        self.loop.run_until_complete(stop())
        self.loop.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        query: bytes = b"",
        body: bytes = b"",
    ) -> RawResponse:
        return self.loop.run_until_complete(self._request(method, path, headers, query, body))

    async def _request(
        self,
        method: str,
        path: str,
        headers: list[tuple[bytes, bytes]] | None,
        query: bytes,
        body: bytes,
    ) -> RawResponse:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode("utf-8", "surrogateescape"),
            "root_path": "",
            "query_string": query,
            "headers": list(headers or []),
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8080),
            "state": {},
        }
        sent_body = False
        started: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                started.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self._app(scope, receive, send)  # type: ignore[arg-type]
        return RawResponse(
            started["status"],
            {name.lower(): value for name, value in started.get("headers", [])},
            b"".join(chunks),
        )
