"""The HTTP/1.1 connection layer: uvicorn's httptools protocol with the bounds it lacks.

uvicorn (0.54) bounds neither the request head nor the time a client may take to send it:
an unfinished 48 MiB header is buffered inside httptools, a client that sends a byte every
two seconds (or nothing at all) keeps its socket for ever, and enough such sockets exhaust
the file limit so that no caller gets an answer. This protocol adds, before any handler runs:

- a head budget: at most ``max_head_bytes`` (request line and headers) and ``max_headers``
  header fields, else 431 and the connection is closed;
- a head timeout: from the moment a connection opens, or a response completes, the client
  has ``head_timeout_seconds`` to deliver a complete head (408, or a silent close when it
  sent nothing);
- a body timeout: once the head is in, the body must arrive within ``body_timeout_seconds``;
- transfer codings: ``chunked`` or none; any other (``gzip, chunked``, say) is 501, since the
  body would reach the handler still encoded;
- a connection cap: beyond ``max_connections`` the oldest connection that is still waiting
  for a head is closed to make room (slowloris sockets give way to callers), else the one
  stalled longest (for at least ``STALL_EVICTABLE_SECONDS``) on a body still to come or on
  answers its client does not take (see the write timeout); if there is none, the new
  connection gets 503 and is closed;
- a bound on a body nobody reads: a request answered before its body was in (a 413 for a
  Content-Length over the limit, a 401) had the rest of its body read and dropped for as
  long as the client sent it, past the body timeout (one connection kept 40% of a core
  busy for as long as it sent). At most ``MAX_UNREAD_BODY`` more bytes are read, within the
  body timeout, so that the connection can serve the next request; then it is closed;
- a write timeout: a response the client stops taking (the socket's buffers full) may
  wait ``write_timeout_seconds`` for the client to take ``MIN_TAKEN`` bytes of it (or all
  of it), and so on until it is all taken, else the connection is closed; uvicorn waited
  for ever. It holds after the broker closes the connection too (a head timeout, a
  refusal, ``Connection: close``): such a close waits for the answers to be taken, and the
  socket stays open meanwhile, in the transport's buffer and then in the kernel's (a
  ``_Lingering`` socket, counted under the connection cap). A connection cut off is reset,
  so that the kernel does not go on sending what it holds;
- a bound on a body buffered for a request still waiting in the queue: uvicorn pauses
  reading at 64 KiB of unread body, but resumes after every answer ahead of it, so a
  queued request's body grew a read (256 KiB) per answer: 4 MB a connection. Reading now
  resumes only once the request being read has taken what is buffered;
- a pipelining bound: uvicorn parses every request in each read and queues them all, so
  one connection that sends a megabyte of 30-byte requests held 70 MB of queued requests.
  At most ``MAX_PIPELINED`` wait behind the one being answered; the next is answered 503
  in its turn, the rest of the input is never read, and the connection then closes;
- Host: an HTTP/1.1 request without exactly one Host header of a host's syntax is 400
  (RFC 9112 3.2); uvicorn answered it;
- upgrades: none is taken (RFC 9110 7.8 lets a server carry on in HTTP/1.1), but httptools
  stops reading at the head of a request that asks for one, so a request with a body and
  ``Upgrade`` reached the handler with an empty body (a valid token request was answered
  ``malformed_json`` and recorded so), and what followed it was dropped. Such a body is
  now read here and the request served; a chunked one is refused 400 ``unsupported_upgrade``;
- a chunked body's framing: trailer fields are dropped, and chunk sizes, extensions and
  trailers together may take ``max_head_bytes``, else 413 and the connection is closed
  (httptools copied an unfinished trailer field at every byte, and llhttp parsed an
  endless chunk extension unseen).

A refusal of a request queued behind others on its connection is answered in its turn.

Every refusal is an RFC 9457 problem document, written by the protocol itself because no
application is running for it yet.

**Direct routes.** A listener may name routes (method and exact path) answered without
ASGI: once the whole body is in, the protocol awaits the route with the request's scope and
body and writes its answer in one write. uvicorn's ASGI cycle (an event per request, a
receive and two sends through its generic header checks, two writes) cost more than
everything the broker does for a cache hit (issue 12, bench/RESULTS.md). Only a plain
request takes this way: HTTP/1.1, one ``Content-Length`` within the route's body limit, no
``Transfer-Encoding``, ``Expect`` or upgrade; anything else goes to the ASGI app, which
serves the same route with the same behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import socket
import struct
import sys
import termios
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

import httptools
import msgspec
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT, FlowControl
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from broker.forwarded import ForwardedFor
from broker.models import ON_EVERY_ANSWER, FieldError, Problem

# Bytes of a body read and dropped after its request was answered, before the connection
# is closed instead: as Go's net/http, enough to keep a connection whose client sent a
# little more, not a stream.
MAX_UNREAD_BODY = 256 * 1024
# Requests that may wait, on one connection, behind the one being answered. Clients that
# pipeline at all send a few; each waiting request holds its head (up to max_head_bytes).
MAX_PIPELINED = 16
# What a client must take of the answers it is sent within each write timeout, once they
# fill the socket's buffers: one transport buffer's worth. Any progress at all restarted
# the clock before, so a client that read a kilobyte a second held its socket for ever.
# At 30 s that is 2.2 KB a second, which any client that means to read its answer beats.
MIN_TAKEN = HIGH_WATER_LIMIT
# How long a connection must have been stalled (a body still to come, answers not taken)
# before it may be closed to make room for a new one at the connection cap: longer than a
# busy client's pause, far shorter than the body and write timeouts.
STALL_EVICTABLE_SECONDS = 1.0


@dataclass(frozen=True)
class ConnectionLimits:
    max_head_bytes: int = 32 * 1024
    max_headers: int = 100
    head_timeout_seconds: float = 5.0
    body_timeout_seconds: float = 10.0
    max_connections: int = 1024
    # How long a response may wait for a client to take MIN_TAKEN bytes of it (the socket's
    # buffers full): uvicorn waits for ever.
    write_timeout_seconds: float = 30.0
    # Told the reason of every connection refused or closed by a bound (metrics, logs).
    on_refusal: Callable[[str], None] | None = None
    # Routes answered without ASGI (see the module's doc), by (method, exact path).
    direct: Mapping[tuple[bytes, bytes], DirectRoute] = field(default_factory=dict)


# A direct route's answer: status, headers (lower-case names), body.
DirectAnswer = tuple[int, list[tuple[bytes, bytes]], bytes]


# A route's way to answer without a task: given the scope, the whole body and ``reply``, it
# returns False, having done nothing, to leave the request to the route's ``handle``; or True,
# and then calls ``reply`` exactly once, later, on the loop.
Lane = Callable[[dict[str, Any], bytes, Callable[[DirectAnswer], None]], bool]


@dataclass(frozen=True)
class DirectRoute:
    """A route answered without ASGI. ``handle`` gets the request's scope (as uvicorn built
    it, the client address already taken from trusted proxy headers) and the whole body, or
    None when the body never completed (the client went away, or the body timeout struck):
    the route may still want to record the attempt. Its answer must carry Content-Length.

    ``lane``, if given, is offered each complete body first (see ``LaneCycle``)."""

    handle: Callable[[dict[str, Any], bytes | None], Awaitable[DirectAnswer]]
    max_body: int
    lane: Lane | None = None


_ENCODER = msgspec.json.Encoder()

# RFC 3986's host (an IP literal in brackets, with RFC 6874's zone, or a name of unreserved,
# percent-encoded and sub-delimiter characters), then an optional port; empty is allowed
# (RFC 9112 3.2, a target without an authority).
_HOST = re.compile(
    rb"(\[[0-9A-Fa-f:.]+(%25[A-Za-z0-9\-._~%]+)?\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(:[0-9]{0,5})?"
)
_HOST_RULE = "must be sent exactly once, a host name or address with an optional port"


# The header a refusal is about, and its rule: the problem's ``errors``, as every route's.
HeaderRule = tuple[str, str]
# "#" as a byte value: ``in`` with an int is a byte scan, where with b"#" it went through the
# buffer protocol, 7 times the cost on every request (137 against 18 ns, timeit).
_FRAGMENT = ord("#")
# The versions an HTTP/1 request line may name here, as httptools spells them.
_SPOKEN = frozenset({"1.1", "1.0"})
# SO_LINGER on with no time: close() resets the connection, whatever it still held to send.
_RESET = struct.pack("ii", 1, 0)
# The ioctl for the bytes a socket holds and has not sent yet: SIOCOUTQNSD on Linux, which
# is what a client that stops reading leaves there (its window closed). SIOCOUTQ (TIOCOUTQ,
# elsewhere) counts what is on its way too: over a real network every answer's last window
# for a round trip, so a close of a client that reads well would have looked owed.
_NOT_SENT: int | None = (
    0x894B if sys.platform.startswith("linux") else getattr(termios, "TIOCOUTQ", None)
)


def _queued(sock: Any) -> int:
    """Bytes in a socket's send queue not sent yet (0 where that cannot be known)."""
    if _NOT_SENT is None:
        return 0
    with contextlib.suppress(OSError, ValueError):
        queued = fcntl.ioctl(sock.fileno(), _NOT_SENT, b"\0\0\0\0")
        return int.from_bytes(queued, sys.byteorder, signed=True)
    return 0


def _took_enough(before: int, unsent: int) -> bool:
    """Whether a client with ``before`` bytes of answers to take, ``unsent`` of them left
    now, took enough to restart the write timeout's clock: ``MIN_TAKEN``, or all of them."""
    return before - unsent >= min(MIN_TAKEN, before)


def _reset(sock: Any) -> None:
    """Make the socket's close a reset, dropping what it still holds to send: closed as
    asyncio closes it, the kernel went on delivering up to megabytes of answers to a
    client that takes nothing, in a socket no process held any more."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)


class _Lingering:
    """A socket the broker has closed while the kernel still held answers for its client:
    kept open (a duplicate of its file, its end already sent) until the client has taken
    them, under the write timeout's rule. Let go, the kernel kept such a socket with
    megabytes unsent for over five minutes (338 s here) after the process closed it, for a
    client that read nothing, out of every bound of the broker's: a few small requests for
    ``/openapi.json`` on a connection that then went quiet pinned 3 MB of the host's memory
    for TCP."""

    __slots__ = ("before", "since", "sock")

    def __init__(self, sock: socket.socket, since: float, before: int) -> None:
        self.sock = sock
        self.since = since
        self.before = before

    def reset(self) -> None:
        """Closed as a reset: the client is dropped with what it has not taken."""
        _reset(self.sock)
        self.sock.close()


def _problem_answer(
    status: int, code: str, detail: str, header: HeaderRule | None = None
) -> DirectAnswer:
    """A problem document as an answer: status, headers and body."""
    errors = None if header is None else [FieldError(*header)]
    body = _ENCODER.encode(Problem.of(status, code, detail, errors=errors))
    headers = [
        (b"content-type", b"application/problem+json"),
        (b"content-length", b"%d" % len(body)),
        *ON_EVERY_ANSWER,
    ]
    return status, headers, body


def _problem_bytes(status: int, code: str, detail: str, header: HeaderRule | None) -> bytes:
    """A problem document on the wire, closing the connection."""
    answer = _problem_answer(status, code, detail, header)
    return _response_bytes([], *answer, keep_alive=False)


ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


def _problem_app(status: int, code: str, detail: str, header: HeaderRule | None) -> ASGIApp:
    """An ASGI app that answers a problem document: a refusal queued behind the requests a
    connection has pipelined before it, so that it is answered in its turn."""
    _, headers, body = _problem_answer(status, code, detail, header)

    async def answer(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return answer


_TOO_MANY_PIPELINED = (
    503,
    "too_many_pipelined",
    f"at most {MAX_PIPELINED} requests may wait for their answers on one connection; "
    "those after this one were not read: send them again",
)


class _BoundedFlow(FlowControl):
    """uvicorn's flow control, except that reading stays paused while the request being
    read holds more unread body than uvicorn pauses at, and its answer is still to come:
    uvicorn resumes after each answer ahead of a queued request, and each resume added a
    read to a body nobody was taking (its handler resumes reading itself when it asks)."""

    def __init__(self, transport: asyncio.Transport, protocol: HttpToolsProtocol) -> None:
        super().__init__(transport)
        self._protocol = protocol

    def resume_reading(self) -> None:
        if not self.read_paused:
            return  # the common case, on every answer and every read of a body
        cycle = self._protocol.cycle
        if cycle is not None and not cycle.response_complete and len(cycle.body) > HIGH_WATER_LIMIT:
            return
        super().resume_reading()


class DirectCycle(RequestResponseCycle):
    """One request on a direct route. It is uvicorn's cycle, so that the protocol's
    pipelining, shutdown and disconnect handling work on it unchanged; only its run differs:
    the route is awaited with the whole body and its answer written at once."""

    route: DirectRoute
    proxy: ForwardedFor | None
    # The answer in place of the route's, for a body that stopped while this request waited
    # in line: the route still sees the body as never completed (and records the attempt).
    stopped: DirectAnswer | None = None

    async def run_asgi(self, app: Any) -> None:  # the name the protocol starts a cycle by
        try:
            # Started at once only when it waited behind a pipelined request.
            while self.more_body and not self.disconnected and self.stopped is None:
                self.flow.resume_reading()
                await self.message_event.wait()
                self.message_event.clear()
            if self.proxy is not None:
                self.proxy.believe(self.scope)
            body = None if self.more_body else bytes(self.body)
            status, headers, content = await self.route.handle(self.scope, body)  # type: ignore[arg-type]
            if self.stopped is not None:
                status, headers, content = self.stopped
        except BaseException as exc:
            # A route answers its own failures; this is the last resort, as uvicorn's.
            self.logger.error("Exception in direct route", exc_info=exc)
            status, headers, content = _INTERNAL
        finally:
            self.body = bytearray()
        await self._write((status, headers, content))
        self.on_response = _ignore

    async def _write(self, answer: DirectAnswer) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected or self.response_complete:
            return
        self.response_started = True
        self.transport.write(
            _answer_bytes(self.default_headers, answer, self.keep_alive, self.logger)
        )
        self.response_complete = True
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.on_response()


def _ignore() -> None:
    pass


def _response_bytes(
    default_headers: list[tuple[bytes, bytes]],
    status: int,
    headers: list[tuple[bytes, bytes]],
    content: bytes,
    keep_alive: bool,
) -> bytes:
    parts = [STATUS_LINE[status]]
    for name, value in (*default_headers, *headers):
        # The same guard as uvicorn's send: no header may split the response.
        if _UNSAFE_VALUE.search(value):
            raise RuntimeError("Invalid HTTP header value.")
        parts += (name, b": ", value, b"\r\n")
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    parts += (b"\r\n", content)
    return b"".join(parts)


def _answer_bytes(
    default_headers: list[tuple[bytes, bytes]],
    answer: DirectAnswer,
    keep_alive: bool,
    logger: logging.Logger,
) -> bytes:
    """The answer as it goes on the wire; a 500 instead if a header value would split the
    response (nothing of it is sent)."""
    try:
        return _response_bytes(default_headers, *answer, keep_alive)
    except RuntimeError as exc:
        logger.error("Exception in direct route", exc_info=exc)
        return _response_bytes(default_headers, *_INTERNAL, keep_alive)


class _NoWaiter:
    """A lane cycle's message event: the protocol sets it, nothing waits on it."""

    __slots__ = ()

    def set(self) -> None:
        pass


_NO_WAITER = _NoWaiter()


class LaneCycle:
    """A request on a direct route with a lane, answered from callbacks: no cycle object of
    uvicorn's, no Event, no task and no coroutine, which together cost more than the
    route's own work for a cache hit (bench/RESULTS.md). It holds what uvicorn's protocol
    reads and writes of a cycle while the body arrives (body, more_body, disconnected,
    keep_alive, the response flags). Once the body is in, the lane is offered the request;
    if it declines, or the body never completes, a ``DirectCycle`` takes over with the same
    state and the route's ``handle`` answers as it always does."""

    __slots__ = (
        "body",
        "disconnected",
        "keep_alive",
        "message_event",
        "more_body",
        "protocol",
        "proxied",
        "response_complete",
        "response_started",
        "route",
        "scope",
    )

    def __init__(
        self,
        protocol: BoundedHttpToolsProtocol,
        route: DirectRoute,
        scope: dict[str, Any],
        keep_alive: bool,
    ) -> None:
        self.protocol = protocol
        self.route = route
        self.scope = scope
        self.keep_alive = keep_alive
        self.body = bytearray()
        self.more_body = True
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.message_event = _NO_WAITER
        # The proxy headers already applied to the scope (by ``offer``).
        self.proxied = False

    def offer(self) -> bool:
        """Offer the whole request to the lane: whether it took it."""
        lane = self.route.lane
        if lane is None or self.more_body or self.disconnected:
            return False
        protocol = self.protocol
        if (proxy := protocol._proxy) is not None:
            proxy.believe(self.scope)  # type: ignore[arg-type]
            self.proxied = True
        try:
            taken = lane(self.scope, bytes(self.body), self.reply)
        except Exception as exc:
            # Whatever the lane did before it failed, the request is answered, once.
            protocol.logger.error("Exception in direct route", exc_info=exc)
            self.reply(_INTERNAL)
            taken = True
        if taken:
            self.body = bytearray()
        return taken

    def _gone(self) -> bool:
        """Nobody to answer: the client went, or the server closed the connection meanwhile
        (a bound, a forced shutdown) and it has not been told yet."""
        return self.disconnected or self.response_complete or self.protocol.transport.is_closing()

    def reply(self, answer: DirectAnswer) -> None:
        protocol = self.protocol
        if self._gone():
            return
        if protocol.flow.write_paused:
            # The client is not reading: write once it does, as a cycle would (its next
            # request is not read meanwhile, so its unread answers cannot pile up).
            task = protocol.loop.create_task(self._reply_drained(answer))
            task.add_done_callback(protocol.tasks.discard)
            protocol.tasks.add(task)
            return
        self._write(answer)

    async def _reply_drained(self, answer: DirectAnswer) -> None:
        await self.protocol.flow.drain()
        if not self._gone():
            self._write(answer)

    def _write(self, answer: DirectAnswer) -> None:
        protocol = self.protocol
        data = _answer_bytes(
            protocol.server_state.default_headers, answer, self.keep_alive, protocol.logger
        )
        self.response_started = True
        protocol.transport.write(data)
        self.response_complete = True
        if not self.keep_alive:
            protocol.transport.close()
        protocol.on_response_complete()

    def handover(self) -> DirectCycle:
        """The same request as a ``DirectCycle``, to be run as a task."""
        protocol = self.protocol
        cycle = protocol._direct_cycle(self.route, self.scope, self.keep_alive)
        cycle.body = self.body
        cycle.more_body = self.more_body
        cycle.disconnected = self.disconnected
        if self.proxied:
            # Applied once is enough: run again, it would read the headers a second time.
            cycle.proxy = None
        return cycle


_UNSAFE_VALUE = re.compile(b"[\x00-\x08\x0a-\x1f\x7f]")
_INTERNAL = _problem_answer(500, "internal_error", "an unexpected error occurred")


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, bounded. ``limits`` is set per listener by ``bounded``.

    Deadlines are plain numbers set per request and checked by one sweep per listener a few
    times a second: a timer armed and cancelled twice per request cost about 9% of a minimal
    endpoint's throughput (bench/); a stored float costs nothing measurable.
    """

    limits: ClassVar[ConnectionLimits] = ConnectionLimits()
    # The listener's sweep, started with its first connection (one class per listener).
    _sweeping: ClassVar[bool] = False
    # Who the client is behind a trusted proxy, for the direct routes (the ASGI app is
    # wrapped in the same instance).
    _proxy: ClassVar[ForwardedFor | None] = None
    # The listener's sockets closed with answers still to be taken (see ``_Lingering``).
    _lingering: ClassVar[list[_Lingering]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # When a complete head is due (None: not waiting for one), and a complete body.
        self._head_due: float | None = None
        self._body_due: float | None = None
        # Bytes received while waiting for a head: an unfinished head lives inside
        # httptools, where no callback can see it grow.
        self._head_bytes_received = 0
        # What this head may still take, in bytes and in fields (below 0: too large).
        # Counted down, the limits are read once a request rather than once a field.
        self._head_left = 0
        self._headers_left = 0
        # A chunked body's framing received so far (chunk sizes, extensions, the trailer
        # section): bytes no callback sees, and an unfinished trailer field httptools keeps
        # whole, copied at every byte. Counted per feed as what was received less the body.
        self._framing_bytes = 0
        self._body_bytes_fed = 0
        self._head_bytes_in_feed = 0
        self._message_ended_in_feed = False
        self._in_head = False
        self._refused = False
        # A refusal queued behind pipelined requests (_refuse_in_turn): the input is no
        # longer read, and the queue is answered.
        self._queued_refusal = False
        # When the transport last stopped taking writes, or last took some of what it held
        # after that (None: it takes them); and how much it held then.
        self._write_blocked_since: float | None = None
        self._write_buffered = 0
        # Closed by a reset (see _close_silently): nothing is left to linger.
        self._reset = False
        # Body bytes dropped since this request was answered (see on_body).
        self._unread = 0
        # A Transfer-Encoding other than plain ``chunked`` in this head (see on_header).
        self._unknown_coding = False
        # Any Transfer-Encoding in this head: an HTTP/1.0 request may carry none.
        self._coded = False
        # This head's Host fields (see _host_refusal).
        self._hosts: list[bytes] = []
        # The last Host value that passed on this connection (see _host_refusal).
        self._host_passed: bytes | None = None
        # Body bytes still to come of a request that asked to upgrade: httptools skips such
        # a body, so it is read here (see _read_skipped_body).
        self._skipped_body = 0
        # A direct route's cycle whose body is still arriving: it starts once the body is in
        # (or can no longer come, so that the route can still record the attempt).
        self._deferred: DirectCycle | LaneCycle | None = None

    # --- connection ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = _BoundedFlow(transport, self)
        cls = type(self)
        if not cls._sweeping:
            cls._sweeping = True
            self._schedule_sweep(self.connections)
        self._await_head()
        open_sockets = len(self.connections) + len(cls._lingering)
        if open_sockets > self.limits.max_connections and not self._evict_one():
            self._refuse(503, "too_many_connections", "the broker is at its connection limit")

    def pause_writing(self) -> None:
        super().pause_writing()
        self._write_blocked_since = self.loop.time()
        self._write_buffered = self._unsent()

    def resume_writing(self) -> None:
        super().resume_writing()
        if not self.transport.is_closing():
            # Closing, what is left must still be taken in time (see _check_deadlines).
            self._write_blocked_since = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_due = self._body_due = self._write_blocked_since = None
        if exc is None and not self._reset:
            # A close of ours (or the client's end of input): the socket's file is still
            # open here, in asyncio and in uvloop alike.
            self._linger()
        super().connection_lost(exc)
        self._start_deferred()

    def eof_received(self) -> bool | None:  # type: ignore[override]
        """The client ended its input (a half-close, as ``nc -N`` does, or a script that
        shuts its writing once its requests are out): the requests it sent whole are still
        answered, the last one with ``Connection: close``, and the connection then closes.
        uvicorn took it for the client gone: each request ran (a token minted and recorded
        as issued), and no answer was sent. A request whose body is still to come can never
        be whole: that is the client gone, as before. (uvicorn's own returns None, and
        asyncio's protocol says ``bool | None``: True keeps the transport open to write.)"""
        cycle = self.cycle
        if (
            self._refused
            or cycle is None
            or cycle.more_body
            or (cycle.response_complete and not self.pipeline)
        ):
            return None  # asyncio closes the transport
        cycle.keep_alive = False
        self._head_due = None  # no head can come
        return True

    def _evict_one(self) -> bool:
        """Close the connection that has waited longest for a head, else the one stalled
        longest (for at least ``STALL_EVICTABLE_SECONDS``) on a body that has not all come
        or on answers its client has not taken, if any (not this one)."""
        waiting: BoundedHttpToolsProtocol | None = None
        stalled_since = self.loop.time() - STALL_EVICTABLE_SECONDS
        evict_stalled: Callable[[], None] | None = None
        for lingering in self._lingering:
            if lingering.since <= stalled_since:
                stalled_since, evict_stalled = lingering.since, partial(self._drop, lingering)
        body_timeout = self.limits.body_timeout_seconds
        for other in self.connections:
            if other is self or not isinstance(other, BoundedHttpToolsProtocol):
                continue
            due = other._head_due
            if (
                due is not None
                and not other._refused
                and (waiting is None or due < waiting._head_due)  # type: ignore[operator]
            ):
                waiting = other
            blocked = other._write_blocked_since
            if blocked is not None and blocked <= stalled_since:
                # Its client is not keeping up with what it was sent, and may have been
                # closed already with answers still unsent: nothing more reaches it in time.
                stalled_since = blocked
                evict_stalled = partial(other._close_silently, "evicted", abort=True)
            body_due = other._body_due
            if body_due is not None and (head_in := body_due - body_timeout) <= stalled_since:
                # A body still coming after a second, where bodies are at most 16 KiB: as
                # a slowloris head, it holds a place for no one's benefit.
                stalled_since, evict_stalled = head_in, other._crowded_out
        if waiting is not None:
            if waiting._unsent():
                # Its client has not taken its last answers either: closed, the socket
                # would linger with them, under the very cap this eviction relieves.
                waiting._close_silently("evicted", abort=True)
            else:
                waiting._close_waiting("evicted")
        elif evict_stalled is not None:
            evict_stalled()
        else:
            return False
        return True

    def _drop(self, lingering: _Lingering) -> None:
        """Reset a lingering socket to make room (see ``_evict_one``)."""
        self._lingering.remove(lingering)
        lingering.reset()
        self._report("evicted")

    def _crowded_out(self) -> None:
        self._stop_body(
            503,
            "too_many_connections",
            "the broker is at its connection limit, and this request's body was the slowest "
            "to come",
            reason="evicted",
        )

    # --- deadlines -------------------------------------------------------------------

    def _schedule_sweep(self, connections: set[Any]) -> None:
        interval = min(self.limits.head_timeout_seconds, self.limits.body_timeout_seconds) / 4
        interval = min(1.0, max(0.05, interval))
        loop = self.loop
        cls = type(self)

        def sweep() -> None:
            now = loop.time()
            for connection in list(connections):
                if isinstance(connection, BoundedHttpToolsProtocol):
                    connection._check_deadlines(now)
            if cls._lingering:
                cls._check_lingering(now)
            loop.call_later(interval, sweep)

        loop.call_later(interval, sweep)

    def _unsent(self) -> int:
        """Bytes of answers not yet taken by the client: the transport's buffer, and what
        the socket has not sent (its drain shows first: the transport refills the socket
        only once a third of it is free, a megabyte or more on loopback)."""
        unsent = self.transport.get_write_buffer_size()
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            unsent += _queued(sock)
        return unsent

    def _linger(self) -> None:
        """Keep the socket, closed with answers its client has still to take, until it takes
        them (see ``_Lingering``)."""
        sock = self.transport.get_extra_info("socket")
        if sock is None or not (unsent := _queued(sock)):
            return
        try:
            kept = socket.socket(fileno=os.dup(sock.fileno()))
        except OSError:
            return
        try:
            # The end of the answers, as the close meant: the file asyncio closes next is
            # no longer the socket's last, so that close would not send it.
            kept.shutdown(socket.SHUT_WR)
        except OSError:
            kept.close()
            return
        self._lingering.append(_Lingering(kept, self.loop.time(), unsent))

    @classmethod
    def _check_lingering(cls, now: float) -> None:
        """Let go of the lingering sockets whose clients took everything; reset those that
        took too little within the write timeout; restart the clock of those that took
        enough (the write timeout's rule, as for an open connection)."""
        kept: list[_Lingering] = []
        for lingering in cls._lingering:
            unsent = _queued(lingering.sock)
            if unsent <= 0:
                lingering.sock.close()
                continue
            if _took_enough(lingering.before, unsent):
                lingering.since, lingering.before = now, unsent
            elif now - lingering.since >= cls.limits.write_timeout_seconds:
                lingering.reset()
                cls._report("write_timeout")
                continue
            kept.append(lingering)
        cls._lingering[:] = kept

    def _check_deadlines(self, now: float) -> None:
        blocked = self._write_blocked_since
        transport = self.transport
        if blocked is None and transport.is_closing() and transport.get_write_buffer_size():
            # Closed with answers its client has not taken yet: the socket stays open until
            # they are (asyncio flushes before it closes), so they are timed as if paused.
            self._write_blocked_since = now
            self._write_buffered = self._unsent()
        elif blocked is not None:
            buffered = self._unsent()
            before = self._write_buffered
            if _took_enough(before, buffered):
                # The client took enough since the clock started: reading slowly is not
                # reading none. Timed from the pause alone, a client reading a large answer
                # steadily was cut off once the answer outgrew the socket's buffers by more
                # than it could read within the timeout.
                self._write_blocked_since = now
                self._write_buffered = buffered
            elif now - blocked >= self.limits.write_timeout_seconds:
                # Nothing can be written to it, a 408 included.
                self._close_silently("write_timeout", abort=True)
                return
            elif buffered > before:
                # More was queued for it (an answer in its turn): to be taken as well.
                self._write_buffered = buffered
        if self._head_due is not None and now >= self._head_due:
            self._head_due = None
            self._close_waiting("head_timeout")
        elif self._body_due is not None and now >= self._body_due:
            self._body_due = None
            self._body_timed_out()

    def _await_head(self) -> None:
        self._head_bytes_received = 0
        self._head_due = self.loop.time() + self.limits.head_timeout_seconds

    def _close_waiting(self, reason: str) -> None:
        """Close a connection that owes us a head: 408 if it started one, else silently."""
        if self._in_head:
            self._refuse(
                408,
                "request_timeout",
                f"the request head must arrive within {self.limits.head_timeout_seconds:g} s",
                reason=reason,
            )
        else:
            self._close_silently(reason)

    def _body_timed_out(self) -> None:
        self._stop_body(
            408,
            "request_timeout",
            f"the request body must arrive within {self.limits.body_timeout_seconds:g} s",
            reason="body_timeout",
        )

    def _stop_body(self, status: int, code: str, detail: str, *, reason: str) -> None:
        """Stop reading a body that will not end as it should, and close the connection: the
        problem is the request's answer if it has none yet, in its turn if requests ahead
        of it are still being answered."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            # Answered, and the rest of the body still not in: no reason to wait for it.
            self._close_silently(reason)
            return
        self._body_due = None
        for place, (queued, _) in enumerate(self.pipeline):
            # Written now, the problem would reach the client as the answer to the first
            # request ahead of it.
            if queued is cycle:
                self._hold_input(reason)
                self._answer_in_turn(place, status, code, detail, None)
                return
        if not cycle.response_started:
            self._refuse(status, code, detail, reason=reason)
        else:
            self._report(reason)
            self.transport.close()
        # The application sees a disconnect, not a body that never ends.
        cycle.disconnected = True
        cycle.message_event.set()
        self._start_deferred()

    # --- refusals --------------------------------------------------------------------

    @classmethod
    def _report(cls, reason: str) -> None:
        if cls.limits.on_refusal is not None:
            cls.limits.on_refusal(reason)

    def _close_silently(self, reason: str, *, abort: bool = False) -> None:
        """Close with nothing more sent: the request had its answer, or never began, or the
        client takes nothing (``abort``: drop what is still buffered for it)."""
        self._refused = True
        # The write clock goes on: a close waits for what its client has still to take.
        self._head_due = self._body_due = None
        self._report(reason)
        if abort:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                _reset(sock)
            self._reset = True
            self.transport.abort()
        else:
            self.transport.close()

    def _refuse(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        reason: str | None = None,
        header: HeaderRule | None = None,
    ) -> None:
        if self._refused:
            return
        self._refused = True
        self._head_due = self._body_due = None
        self._report(reason or code)
        if not self.transport.is_closing():
            self.transport.write(_problem_bytes(status, code, detail, header))
            self.transport.close()

    def _head_too_large(self) -> None:
        self._refuse(
            431,
            "request_head_too_large",
            f"the request line and headers must be at most {self.limits.max_head_bytes} bytes "
            f"in at most {self.limits.max_headers} header fields",
        )

    # --- parsing ---------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused or self._queued_refusal:
            return
        # No keep-alive timer to cancel (uvicorn's first step): none is ever armed here.
        received = len(data)
        self._body_bytes_fed = self._head_bytes_in_feed = 0
        self._message_ended_in_feed = False
        if self._head_due is not None:
            self._head_bytes_received += received
        if self._skipped_body:
            data = self._read_skipped_body(data)
        while data:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade as upgrade:
                # A request that asked to upgrade: it is answered in HTTP/1.1, and httptools
                # stopped at the end of its head. Its body, then what follows, is read on
                # here: dropped, a request pipelined behind it would never be answered.
                data = self._read_skipped_body(data[upgrade.args[0] :])
                if not (self._refused or self._queued_refusal or self.transport.is_closing()):
                    continue
                return
            except httptools.HttpParserError:
                if self._refused or self._queued_refusal:
                    return
                self._refuse(400, "malformed_http", "the request is not valid HTTP/1.1")
                return
            break
        if (
            self._head_due is not None
            and self._head_bytes_received > self.limits.max_head_bytes
            and not self._refused
        ):
            # Still no complete head, and already more bytes than a head may have.
            self._head_too_large()
        if self._body_due is not None and not self._message_ended_in_feed and not self._refused:
            # This feed ends inside a body: what was neither body nor its head was framing
            # (a head that began in an earlier feed is taken as whole here: fewer counted).
            self._framing_bytes += max(
                received - self._body_bytes_fed - self._head_bytes_in_feed, 0
            )
            if self._framing_bytes > self.limits.max_head_bytes:
                # More than a head's worth: an unfinished trailer field held 150 MB after
                # 8 s, an endless chunk extension took 4.6 GB of parsing.
                self._stop_body(
                    413,
                    "chunk_framing_too_large",
                    "a chunked body's framing (chunk sizes, chunk extensions and trailer "
                    f"fields) must be at most {self.limits.max_head_bytes} bytes",
                    reason="chunk_framing_too_large",
                )

    # The parser's callbacks below run once per request, or per URL chunk and per header:
    # uvicorn's own bodies are inlined rather than called through super() (a microsecond a
    # request in all, of the layer's cost against uvicorn's: ``python -m bench.layer``).
    def on_message_begin(self) -> None:
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self.scope = {  # type: ignore[typeddict-item]
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,  # type: ignore[typeddict-item]
            "root_path": self.root_path,
            "headers": self.headers,
            "state": self.app_state.copy(),
        }
        self._unread = 0
        self._in_head = True
        limits = self.limits
        self._head_left = limits.max_head_bytes
        self._headers_left = limits.max_headers
        self._unknown_coding = False
        self._coded = False
        self._hosts = []

    def on_url(self, url: bytes) -> None:
        self._head_left -= len(url)
        if self._head_left >= 0:
            self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:
            # A trailer field, after a chunked body: dropped, never merged into the headers
            # the handler reads (RFC 9110 6.5.1). Appended to them, "X-On-Behalf-Of: admin"
            # after the last chunk named the end user, where a proxy in front had checked
            # only the head.
            return
        self._headers_left -= 1
        self._head_left -= len(name) + len(value) + 4
        if self._headers_left >= 0 and self._head_left >= 0:
            name = name.lower()
            # A field's value excludes the whitespace around it (RFC 9110 5.5). httptools
            # drops the leading, not the trailing: "X-On-Behalf-Of: user_1 " named another
            # end user than "user_1", and "Origin: https://app.example " another origin.
            value = value.rstrip(b" \t")
            if name == b"host":
                self._hosts.append(value)
            elif name == b"expect" and value.lower() == b"100-continue":
                self.expect_100_continue = True
            elif name == b"transfer-encoding":
                self._coded = True
                if value.strip().lower() != b"chunked":
                    self._unknown_coding = True
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        # The request line and field separators are not counted: 64 bytes' slack.
        self._head_bytes_in_feed = self.limits.max_head_bytes - self._head_left + 64
        self._head_due = None
        if self._head_left < 0 or self._headers_left < 0:
            self._head_too_large()
            # Stops the parser: nothing more of this connection reaches the application.
            raise _Refused
        version = self.parser.get_http_version()
        if version not in _SPOKEN:
            # httptools takes "HTTP/2.0" and "HTTP/0.9" in an HTTP/1 request line, and such a
            # request was served as if HTTP/1.0 (no Host needed, its framing read as 1.x):
            # no hop in front that speaks either would have sent it so (RFC 9110 15.6.6).
            self._refuse_in_turn(
                505,
                "http_version_not_supported",
                "this server speaks HTTP/1.1 and HTTP/1.0",
                ("(request line)", "must end in HTTP/1.1 or HTTP/1.0"),
            )
            raise _Refused
        if _FRAGMENT in self.url:
            # RFC 9112 3.2: a request target carries no fragment. httptools dropped it, and
            # the request was served as its route: "/admin/revocations#x" walked around a
            # gateway in front that denies "/admin/revocations" as written.
            self._refuse_in_turn(
                400,
                "malformed_http",
                "the request target must not carry a fragment",
                ("(request target)", "must be a path and an optional query, without '#'"),
            )
            raise _Refused
        if self._coded and version != "1.1":
            # RFC 9112 6.1: such framing is faulty. httptools decoded the body as chunked,
            # where an HTTP/1.0 hop in front, which knows no transfer coding, checked the
            # bytes as they came: two readers, two bodies.
            self._refuse_in_turn(
                400,
                "malformed_http",
                "an HTTP/1.0 request cannot carry Transfer-Encoding",
                ("Transfer-Encoding", "must be absent on an HTTP/1.0 request"),
            )
            raise _Refused
        if self._unknown_coding:
            # httptools frames the body by its final chunked coding and passes the rest
            # through undecoded: "gzip, chunked" would reach the handler as if it were plain,
            # where a proxy in front may have read it decompressed (RFC 9112 6.1: 501).
            self._refuse_in_turn(
                501,
                "unsupported_transfer_coding",
                "the only transfer coding accepted is chunked",
                ("Transfer-Encoding", "must be chunked, or absent"),
            )
            raise _Refused
        wrong_host = self._host_refusal(version)
        if wrong_host is not None:
            self._refuse_in_turn(400, "invalid_host", wrong_host, ("Host", _HOST_RULE))
            raise _Refused
        if len(self.pipeline) >= MAX_PIPELINED:
            self._refuse_in_turn(*_TOO_MANY_PIPELINED)
            raise _Refused
        if self.parser.should_upgrade():
            # Upgrade with Connection: upgrade (as `curl --http2` sends on plain HTTP), or
            # CONNECT. No upgrade is ever taken (RFC 9110 7.8): the request is answered in
            # HTTP/1.1. httptools skips such a request's body (it would reach the handler
            # as empty, and its bytes be read as the next request), so a Content-Length
            # body is read here; a chunked one cannot be, and is refused.
            length = self._body_length()
            if length is None:
                self._refuse_in_turn(
                    400,
                    "unsupported_upgrade",
                    "a chunked body cannot come with Upgrade: send it without Upgrade",
                    ("Upgrade", "must be absent on a request with a chunked body"),
                )
                raise _Refused
            self._skipped_body = length
        route = self.limits.direct.get((self.parser.get_method(), self.url))
        if route is not None and self._plain(route.max_body, version):
            self._direct(route)
        else:
            # Not through super(): a lookup of its own on every request.
            HttpToolsProtocol.on_headers_complete(self)
        self._body_due = self.loop.time() + self.limits.body_timeout_seconds

    def _body_length(self) -> int | None:
        """The body's Content-Length (0 without one); None for a chunked body. httptools
        has refused a head with both, two lengths, or a length that is not a number."""
        length = 0
        for name, value in self.headers:
            if name == b"transfer-encoding":
                return None
            if name == b"content-length":
                length = int(value)
        return length

    def _read_skipped_body(self, data: bytes) -> bytes:
        """Hand the body httptools skipped to the request, as its own callbacks would, and
        complete it once whole; return what follows it."""
        if not self._skipped_body:
            return data
        body, rest = data[: self._skipped_body], data[self._skipped_body :]
        self._skipped_body -= len(body)
        if body:
            self.on_body(body)
        if not self._skipped_body and not self.transport.is_closing():
            self.on_message_complete()
        return rest

    def _host_refusal(self, version: str) -> str | None:
        """Why this head's Host does not do, if it does not (RFC 9112 3.2: an HTTP/1.1
        request without one, with two, or with one that is not a host is a 400). Two Host
        fields could name two hosts to two readers: a proxy in front routes by one, a
        handler that builds a URL reads the other."""
        hosts = self._hosts
        if len(hosts) == 1:
            host = hosts[0]
            # A keep-alive connection names one host request after request: the pattern
            # costs a microsecond, the comparison with the last one it passed 30 ns.
            if host == self._host_passed or _HOST.fullmatch(host) is not None:
                self._host_passed = host
                return None
            return "the Host header must be a host name or address, with an optional port"
        if hosts:
            return "an HTTP/1.1 request must carry exactly one Host header, not several"
        if version == "1.1":
            return "an HTTP/1.1 request must carry a Host header"
        return None  # HTTP/1.0 knows no Host

    def _refuse_in_turn(
        self, status: int, code: str, detail: str, header: HeaderRule | None = None
    ) -> None:
        """Refuse this request and close the connection after the answer. With requests
        still being answered before it on this connection, the refusal is queued behind
        them, as its answer in its turn (written at once, it would reach the client as the
        answer to the first of them); nothing more is read meanwhile (uvicorn resumes
        reading after each answer)."""
        ahead = self.cycle
        if ahead is None or ahead.response_complete:
            self._refuse(status, code, detail, header=header)
            return
        self._hold_input(code)
        # uvicorn's own: with a request being answered, it queues this one (unread body),
        # unless it is an upgrade it would take (a WebSocket library installed): then it
        # makes no cycle, and the last one queued closes the connection.
        HttpToolsProtocol.on_headers_complete(self)
        last, _ = self.pipeline[0]
        if last is not ahead:
            self._answer_in_turn(0, status, code, detail, header)
        else:
            last.keep_alive = False

    def _hold_input(self, reason: str) -> None:
        """Read nothing more on this connection (uvicorn resumes reading after each answer):
        a refusal is queued behind the requests being answered, and the connection closes
        after it."""
        self._queued_refusal = True
        self._report(reason)
        self.flow.pause_reading()

    def _answer_in_turn(
        self, place: int, status: int, code: str, detail: str, header: HeaderRule | None
    ) -> None:
        """The request queued at ``place`` is answered the problem in its turn, and the
        connection closes after it."""
        queued, _ = self.pipeline[place]
        queued.keep_alive = False
        if isinstance(queued, DirectCycle):
            # Its route still sees a body that never completed, and records the attempt.
            queued.stopped = _problem_answer(status, code, detail, header)
        else:
            queued.more_body = False
            self.pipeline[place] = (queued, _problem_app(status, code, detail, header))

    def _plain(self, max_body: int, version: str) -> bool:
        """A request a direct route may take: everything else is the ASGI app's."""
        if self.expect_100_continue or version != "1.1":
            return False
        if self.parser.should_upgrade():
            return False
        length = None
        for name, value in self.headers:
            if name == b"content-length":
                if length is not None:
                    return False
                length = value
            elif name == b"transfer-encoding":
                return False
        return length is not None and length.isdigit() and int(length) <= max_body

    def _direct(self, route: DirectRoute) -> None:
        scope: Any = self.scope
        scope["method"] = self.parser.get_method().decode("ascii")
        # The exact path the route is registered for: nothing to unquote, no query.
        scope["path"] = self.url.decode("ascii")
        scope["raw_path"] = self.url
        scope["query_string"] = b""
        keep_alive = self.parser.should_keep_alive()
        existing = self.cycle
        if existing is None or existing.response_complete:
            if route.lane is not None:
                self.cycle = self._deferred = LaneCycle(self, route, scope, keep_alive)  # type: ignore[assignment]
            else:
                self.cycle = self._deferred = self._direct_cycle(route, scope, keep_alive)
        else:
            # Behind a pipelined request, as uvicorn queues its own cycles.
            self.cycle = cycle = self._direct_cycle(route, scope, keep_alive)
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, self.app))

    def _direct_cycle(
        self, route: DirectRoute, scope: dict[str, Any], keep_alive: bool
    ) -> DirectCycle:
        cycle = DirectCycle(
            scope=scope,  # type: ignore[arg-type]
            transport=self.transport,
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=False,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=False,
            keep_alive=keep_alive,
            on_response=self.on_response_complete,
        )
        cycle.route = route
        cycle.proxy = self._proxy
        return cycle

    def _start_deferred(self) -> None:
        cycle = self._deferred
        if cycle is None:
            return
        self._deferred = None
        if isinstance(cycle, LaneCycle):
            if cycle.offer():
                return
            direct = cycle.handover()
            if self.cycle is cycle:  # type: ignore[comparison-overlap]
                self.cycle = direct
            cycle = direct
        self._start_asgi_task(cycle, self.app)

    def on_body(self, body: bytes) -> None:
        self._body_bytes_fed += len(body)
        cycle = self.cycle
        if cycle is not None and cycle.response_complete:
            # Answered before its body was in: dropped, as uvicorn does, but only so much.
            self._unread += len(body)
            if self._unread > MAX_UNREAD_BODY:
                self._close_silently("unread_body")
            return
        if cycle is None or (self.parser.should_upgrade() and self._should_upgrade()):
            return
        cycle.body += body
        if len(cycle.body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()

    def on_message_complete(self) -> None:
        if self._skipped_body:
            # httptools' own, for the head of a request that asked to upgrade: its body is
            # still to be read (_read_skipped_body completes it).
            return
        self._body_due = None
        self._framing_bytes = 0
        self._message_ended_in_feed = True
        cycle = self.cycle
        if (
            cycle is not None
            and not cycle.response_complete
            and not (self.parser.should_upgrade() and self._should_upgrade())
        ):
            cycle.more_body = False
            cycle.message_event.set()
        if self._deferred is not None:  # _start_deferred's own test, saving a call a request
            self._start_deferred()
            cycle = self.cycle
        if cycle is not None and cycle.response_complete and not self.pipeline:
            # Answered before the body was in (a 401, say): the next head is due now.
            self._await_head()

    def on_response_complete(self) -> None:
        # uvicorn's, without its keep-alive timer (a timer armed and cancelled per request):
        # the head deadline set here closes an idle connection after as long, silently.
        self.server_state.total_requests += 1
        if self.transport.is_closing() or self._refused:
            return
        # No keep-alive timer to cancel: none is ever armed here. read_paused is the flow's
        # own first test, asked here to save a call on every answer (0.1-0.2 us, bench.layer).
        if self.flow.read_paused and not self._queued_refusal:
            self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self._body_due is None:
            self._await_head()


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a refused request."""


def bounded(
    limits: ConnectionLimits, forwarded: ForwardedFor | None = None
) -> type[BoundedHttpToolsProtocol]:
    """A protocol class for one listener's limits (uvicorn builds one instance per socket),
    with its own deadline sweep, and the listener's trusted proxies."""
    return type(
        "BoundedHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {"limits": limits, "_sweeping": False, "_proxy": forwarded, "_lingering": []},
    )
