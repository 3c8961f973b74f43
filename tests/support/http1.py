"""Raw HTTP/1.1 over a loopback socket, for tests that need what an HTTP client hides:
pipelining, chunked bodies, a body cut short, the exact response head."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key == name), None)

    def names(self) -> set[str]:
        return {key for key, _ in self.headers}

    def json(self) -> Any:
        return json.loads(self.body)


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def request(
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes = b"",
    *,
    length: bool = True,
    host: str | None = "test",
    version: str = "1.1",
) -> bytes:
    """One request's bytes; ``length`` adds Content-Length for ``body``, ``host`` a Host
    header (None: none)."""
    lines = [f"{method} {path} HTTP/{version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunked(body: bytes, trailer: bytes = b"") -> bytes:
    """``body`` as one chunk and the last, with ``trailer`` fields (each ending in CRLF)."""
    return b"%x\r\n" % len(body) + body + b"\r\n0\r\n" + trailer + b"\r\n"


class Reader:
    """Responses read one by one from a socket (Content-Length framed)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = b""

    def _fill(self) -> bool:
        chunk = self._sock.recv(65536)
        self._buffer += chunk
        return bool(chunk)

    def response(self) -> RawResponse:
        while b"\r\n\r\n" not in self._buffer:
            if not self._fill():
                raise ConnectionError(f"closed before a whole head: {self._buffer!r}")
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = []
        for line in header_lines:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        length = int(next((v for k, v in headers if k == "content-length"), "0"))
        while len(self._buffer) < length:
            if not self._fill():
                raise ConnectionError("closed before the whole body")
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        return RawResponse(int(status_line.split(" ", 2)[1]), headers, body)

    def closed(self) -> bool:
        """Whether the server closed the connection (after what was read)."""
        try:
            return not self._buffer and not self._fill()
        except (ConnectionResetError, TimeoutError):
            return True


def post_with_trailer(
    port: int, path: str, headers: dict[str, str], body: bytes, trailer: bytes
) -> RawResponse:
    """POST ``body`` to ``path`` chunked, with ``trailer`` fields after its last chunk."""
    sock = connect(port)
    try:
        sock.sendall(
            request("POST", path, headers | {"Transfer-Encoding": "chunked"}, length=False)
            + chunked(body, trailer)
        )
        return Reader(sock).response()
    finally:
        sock.close()


def end_user_in_trailer(port: int, auth: dict[str, str], audience: str) -> RawResponse:
    """POST /tokens with no end user but in a trailer field: ``X-On-Behalf-Of: admin`` after
    the last chunk, where a proxy in front checks only the head."""
    return post_with_trailer(
        port,
        "/tokens",
        {"Content-Type": "application/json", **auth},
        b'{"audience":"%s"}' % audience.encode(),
        b"X-On-Behalf-Of: admin\r\n",
    )
