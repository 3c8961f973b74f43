"""The connection layer's lane in-process: uvicorn's protocol, bounded, on a loopback server
in a thread of the test, with a direct route whose lane and handle are fakes that say who
answered. A request the lane takes is answered from its callback; one it declines, or
whose body never completes, goes to the route's handle with the same body; pipelining,
Connection: close, a client gone before the answer, a failing lane and a trusted proxy's
client address all hold."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.server import ServerState

from broker.forwarded import ForwardedFor
from broker.server import uvicorn_config
from broker.transport import (
    MAX_PIPELINED,
    MAX_UNREAD_BODY,
    ConnectionLimits,
    DirectAnswer,
    DirectRoute,
    bounded,
)
from tests.support.http1 import Reader, chunked, connect, request
from tests.support.waiting import eventually

PATH = "/t"


def _answer(body: bytes, *extra: tuple[bytes, bytes]) -> DirectAnswer:
    if body.endswith(b"split"):
        # A header value that would split the response, as no route may send.
        extra = (*extra, (b"x-split", b"a\r\nx-injected: 1"))
    return 200, [(b"content-length", b"%d" % len(body)), *extra], body


@dataclass
class Fakes:
    """The route's two ways: the lane takes bodies starting with b"take" and answers after
    ``delay`` seconds; ``handle`` answers whatever reaches it."""

    loop: asyncio.AbstractEventLoop | None = None
    delay: float = 0.0
    offered: list[bytes] = field(default_factory=list)
    handled: list[bytes | None] = field(default_factory=list)
    clients: list[Any] = field(default_factory=list)
    replies: int = 0
    # The headers of each request offered to the lane.
    headers: list[list[tuple[bytes, bytes]]] = field(default_factory=list)
    # Reasons the connection layer reported refusing or closing a connection.
    refused: list[str] = field(default_factory=list)

    def lane(
        self, scope: dict[str, Any], body: bytes, reply: Callable[[DirectAnswer], None]
    ) -> bool:
        self.offered.append(body)
        self.headers.append(scope["headers"])
        self.clients.append(scope["client"])
        if body == b"raise":
            raise RuntimeError("a bug in the lane")
        if not body.startswith(b"take"):
            return False

        def answer() -> None:
            self.replies += 1
            reply(_answer(b"lane:" + body))

        assert self.loop is not None
        self.loop.call_later(self.delay, answer)
        return True

    async def handle(self, scope: dict[str, Any], body: bytes | None) -> DirectAnswer:
        self.handled.append(body)
        self.clients.append(scope["client"])
        return _answer(b"handle:" + (body if body is not None else b"(none)"))


# Larger than a loopback socket's buffers, so that a client that reads nothing blocks it.
_BIG = b"b" * (8 * 1024 * 1024)
# Smaller than them: the kernel takes all of it at once.
_MID = b"m" * (1024 * 1024)


async def _asgi(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/hold":
        await asyncio.sleep(0.5)  # answers late, and without reading its body
    body = _BIG if scope["path"] == "/big" else _MID if scope["path"] == "/mid" else b"asgi"
    if scope["path"] == "/headers":
        # Once the whole body is in, as a handler that reads a header after its body does.
        while (await receive()).get("more_body", False):
            pass
        body = b"|".join(b"%s=%s" % pair for pair in scope["headers"] if pair[0] != b"host")
    if scope["path"] == "/echo":
        body = b"echo:"
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
    if scope["path"] == "/stream":  # the big answer in pieces, each sent once there is room
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for start in range(0, len(_BIG), 65536):
            piece = _BIG[start : start + 65536]
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


@dataclass
class Server:
    port: int
    fakes: Fakes
    state: ServerState


@contextlib.contextmanager
def _serve(
    fakes: Fakes,
    *,
    trusted: list[str] | None = None,
    body_timeout: float = 10.0,
    write_timeout: float = 30.0,
    max_connections: int = 1024,
    head_timeout: float = 5.0,
) -> Iterator[Server]:
    limits = ConnectionLimits(
        head_timeout_seconds=head_timeout,
        body_timeout_seconds=body_timeout,
        write_timeout_seconds=write_timeout,
        max_connections=max_connections,
        on_refusal=fakes.refused.append,
        direct={(b"POST", PATH.encode()): DirectRoute(fakes.handle, 1024, fakes.lane)},
    )
    forwarded = ForwardedFor(_asgi, trusted) if trusted is not None else None
    config = uvicorn_config(forwarded or _asgi, bounded(limits, forwarded), lifespan="off")
    config.load()
    state = ServerState()
    loop = asyncio.new_event_loop()
    fakes.loop = loop
    started = threading.Event()
    port: list[int] = []

    stop: asyncio.Future[None] = loop.create_future()

    async def run() -> None:
        server = await loop.create_server(
            lambda: config.http_protocol_class(config=config, server_state=state, app_state={}),  # type: ignore[call-arg]
            "127.0.0.1",
            0,
        )
        port.append(server.sockets[0].getsockname()[1])
        started.set()
        await stop
        server.close()
        for connection in list(state.connections):
            connection.shutdown()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), daemon=True)
    thread.start()
    assert started.wait(5)
    yield Server(port[0], fakes, state)
    loop.call_soon_threadsafe(stop.set_result, None)
    thread.join(5)
    loop.close()


@pytest.fixture
def server() -> Iterator[Server]:
    with _serve(Fakes()) as serving:
        yield serving


def _post(body: bytes, **headers: str) -> bytes:
    return request("POST", PATH, headers, body)


def test_the_lane_answers_what_it_takes_and_handle_what_it_declines(server: Server) -> None:
    sock = connect(server.port)
    reader = Reader(sock)
    sock.sendall(_post(b"take 1"))
    assert reader.response().body == b"lane:take 1"
    sock.sendall(_post(b"leave"))
    assert reader.response().body == b"handle:leave"
    sock.close()
    assert server.fakes.offered == [b"take 1", b"leave"]
    assert server.fakes.handled == [b"leave"]


def test_pipelined_requests_are_answered_in_order_whoever_answers(server: Server) -> None:
    server.fakes.delay = 0.05  # the lane answers later than handle would
    sock = connect(server.port)
    reader = Reader(sock)
    sock.sendall(
        _post(b"take 1")
        + _post(b"leave 2")
        + request("GET", "/other", {}, length=False)
        + _post(b"take 3")
        + _post(b"take 4")
    )
    bodies = [reader.response().body for _ in range(5)]
    sock.close()
    # Requests queued behind another are run as tasks, as uvicorn queues its own: only the
    # first goes to the lane.
    assert bodies == [
        b"lane:take 1",
        b"handle:leave 2",
        b"asgi",
        b"handle:take 3",
        b"handle:take 4",
    ]


def _behind_a_late_answer(
    server: Server, waiting: int, *after: bytes
) -> tuple[socket.socket, Reader]:
    """A connection whose first request the lane answers late, so that the ``waiting``
    requests sent after it (``leave 1`` ...), then ``after``, queue behind it."""
    server.fakes.delay = 0.2
    sock = connect(server.port)
    queued = [_post(b"leave %d" % n) for n in range(1, waiting + 1)]
    sock.sendall(_post(b"take 0") + b"".join(queued) + b"".join(after))
    return sock, Reader(sock)


def test_past_the_pipelining_bound_the_next_request_gets_503_and_the_rest_is_never_read(
    server: Server,
) -> None:
    sock, reader = _behind_a_late_answer(server, 40)
    answers = [reader.response() for _ in range(MAX_PIPELINED + 2)]
    assert [a.body for a in answers[: MAX_PIPELINED + 1]] == [b"lane:take 0"] + [
        b"handle:leave %d" % n for n in range(1, MAX_PIPELINED + 1)
    ]
    refused = answers[-1]
    assert (refused.status, refused.header("connection")) == (503, "close")
    assert refused.header("content-type") == "application/problem+json"
    assert refused.json()["code"] == "too_many_pipelined"
    assert str(MAX_PIPELINED) in refused.json()["detail"]
    assert reader.closed()
    sock.close()
    # The requests after the refused one never reached the route, and only the first was
    # offered to the lane (the rest had to wait for it).
    assert server.fakes.handled == [b"leave %d" % n for n in range(1, MAX_PIPELINED + 1)]
    assert server.fakes.refused == ["too_many_pipelined"]


def test_an_upgrade_request_past_the_pipelining_bound_gets_the_503_too(server: Server) -> None:
    # No WebSocket library here, so uvicorn takes an upgrade as a plain request.
    upgrade = request(
        "GET",
        "/ws",
        {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
        },
        length=False,
    )
    sock, reader = _behind_a_late_answer(server, MAX_PIPELINED, upgrade, _post(b"leave never"))
    answers = [reader.response() for _ in range(MAX_PIPELINED + 2)]
    assert [a.status for a in answers] == [200] * (MAX_PIPELINED + 1) + [503]
    assert answers[-1].header("connection") == "close"
    assert reader.closed()
    sock.close()
    assert b"leave never" not in server.fakes.handled
    assert server.fakes.refused == ["too_many_pipelined"]


def test_pipelining_up_to_the_bound_is_answered_in_full_on_a_connection_kept_open(
    server: Server,
) -> None:
    sock, reader = _behind_a_late_answer(server, MAX_PIPELINED)
    answers = [reader.response() for _ in range(MAX_PIPELINED + 1)]
    assert all(a.status == 200 for a in answers)
    # Still open, and reading again: the next request is answered too.
    sock.sendall(_post(b"leave again"))
    assert reader.response().body == b"handle:leave again"
    sock.close()
    assert server.fakes.refused == []


def test_a_body_still_coming_after_its_answer_is_read_only_so_far_then_the_connection_closes(
    server: Server,
) -> None:
    # The ASGI app answers without reading the body (as a 413 for a Content-Length over the
    # limit does): uvicorn would read and drop the rest for as long as the client sent it.
    sock = connect(server.port)
    reader = Reader(sock)
    sock.sendall(request("POST", "/other", {"Content-Length": str(10**15)}, length=False))
    assert reader.response().body == b"asgi"
    sent = 0
    with contextlib.suppress(OSError):  # reset once the server has closed
        while sent < 64 * MAX_UNREAD_BODY:
            sock.sendall(b"a" * 65536)
            sent += 65536
    assert sent < 64 * MAX_UNREAD_BODY
    sock.close()
    eventually(lambda: server.fakes.refused == ["unread_body"], what="closed for its body")


def test_a_little_body_after_its_answer_is_dropped_and_the_connection_serves_on(
    server: Server,
) -> None:
    sock = connect(server.port)
    reader = Reader(sock)
    body = b"x" * 100_000
    sock.sendall(request("POST", "/other", {}, body))
    assert reader.response().body == b"asgi"
    sock.sendall(_post(b"take next"))
    assert reader.response().body == b"lane:take next"
    sock.close()
    assert server.fakes.refused == []


def test_an_answered_request_whose_body_stops_is_closed_at_the_body_timeout() -> None:
    with _serve(Fakes(), body_timeout=0.3) as serving:
        sock = connect(serving.port)
        reader = Reader(sock)
        sock.sendall(request("POST", "/other", {"Content-Length": "1000"}, length=False) + b"x")
        assert reader.response().body == b"asgi"
        assert reader.closed()  # within the timeout of the socket (5 s), silently
        sock.close()
        assert serving.fakes.refused == ["body_timeout"]


def _unread(port: int, path: str, **headers: str) -> socket.socket:
    """A connection with a small window that asked for ``path`` and reads nothing yet."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(request("GET", path, headers, length=False))
    return sock


def _a_caller_is_served(port: int) -> socket.socket:
    """A new connection's request, answered by the lane; the socket, to close."""
    sock = connect(port)
    reader = Reader(sock)
    sock.sendall(_post(b"take"))
    assert reader.response().body == b"lane:take"
    return sock


def _read_to_the_end(sock: socket.socket, pace: float = 0.0) -> tuple[bytes, bool]:
    """Everything the server sends, and whether it ended in a reset rather than its end."""
    received = b""
    sock.settimeout(10)
    try:
        while chunk := sock.recv(64 * 1024):
            received += chunk
            time.sleep(pace)
    except ConnectionResetError:
        return received, True
    return received, False


def test_a_client_that_reads_nothing_is_cut_off_at_the_write_timeout() -> None:
    with _serve(Fakes(), write_timeout=0.3) as serving:
        sock = _unread(serving.port, "/big")
        # Never read: the server's buffers fill, and it waits for the client...
        eventually(lambda: serving.fakes.refused == ["write_timeout"], what="cut off")
        # ... for the timeout only: the connection is gone (a reset, or the end of what it
        # had sent before the cut).
        sock.settimeout(5)
        received = 0
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
        assert received < len(_BIG)
        sock.close()


def test_a_client_that_reads_nothing_is_cut_off_though_its_next_head_is_due_first() -> None:
    with _serve(Fakes(), write_timeout=1.5, head_timeout=0.5, body_timeout=1.0) as serving:
        sock = _unread(serving.port, "/big")
        # The answer is handed to the transport whole, so the next head is due 0.5 s later,
        # and that close waits for the answer to be taken. It is still cut off by the write
        # timeout: before, closing ended the write timeout, and the socket (a file, 8 MiB
        # of buffer and a place under the connection cap) was held for ever.
        cut_off = ["head_timeout", "write_timeout"]
        eventually(lambda: serving.fakes.refused == cut_off, what="cut off")
        eventually(lambda: not serving.state.connections, what="the socket released")
        sock.close()


def test_a_closed_connection_whose_client_takes_nothing_is_reset_at_the_write_timeout() -> None:
    with _serve(Fakes(), write_timeout=0.5, body_timeout=1.0) as serving:
        # The whole answer fits in the kernel's buffers: the broker's close is done at
        # once, and the socket lingers with the kernel's megabyte for the client.
        sock = _unread(serving.port, "/mid", Connection="close")
        eventually(lambda: serving.fakes.refused == ["write_timeout"], what="reset")
        # Before, the kernel kept such a socket, out of the broker's hands, for minutes.
        received, reset = _read_to_the_end(sock)
        assert reset
        assert len(received) < len(_MID)
        sock.close()


def test_a_closed_connection_whose_client_reads_steadily_gets_its_whole_answer_and_its_end() -> (
    None
):
    with _serve(Fakes(), write_timeout=1.0, body_timeout=1.0) as serving:
        sock = _unread(serving.port, "/mid", Connection="close")
        time.sleep(0.3)  # the broker has closed its side by now
        # 8 KiB (the window) every 5 ms: far more than 64 KiB within each write timeout.
        received, reset = _read_to_the_end(sock, pace=0.005)
        assert not reset
        assert received.endswith(_MID)
        assert serving.fakes.refused == []
        sock.close()


def test_a_closed_connection_still_owed_its_answers_counts_under_the_connection_cap() -> None:
    with _serve(Fakes(), max_connections=1, body_timeout=1.0) as serving:
        lingering = _unread(serving.port, "/mid", Connection="close")
        time.sleep(1.5)  # stalled for over STALL_EVICTABLE_SECONDS
        sock = _a_caller_is_served(serving.port)
        # It made room, as an open connection stalled as long would have.
        assert serving.fakes.refused == ["evicted"]
        assert _read_to_the_end(lingering)[1]
        for each in (sock, lingering):
            each.close()


def test_a_body_that_trickles_in_gives_way_at_the_connection_cap() -> None:
    with _serve(Fakes(), max_connections=2, body_timeout=10.0) as serving:
        slow = []
        for _ in range(2):
            sock = connect(serving.port)
            # A whole head, then a body that comes a byte at a time, if ever: each held its
            # place for the whole body timeout, and a flood of them kept callers out.
            sock.sendall(request("POST", PATH, {"Content-Length": "100"}, length=False) + b"t")
            slow.append(sock)
        time.sleep(1.5)  # for over STALL_EVICTABLE_SECONDS, well within the body timeout
        sock = _a_caller_is_served(serving.port)
        assert serving.fakes.refused == ["evicted"]
        # The one evicted is told why, as its request's answer; the route saw no body.
        answers = []
        for each in slow:
            each.settimeout(0.5)
            with contextlib.suppress(TimeoutError):
                answers.append(Reader(each).response())
        assert [(a.status, a.json()["code"]) for a in answers] == [(503, "too_many_connections")]
        assert serving.fakes.handled == [None]
        for each in (sock, *slow):
            each.close()


def test_an_idle_connection_still_owed_its_answers_is_reset_when_evicted() -> None:
    with _serve(Fakes(), max_connections=1, body_timeout=1.0) as serving:
        # Answered whole (the kernel holds it all), so it waits for a head like any idle
        # keep-alive connection, but its client has taken none of the answer.
        owed = _unread(serving.port, "/mid")
        time.sleep(0.3)
        sock = _a_caller_is_served(serving.port)
        assert serving.fakes.refused == ["evicted"]
        # Reset: closed, it lingered with its megabyte under the cap it was evicted to
        # relieve.
        assert _read_to_the_end(owed)[1]
        for each in (sock, owed):
            each.close()


def test_a_client_that_reads_slowly_but_steadily_gets_its_whole_answer() -> None:
    # A body timeout of 1 s makes the deadline sweep run every 0.25 s.
    with _serve(Fakes(), write_timeout=0.3, body_timeout=1.0) as serving:
        sock = socket.socket()
        # A small window, read 64 KiB at a time every 20 ms: the part of the answer the
        # server's socket cannot hold (megabytes) waits for over a second, well over the
        # timeout and the sweep's interval, while the client never goes that long without
        # reading.
        # With a larger window the kernel took nearly all of it at once, and the test
        # passed by luck either way.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.connect(("127.0.0.1", serving.port))
        sock.sendall(request("GET", "/big", {}, length=False))
        received = b""
        started = time.monotonic()
        while not received.endswith(_BIG):  # the body is the last 8 MiB, all b"b"
            chunk = sock.recv(64 * 1024)
            assert chunk, "closed before the whole answer"
            received += chunk
            time.sleep(0.02)
        assert time.monotonic() - started > 0.3
        sock.close()
        assert serving.fakes.refused == []


def test_a_client_that_reads_a_trickle_is_cut_off_at_the_write_timeout() -> None:
    # A body timeout of 1 s makes the deadline sweep run every 0.25 s.
    with _serve(Fakes(), write_timeout=1.0, body_timeout=1.0) as serving:
        sock = _unread(serving.port, "/big")
        # 1 KiB every 50 ms: the server's unsent bytes fall between any two sweeps, so a
        # clock restarted by any progress never ran out, and a client reading this way
        # held its connection (and a place under the connection cap) for ever.
        received = 0
        started = time.monotonic()
        reset = False
        try:
            # Bounded, so that the old code fails rather than trickles for minutes.
            while time.monotonic() - started < 20 and (chunk := sock.recv(1024)):
                received += len(chunk)
                time.sleep(0.05)
        except ConnectionResetError:
            reset = True
        assert serving.fakes.refused == ["write_timeout"]
        # Reset, not closed: a plain close left the kernel delivering what the socket still
        # held (hundreds of kilobytes here) to a client that had already been cut off.
        assert reset
        assert 0 < received < len(_BIG)
        sock.close()


@pytest.mark.parametrize(
    ("path", "closed"),
    [
        ("/stream", []),  # an answer still being sent: the connection waits for no head
        ("/big", ["head_timeout"]),  # answered whole, then closed for want of a next head
    ],
)
def test_a_client_that_takes_none_of_its_answer_gives_way_at_the_connection_cap(
    path: str, closed: list[str]
) -> None:
    with _serve(Fakes(), max_connections=2, head_timeout=0.3, body_timeout=1.0) as serving:
        stalled = [_unread(serving.port, path) for _ in range(2)]
        # Both stalled for over STALL_EVICTABLE_SECONDS, well within the write timeout.
        time.sleep(1.5)
        assert serving.fakes.refused == closed * 2
        # A caller past the cap is served: the connection that has taken too little for
        # longest is reset to make room. Before, neither was a candidate (one answering,
        # or closed already), and callers got 503 for as long as the stalled ones held on.
        sock = _a_caller_is_served(serving.port)
        assert serving.fakes.refused == [*closed * 2, "evicted"]
        for other in (sock, *stalled):
            other.close()


def test_a_queued_request_buffers_little_of_its_body_however_many_answers_precede_it(
    server: Server,
) -> None:
    sock = connect(server.port)
    reader = Reader(sock)
    ahead = request("GET", "/other", {}, length=False) * MAX_PIPELINED
    sock.sendall(ahead + request("POST", "/hold", {"Content-Length": str(10**9)}, length=False))
    buffered: list[int] = []

    def sample() -> None:
        for connection in list(server.state.connections):
            cycle = getattr(connection, "cycle", None)
            if cycle is not None:
                buffered.append(len(cycle.body))

    sock.setblocking(False)
    started = time.monotonic()
    while time.monotonic() - started < 0.4:  # streaming the body while /hold waits
        with contextlib.suppress(BlockingIOError):
            sock.send(b"a" * 262144)
        sample()
    sock.setblocking(True)
    # uvicorn resumed reading after each of the 16 answers ahead: 16 reads (4 MB) buffered.
    assert max(buffered) <= HIGH_WATER_LIMIT + 256 * 1024
    assert [reader.response().body for _ in range(MAX_PIPELINED + 1)] == [b"asgi"] * (
        MAX_PIPELINED + 1
    )
    sock.close()


def test_a_client_that_ends_its_input_after_its_requests_still_gets_their_answers(
    server: Server,
) -> None:
    server.fakes.delay = 0.1  # the end of input is in before the lane answers
    sock = connect(server.port)
    reader = Reader(sock)
    sock.sendall(_post(b"take 1") + request("GET", "/other", {}, length=False) + _post(b"take 2"))
    # A half-close, as `nc -N` or a script that shuts its writing once the requests are out.
    # uvicorn took it for the client gone: each request ran (a token minted and recorded as
    # issued), and none of the answers was sent.
    sock.shutdown(socket.SHUT_WR)
    answers = [reader.response() for _ in range(3)]
    # (A request pipelined behind another goes to the route's handle, as always.)
    assert [a.body for a in answers] == [b"lane:take 1", b"asgi", b"handle:take 2"]
    # The last says the connection ends, and it does.
    assert [a.header("connection") for a in answers] == [None, None, "close"]
    assert reader.closed()
    sock.close()


def test_an_end_of_input_inside_a_body_is_the_client_gone(server: Server) -> None:
    sock = connect(server.port)
    sock.sendall(request("POST", PATH, {"Content-Length": "10"}, length=False) + b"take")
    sock.shutdown(socket.SHUT_WR)
    # The body can never be whole: the route sees none (and may record the attempt), and
    # the connection closes without an answer.
    assert Reader(sock).closed()
    eventually(lambda: server.fakes.handled == [None], what="the attempt seen")
    sock.close()


def test_an_end_of_input_on_an_idle_connection_closes_it(server: Server) -> None:
    sock = connect(server.port)
    reader = Reader(sock)
    sock.sendall(_post(b"take"))
    assert reader.response().body == b"lane:take"
    sock.shutdown(socket.SHUT_WR)
    assert reader.closed()
    sock.close()


def test_connection_close_is_honoured_by_a_lane_answer(server: Server) -> None:
    sock = connect(server.port)
    reader = Reader(sock)
    sock.sendall(_post(b"take", Connection="close"))
    answer = reader.response()
    assert (answer.body, answer.header("connection")) == (b"lane:take", "close")
    assert reader.closed()
    sock.close()


def test_a_body_cut_short_goes_to_handle_as_none(server: Server) -> None:
    sock = connect(server.port)
    whole = _post(b"take but never finished")
    sock.sendall(whole[:-5])
    time.sleep(0.1)
    sock.close()
    eventually(lambda: server.fakes.handled == [None], what="handle told of the cut")
    assert server.fakes.offered == []


def test_a_body_that_times_out_goes_to_handle_as_none() -> None:
    with _serve(Fakes(), body_timeout=0.2) as server:
        sock = connect(server.port)
        sock.sendall(_post(b"take but slowly")[:-3])
        answer = Reader(sock).response()
        sock.close()
        assert answer.status == 408
        eventually(lambda: server.fakes.handled == [None], what="handle told of the timeout")
        assert server.fakes.offered == []


def test_an_answer_for_a_client_gone_is_dropped(server: Server) -> None:
    server.fakes.delay = 0.2
    sock = connect(server.port)
    sock.sendall(_post(b"take"))
    time.sleep(0.05)
    sock.close()
    eventually(lambda: server.fakes.replies == 1, what="the late reply")
    eventually(lambda: not server.state.connections, what="the connection gone")
    # The next connection is served as ever.
    sock = connect(server.port)
    sock.sendall(_post(b"take again"))
    assert Reader(sock).response().body == b"lane:take again"
    sock.close()


def test_a_lane_that_raises_answers_500_once(server: Server) -> None:
    sock = connect(server.port)
    reader = Reader(sock)
    sock.sendall(_post(b"raise") + _post(b"take after"))
    failed, after = reader.response(), reader.response()
    sock.close()
    assert failed.status == 500
    assert failed.json()["code"] == "internal_error"
    assert after.body == b"lane:take after"
    assert server.fakes.handled == []


def test_a_header_that_would_split_the_response_is_a_500_from_either_way(
    server: Server,
) -> None:
    sock = connect(server.port)
    reader = Reader(sock)
    answers = []
    for body in (b"take split", b"leave split", b"take after"):
        sock.sendall(_post(body))
        answers.append(reader.response())
    sock.close()
    by_lane, by_handle, after = answers
    for answer in (by_lane, by_handle):
        assert answer.status == 500
        assert answer.json()["code"] == "internal_error"
        assert answer.header("x-injected") is None
    assert after.body == b"lane:take after"
    assert server.fakes.handled == [b"leave split"]


def test_a_trusted_proxy_names_the_client_for_the_lane_and_for_handle() -> None:
    with _serve(Fakes(), trusted=["127.0.0.1"]) as server:
        sock = connect(server.port)
        reader = Reader(sock)
        sock.sendall(_post(b"take", **{"X-Forwarded-For": "203.0.113.9"}))
        assert reader.response().body == b"lane:take"
        # Declined by the lane after the proxy headers were applied: handle sees the same.
        sock.sendall(_post(b"leave", **{"X-Forwarded-For": "203.0.113.10"}))
        assert reader.response().body == b"handle:leave"
        sock.close()
        # The lane's view of each, then handle's of the declined one.
        assert [client[0] for client in server.fakes.clients] == [
            "203.0.113.9",
            "203.0.113.10",
            "203.0.113.10",
        ]


def _refused_alone(server: Server, raw: bytes) -> tuple[int, dict[str, Any]]:
    """Send ``raw`` on a connection of its own; its one answer, and the connection closed."""
    sock = connect(server.port)
    reader = Reader(sock)
    sock.sendall(raw)
    answer = reader.response()
    assert answer.header("content-type") == "application/problem+json"
    assert reader.closed()
    sock.close()
    return answer.status, answer.json()


@pytest.mark.parametrize(
    ("host", "extra", "why"),
    [
        (None, {}, "must carry a Host header"),
        ("test", {"Host": "other"}, "exactly one Host header"),
        ("test", {"Host": "test"}, "exactly one Host header"),
        ("a b", {}, "host name or address"),
        ("evil/path", {}, "host name or address"),
        ("user@host", {}, "host name or address"),
        ("host:80:81", {}, "host name or address"),
        ("host:http", {}, "host name or address"),
        ("[::1", {}, "host name or address"),
        ("[fe80::1%eth0]", {}, "host name or address"),  # a zone is "%25" in a URI
        ("h\xf6st", {}, "host name or address"),
    ],
)
def test_an_http11_request_without_exactly_one_valid_host_is_400_before_any_route(
    server: Server, host: str | None, extra: dict[str, str], why: str
) -> None:
    status, problem = _refused_alone(server, request("POST", PATH, extra, b"take", host=host))
    assert (status, problem["code"]) == (400, "invalid_host")
    assert why in problem["detail"]
    assert [error["field"] for error in problem["errors"]] == ["Host"]
    assert server.fakes.offered == []
    assert server.fakes.handled == []
    assert server.fakes.refused == ["invalid_host"]


@pytest.mark.parametrize("coding", ["chunked", "gzip, chunked"])
def test_an_http10_request_with_transfer_encoding_is_400_its_framing_faulty(
    server: Server, coding: str
) -> None:
    # RFC 9112 6.1. It was decoded as chunked and served, where an HTTP/1.0 hop in front
    # (which knows no transfer coding) had checked the bytes as they came.
    head = {"Transfer-Encoding": coding}
    status, problem = _refused_alone(
        server, request("POST", PATH, head, chunked(b"take late"), length=False, version="1.0")
    )
    assert (status, problem["code"]) == (400, "malformed_http")
    assert [error["field"] for error in problem["errors"]] == ["Transfer-Encoding"]
    assert server.fakes.offered == []
    assert server.fakes.handled == []
    assert server.fakes.refused == ["malformed_http"]


@pytest.mark.parametrize(
    "raw",
    [
        request("POST", PATH + "#x", {}, b"take fragment"),
        request("GET", "/other#", {}, length=False),
        request("GET", "/other?q=1#x", {}, length=False),
    ],
)
def test_a_request_target_with_a_fragment_is_400_never_its_route(
    server: Server, raw: bytes
) -> None:
    # httptools dropped the fragment: "/admin/revocations#x" was served as the route, past a
    # gateway in front that denies the path as written.
    status, problem = _refused_alone(server, raw)
    assert (status, problem["code"]) == (400, "malformed_http")
    assert [error["field"] for error in problem["errors"]] == ["(request target)"]
    assert server.fakes.offered == []
    assert server.fakes.handled == []
    assert server.fakes.refused == ["malformed_http"]


@pytest.mark.parametrize("version", ["2.0", "0.9"])
@pytest.mark.parametrize("host", ["test", None])
def test_a_request_line_naming_another_http_version_is_505_never_its_route(
    server: Server, version: str, host: str | None
) -> None:
    # httptools takes both; such a request was served as HTTP/1.0 would be, without a Host.
    raw = request("POST", PATH, {}, b"take other version", version=version, host=host)
    status, problem = _refused_alone(server, raw)
    assert (status, problem["code"]) == (505, "http_version_not_supported")
    assert problem["title"] == "HTTP Version Not Supported"
    assert [error["field"] for error in problem["errors"]] == ["(request line)"]
    assert server.fakes.offered == []
    assert server.fakes.handled == []
    assert server.fakes.refused == ["http_version_not_supported"]


def test_a_request_naming_another_http_version_behind_others_is_answered_in_its_turn(
    server: Server,
) -> None:
    sock = connect(server.port)
    reader = Reader(sock)
    sock.sendall(_post(b"take first") + request("GET", "/other", {}, length=False, version="2.0"))
    first, second = reader.response(), reader.response()
    assert first.status == 200
    assert first.body.endswith(b":take first")
    assert second.status == 505
    assert reader.closed()
    sock.close()


_H2C = {"Upgrade": "h2c", "Connection": "Upgrade, HTTP2-Settings", "HTTP2-Settings": "AAMA"}
_WEBSOCKET = {"Upgrade": "websocket", "Connection": "upgrade"}


@pytest.mark.parametrize("asks", [_H2C, _WEBSOCKET])
def test_a_request_that_asks_to_upgrade_is_served_in_http_1_1_body_and_all(
    server: Server, asks: dict[str, str]
) -> None:
    """httptools stops at the head of a request that asks to upgrade (as `curl --http2`
    sends on plain HTTP) and skips its body: the body reached the application as empty, and
    its bytes were read as the next request."""
    sock = connect(server.port)
    reader = Reader(sock)
    # A body that would be a request of its own, read as one.
    body = b"GET /other HTTP/1.1\r\nHost: t\r\n\r\n"
    sock.sendall(request("POST", "/echo", asks, body))
    sock.sendall(request("GET", "/other", asks, length=False))
    sock.sendall(request("POST", PATH, asks, b""))
    sock.sendall(_post(b"take after"))
    answers = [reader.response() for _ in range(4)]
    assert [a.status for a in answers] == [200] * 4
    # Not plain requests, so not the direct route: the application answers them. The one
    # behind them is read and answered too.
    assert [a.body for a in answers[:3]] == [b"echo:" + body, b"asgi", b"asgi"]
    assert answers[3].body.endswith(b":take after")
    sock.close()
    assert server.fakes.refused == []


def test_the_body_of_a_request_that_asks_to_upgrade_may_come_in_pieces(server: Server) -> None:
    sock = connect(server.port)
    reader = Reader(sock)
    sent = request("POST", "/echo", _H2C, b"0123456789" * 1000) + _post(b"take next")
    head_end = sent.index(b"\r\n\r\n") + 4
    # The head with a byte of body, then the rest a few bytes at a time, the next request
    # starting in the same piece as the body's end.
    pieces = [sent[: head_end + 1]] + [
        sent[k : k + 997] for k in range(head_end + 1, len(sent), 997)
    ]
    for piece in pieces:
        sock.sendall(piece)
        time.sleep(0.001)
    first, second = reader.response(), reader.response()
    assert first.body == b"echo:" + b"0123456789" * 1000
    assert second.body.endswith(b":take next")
    sock.close()


def test_a_chunked_body_that_asks_to_upgrade_is_400_not_read_as_empty(server: Server) -> None:
    sock = connect(server.port)
    reader = Reader(sock)
    chunked = {**_H2C, "Transfer-Encoding": "chunked"}
    sock.sendall(request("POST", "/echo", chunked, b"5\r\nhello\r\n0\r\n\r\n", length=False))
    refused = reader.response()
    assert (refused.status, refused.json()["code"]) == (400, "unsupported_upgrade")
    assert [error["field"] for error in refused.json()["errors"]] == ["Upgrade"]
    assert refused.header("connection") == "close"
    assert reader.closed()
    sock.close()
    assert server.fakes.handled == []
    assert server.fakes.refused == ["unsupported_upgrade"]


@pytest.mark.parametrize(
    ("host", "version"),
    [
        ("broker.example:8443", "1.1"),
        ("127.0.0.1", "1.1"),
        ("[::1]:8080", "1.1"),
        ("[fe80::1%25eth0]:8080", "1.1"),  # RFC 6874's zone
        ("xn--bcher-kva.example", "1.1"),
        ("", "1.1"),  # RFC 9112 3.2: empty when the target has no authority
        (None, "1.0"),  # HTTP/1.0 has no Host
    ],
)
def test_a_host_of_any_valid_form_is_served(server: Server, host: str | None, version: str) -> None:
    sock = connect(server.port)
    reader = Reader(sock)
    sock.sendall(request("GET", "/other", {}, length=False, host=host, version=version))
    assert reader.response().body == b"asgi"
    sock.close()
    assert server.fakes.refused == []


def test_each_request_on_a_kept_connection_has_its_own_host_checked(server: Server) -> None:
    # The layer remembers the last Host that passed on a connection, to skip the pattern for
    # the same value again: a different value after it is checked anew.
    sock = connect(server.port)
    reader = Reader(sock)
    for _ in range(2):
        sock.sendall(request("GET", "/other", {}, length=False, host="broker.example"))
        assert reader.response().body == b"asgi"
    sock.sendall(request("GET", "/other", {}, length=False, host="evil/path"))
    refused = reader.response()
    assert (refused.status, refused.json()["code"]) == (400, "invalid_host")
    assert reader.closed()
    sock.close()
    assert server.fakes.refused == ["invalid_host"]


@pytest.mark.parametrize(
    ("bad", "answer"),
    [
        (request("POST", PATH, {}, b"take late", host=None), (400, "invalid_host")),
        (
            request(
                "POST", PATH, {"Transfer-Encoding": "gzip, chunked"}, b"0\r\n\r\n", length=False
            ),
            (501, "unsupported_transfer_coding"),
        ),
    ],
)
def test_a_refusal_behind_pipelined_requests_is_answered_in_its_turn(
    server: Server, bad: bytes, answer: tuple[int, str]
) -> None:
    sock, reader = _behind_a_late_answer(server, 2, bad, _post(b"leave never"))
    answers = [reader.response() for _ in range(4)]
    assert [a.body for a in answers[:3]] == [b"lane:take 0", b"handle:leave 1", b"handle:leave 2"]
    refused = answers[3]
    assert (refused.status, refused.json()["code"]) == answer
    # Named in the problem's errors, in its turn as when answered at once.
    field = {"invalid_host": "Host", "unsupported_transfer_coding": "Transfer-Encoding"}
    assert [error["field"] for error in refused.json()["errors"]] == [field[answer[1]]]
    assert refused.header("connection") == "close"
    assert reader.closed()
    sock.close()
    assert b"leave never" not in server.fakes.handled
    assert server.fakes.refused == [answer[1]]


@pytest.fixture(scope="module")
def shared_server() -> Iterator[Server]:
    with _serve(Fakes()) as serving:
        yield serving


_TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-ABCXYZ0123456789!#$%&'*+.^_`|~", min_size=1)
_NAMES = st.sampled_from(
    [
        "host",
        "content-length",
        "transfer-encoding",
        "expect",
        "connection",
        "upgrade",
        "content-type",
        "x-forwarded-for",
    ]
) | _TOKEN.map(lambda name: name[:40])
# Field values: any byte but CR, LF and NUL (which end or break the head for every parser).
_VALUES = st.binary(max_size=80).map(
    lambda value: value.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b"")
)
_HEADS = st.tuples(
    st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS"]) | _TOKEN.map(str.encode),
    st.sampled_from([PATH.encode(), b"/other", b"*", b"http://h/t"])
    | st.binary(min_size=1, max_size=40).filter(lambda t: not set(t) & set(b" \r\n\0")),
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]),
    st.lists(st.tuples(_NAMES.map(str.encode), _VALUES), max_size=6),
    st.binary(max_size=64),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(head=_HEADS)
def test_any_complete_head_gets_an_answer_that_is_never_a_500(
    shared_server: Server, head: tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]], bytes]
) -> None:
    method, target, version, fields, body = head
    lines = [b"%s %s %s" % (method, target, version)]
    lines += [name + b": " + value for name, value in fields]
    raw = b"\r\n".join(lines) + b"\r\n\r\n" + body
    sock = connect(shared_server.port, timeout=10)
    try:
        sock.sendall(raw)
        # Nothing more is coming: a body still owed reads as the end of the connection.
        sock.shutdown(socket.SHUT_WR)
        received = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
    finally:
        sock.close()
    if not received:
        # Closed without an answer only when the request never completed (a body owed).
        assert any(n.lower() in (b"content-length", b"transfer-encoding") for n, _ in fields)
        return
    status_line = received.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 "), received[:200]
    status = int(status_line.split(b" ")[1])
    assert status != 500, received[:500]
    assert 100 <= status < 600


def test_header_values_lose_the_whitespace_around_them_not_within_them(server: Server) -> None:
    # RFC 9110 5.5: "X-On-Behalf-Of: user_1 " names user_1, as h11 and every proxy read it.
    sent = b"X-A:  a b \t\r\nX-B:\tb\t \r\nX-C: \t \r\nX-D:d\r\n"
    sock = connect(server.port)
    reader = Reader(sock)
    sock.sendall(b"GET /headers HTTP/1.1\r\nHost: x\r\n" + sent + b"\r\n")
    assert reader.response().body == b"x-a=a b|x-b=b|x-c=|x-d=d"
    sock.sendall(b"POST /t HTTP/1.1\r\nHost: x \r\nContent-Length: 4 \r\n" + sent + b"\r\ntake")
    assert reader.response().body == b"lane:take"
    assert server.fakes.headers == [
        [(b"host", b"x"), (b"content-length", b"4"), *_SENT_AS_READ],
    ]
    sock.close()


_SENT_AS_READ = [(b"x-a", b"a b"), (b"x-b", b"b"), (b"x-c", b""), (b"x-d", b"d")]


def test_trailer_fields_are_dropped_never_read_as_headers(server: Server) -> None:
    # httptools reports a chunked body's trailer fields as headers: "X-On-Behalf-Of: admin"
    # after the last chunk named the end user for a handler that read it after the body,
    # where a proxy in front had checked only the head (RFC 9110 6.5.1: never merged).
    sock = connect(server.port)
    reader = Reader(sock)
    sock.sendall(
        b"POST /headers HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nX-A: a\r\n\r\n"
        b"2\r\n{}\r\n0\r\nX-On-Behalf-Of: admin\r\nAuthorization: Bearer planted\r\n\r\n"
    )
    assert reader.response().body == b"transfer-encoding=chunked|x-a=a"
    # The connection serves on.
    sock.sendall(b"GET /headers HTTP/1.1\r\nHost: x\r\nX-B: b\r\n\r\n")
    assert reader.response().body == b"x-b=b"
    sock.close()
    assert server.fakes.refused == []


_FRAMING_BOUND = ConnectionLimits().max_head_bytes


def _chunked(path: str, framing: bytes) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode() + (
        framing
    )


def _framing_past_the_bound_is_refused(
    server: Server, path: str, begun: bytes, filler: bytes
) -> None:
    """A chunked request to ``path`` whose framing (``begun``, then ``filler``) goes past a
    head's bound and stops there: a 413 naming the bound, the connection closed, counted as
    chunk_framing_too_large, and the request's task ended. Then the same framing sent
    without end: cut off all the same (an answer may be lost to the reset of unread input)."""
    sock = connect(server.port)
    reader = Reader(sock)
    sock.sendall(_chunked(path, begun + filler * (_FRAMING_BOUND + 100 - len(begun))))
    refused = reader.response()
    assert (refused.status, refused.json()["code"]) == (413, "chunk_framing_too_large")
    assert str(_FRAMING_BOUND) in refused.json()["detail"]
    assert refused.header("content-type") == "application/problem+json"
    assert reader.closed()
    sock.close()
    assert server.fakes.refused == ["chunk_framing_too_large"]
    eventually(lambda: not server.state.tasks, what="the request's task ended")

    sock = connect(server.port)
    sock.sendall(_chunked(path, begun))
    with contextlib.suppress(OSError):  # closed while sending: what is asserted below
        for _ in range(64):
            sock.sendall(filler * 1024)
    sock.settimeout(5)
    received = b""
    with contextlib.suppress(ConnectionResetError):  # closed with input unread: a reset
        while chunk := sock.recv(65536):
            received += chunk
    sock.close()
    assert received == b"" or received.startswith(b"HTTP/1.1 413 ")
    assert server.fakes.refused == ["chunk_framing_too_large"] * 2
    eventually(lambda: not server.state.tasks, what="the request's task ended")


def test_an_unfinished_trailer_section_past_a_heads_bound_is_refused(server: Server) -> None:
    # httptools keeps an unfinished trailer field whole, with no callback: a client that
    # never ended one grew the server by 150 MB in 8 s, on one connection.
    _framing_past_the_bound_is_refused(server, "/headers", b"2\r\n{}\r\n0\r\nX-Pad: ", b"p")


def test_an_endless_chunk_extension_is_refused(server: Server) -> None:
    # llhttp skips extensions without a callback: 4.6 GB were parsed in 8 s, on one
    # connection, before its body timeout.
    _framing_past_the_bound_is_refused(server, "/echo", b"2;e=", b"e")


def test_a_body_timeout_behind_pipelined_requests_is_answered_in_its_turn() -> None:
    with _serve(Fakes(), body_timeout=0.3) as server:
        # The first is answered after a second; the third's body stops after its head.
        server.fakes.delay = 1.0
        sock = connect(server.port)
        reader = Reader(sock)
        sock.sendall(_post(b"take 0") + _post(b"leave 1") + _chunked("/echo", b"2;e=x\r\n"))
        answers = [reader.response() for _ in range(3)]
        # Written at once, the 408 reached the client as the answer to "take 0".
        assert [a.body for a in answers[:2]] == [b"lane:take 0", b"handle:leave 1"]
        assert (answers[2].status, answers[2].json()["code"]) == (408, "request_timeout")
        assert answers[2].header("connection") == "close"
        assert reader.closed()
        sock.close()
        assert server.fakes.refused == ["body_timeout"]
        eventually(lambda: not server.state.tasks, what="the request's task ended")


def test_a_direct_routes_body_timeout_behind_pipelined_requests_is_answered_in_its_turn() -> None:
    with _serve(Fakes(), body_timeout=0.3) as server:
        server.fakes.delay = 1.0
        sock = connect(server.port)
        reader = Reader(sock)
        stalled = request("POST", PATH, {"Content-Length": "100"}, b"leave", length=False)
        sock.sendall(_post(b"take 0") + stalled)
        answers = [reader.response() for _ in range(2)]
        # Written at once, the 408 reached the client as the answer to "take 0".
        assert answers[0].body == b"lane:take 0"
        assert (answers[1].status, answers[1].json()["code"]) == (408, "request_timeout")
        assert answers[1].header("connection") == "close"
        assert reader.closed()
        sock.close()
        # The route still saw a body that never completed (a token route records it).
        assert server.fakes.handled == [None]
        assert server.fakes.refused == ["body_timeout"]
        eventually(lambda: not server.state.tasks, what="the request's task ended")


def test_a_body_in_many_small_chunks_is_read_whole(server: Server) -> None:
    # Its framing (sizes and line ends) outweighs it, and is still far below a head's bound.
    sock = connect(server.port)
    reader = Reader(sock)
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    for index in range(2000):
        sock.sendall(b"1;n=%d\r\n%d\r\n" % (index, index % 10))
    sock.sendall(b"0\r\nX-Checksum: 1\r\n\r\n")
    assert reader.response().body == b"echo:" + b"".join(b"%d" % (i % 10) for i in range(2000))
    sock.close()
    assert server.fakes.refused == []


class _Peer(asyncio.Transport):
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("192.0.2.7", 40000)}.get(name)

    def is_closing(self) -> bool:
        return False


def test_the_scope_a_request_begins_with_is_the_one_uvicorn_makes() -> None:
    # The layer inlines uvicorn's on_message_begin (a call through super() on every request
    # cost more than the body): a uvicorn that builds the scope otherwise shows up here.
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    config = uvicorn_config(_asgi, bounded(ConnectionLimits()), lifespan="off")
    config.load()
    loop = asyncio.new_event_loop()
    try:
        protocol: Any = config.http_protocol_class(  # type: ignore[call-arg]
            config=config, server_state=ServerState(), app_state={"from": "lifespan"}, _loop=loop
        )
        protocol.connection_made(_Peer())
        HttpToolsProtocol.on_message_begin(protocol)
        uvicorns = (protocol.scope, protocol.url, protocol.headers, protocol.expect_100_continue)
        protocol.on_message_begin()
        assert (protocol.scope, protocol.url, protocol.headers, protocol.expect_100_continue) == (
            uvicorns
        )
        assert protocol.scope["client"] == ("192.0.2.7", 40000)
        assert protocol.scope["headers"] is protocol.headers
        assert protocol.scope["state"] == {"from": "lifespan"}
        assert protocol.scope["state"] is not uvicorns[0]["state"]
    finally:
        loop.close()
