"""A small HTTP/1.1 load generator: keep-alive connections on raw asyncio streams, run in its
own process so it does not share the server's interpreter. It sends one prepared request
over and over and records every latency."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import uvloop


@dataclass
class LoadResult:
    requests: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, share: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def http_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
            break
    if length:
        await reader.readexactly(length)
    return status


async def _connection(
    host: str,
    port: int,
    make_request: Callable[[int], bytes],
    deadline: float,
    result: LoadResult,
    limit: int | None,
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    sequence = 0
    try:
        while time.perf_counter() < deadline and (limit is None or result.requests < limit):
            sequence += 1
            started = time.perf_counter()
            writer.write(make_request(sequence))
            try:
                status = await read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                result.errors += 1
                return
            result.latencies.append(time.perf_counter() - started)
            result.statuses[status] += 1
            result.requests += 1
    finally:
        writer.close()


@dataclass(frozen=True)
class LoadSpec:
    host: str
    port: int
    path: str
    body: bytes
    headers: dict[str, str]
    connections: int
    seconds: float
    # Give each request a distinct end user: "{n}" in the body is replaced by a counter.
    unique_users: bool = False
    limit: int | None = None


def run(spec: LoadSpec) -> LoadResult:
    """Blocking: run the load described by ``spec`` and return what happened."""

    async def main() -> LoadResult:
        result = LoadResult()
        fixed = http_request(spec.host, spec.port, spec.path, spec.body, spec.headers)

        def make_request_for(connection: int) -> Callable[[int], bytes]:
            if not spec.unique_users:
                return lambda _: fixed

            def unique(sequence: int) -> bytes:
                body = spec.body.replace(b"{n}", f"{connection}-{sequence}".encode())
                return http_request(spec.host, spec.port, spec.path, body, spec.headers)

            return unique

        started = time.perf_counter()
        deadline = started + spec.seconds
        await asyncio.gather(
            *(
                _connection(spec.host, spec.port, make_request_for(n), deadline, result, spec.limit)
                for n in range(spec.connections)
            )
        )
        result.seconds = time.perf_counter() - started
        return result

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())
