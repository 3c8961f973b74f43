"""The connection layer's bounds, over raw loopback sockets against a real broker: request
heads that are too large or too many, heads and bodies that never finish, idle sockets, and
more connections than the process has files for."""

from __future__ import annotations

import json
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import AUDIENCE, Broker, BrokerFactory
from tests.support import http1, loopback
from tests.support.waiting import eventually

TIGHT = """
max_head_bytes = 16384
max_headers = 50
head_timeout_seconds = 1.0
body_timeout_seconds = 1.0
"""


@pytest.fixture(scope="module")
def bounded_broker(start_module_broker: BrokerFactory) -> Broker:
    return start_module_broker(name="bounded", extra_server=TIGHT)


def _connect(broker: Broker) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", broker.server.port), timeout=5)
    return sock


def _read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes (or the timeout)."""
    sock.settimeout(timeout)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def _read_until_the_end(sock: socket.socket) -> None:
    """Read until the server ends the connection, whichever way it does."""
    while sock.recv(65536):
        pass


def _status_and_problem(raw: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"content-type: application/problem+json" in head.lower()
    for header in (
        b"cache-control: no-store",
        b"pragma: no-cache",
        b"x-content-type-options: nosniff",
    ):
        assert header in head.lower()  # as on the edge's answers
    problem: dict[str, object] = json.loads(body)
    return status, problem


def _rss_kib(broker: Broker) -> int:
    assert broker.server.process is not None
    status = Path(f"/proc/{broker.server.process.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1])


def _send_quietly(sock: socket.socket, data: bytes) -> bool:
    """Send, and say whether the server was still reading."""
    try:
        sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError):
        return False
    return True


def test_an_unfinished_huge_header_is_refused_without_buffering(bounded_broker: Broker) -> None:
    before = _rss_kib(bounded_broker)
    sock = _connect(bounded_broker)
    _send_quietly(sock, b"POST /tokens HTTP/1.1\r\nHost: x\r\nX-Big: ")
    accepted = 0
    chunk = b"a" * 65536
    for _ in range(48 * 16):  # up to 48 MiB, never finishing the header
        if not _send_quietly(sock, chunk):
            break
        accepted += len(chunk)
    raw = _read_all(sock)
    sock.close()
    assert raw.startswith(b"HTTP/1.1 431 ")
    status, problem = _status_and_problem(raw)
    assert (status, problem["code"]) == (431, "request_head_too_large")
    assert "16384 bytes" in str(problem["detail"])
    # The server stopped reading long before 48 MiB (kernel buffers hold a few MiB at most).
    assert accepted < 16 * 1024 * 1024
    assert _rss_kib(bounded_broker) - before < 16 * 1024


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ([("X-Big", "a" * (8 * 1024 * 1024))], "one 8 MiB header"),
        ([("X-Big", "a" * 17000)], "one header just over the head budget"),
        ([(f"X-H{n}", "v") for n in range(51)], "one header field too many"),
        ([("X-H", "v")] * 100_000, "100,000 header fields"),
    ],
)
def test_a_complete_head_over_the_bounds_gets_431(
    bounded_broker: Broker, headers: list[tuple[str, str]], why: str
) -> None:
    sock = _connect(bounded_broker)
    lines = b"".join(f"{name}: {value}\r\n".encode() for name, value in headers)
    _send_quietly(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
    raw = _read_all(sock)
    sock.close()
    status, problem = _status_and_problem(raw)
    assert (status, problem["code"]) == (431, "request_head_too_large"), why


def test_a_head_within_the_bounds_is_served(bounded_broker: Broker) -> None:
    headers = {f"X-H{n}": "v" * 100 for n in range(45)}
    response = loopback.get(bounded_broker.url + "/healthz", headers=headers)
    assert response.status_code == 200


def test_a_head_answer_says_its_gets_length_and_the_connection_reads_on(
    bounded_broker: Broker,
) -> None:
    # A HEAD answer that said Content-Length: 0 for a GET of 15 bytes misled any cache or
    # client that takes the length from it (RFC 9110 8.6); one that says 15 and sends no body
    # must leave the next answer on the connection where it belongs.
    sock = http1.connect(bounded_broker.server.port)
    sock.sendall(
        http1.request("HEAD", "/healthz", {}, length=False)
        + http1.request("GET", "/healthz", {"Connection": "close"}, length=False)
    )
    answers = _read_all(sock)
    sock.close()
    headed, _, rest = answers.partition(b"\r\n\r\n")
    got, _, body = rest.partition(b"\r\n\r\n")
    assert headed.startswith(b"HTTP/1.1 200 ")
    assert got.startswith(b"HTTP/1.1 200 ")
    assert body == b'{"status":"ok"}'
    assert b"content-length: 15" in headed.lower().split(b"\r\n")


def test_a_slow_head_gets_408_within_the_head_timeout(bounded_broker: Broker) -> None:
    sock = _connect(bounded_broker)
    started = time.monotonic()
    closed_after = None
    for byte in b"POST /tokens HTTP/1.1\r\nHost: x\r\n":
        if not _send_quietly(sock, bytes([byte])):
            break
        time.sleep(0.2)
        if time.monotonic() - started > 4:
            break
    raw = _read_all(sock)
    closed_after = time.monotonic() - started
    sock.close()
    status, problem = _status_and_problem(raw)
    assert (status, problem["code"]) == (408, "request_timeout")
    assert closed_after < 3.0


def test_an_idle_connection_is_closed_silently(bounded_broker: Broker) -> None:
    sock = _connect(bounded_broker)
    started = time.monotonic()
    raw = _read_all(sock, timeout=5)
    assert raw == b""
    assert time.monotonic() - started < 3.0


def test_an_idle_keep_alive_connection_is_closed_after_a_response(bounded_broker: Broker) -> None:
    sock = _connect(bounded_broker)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    started = time.monotonic()
    raw = _read_all(sock, timeout=5)
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert time.monotonic() - started < 3.0


def test_a_body_that_never_finishes_gets_408(bounded_broker: Broker) -> None:
    sock = _connect(bounded_broker)
    key = bounded_broker.clients["billing"].key
    sock.sendall(
        b"POST /tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + key.encode() + b"\r\nContent-Length: 1000\r\n\r\n{"
    )
    started = time.monotonic()
    raw = _read_all(sock)
    sock.close()
    status, problem = _status_and_problem(raw)
    assert (status, problem["code"]) == (408, "request_timeout")
    assert time.monotonic() - started < 3.0


def test_a_client_that_ends_its_input_after_its_request_gets_its_token(
    bounded_broker: Broker,
) -> None:
    sock = _connect(bounded_broker)
    key = bounded_broker.clients["billing"].key
    body = json.dumps({"audience": AUDIENCE, "externalUserId": "half-closed"}).encode()
    sock.sendall(
        http1.request(
            "POST",
            "/tokens",
            {"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
            body,
        )
    )
    # As `nc -N` does. The token was minted and recorded as issued, and never sent.
    sock.shutdown(socket.SHUT_WR)
    raw = _read_all(sock)
    sock.close()
    head, _, answer = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), raw[:200]
    assert b"connection: close" in head.lower()
    assert json.loads(answer)["externalUserId"] == "half-closed"


def test_an_invalid_request_line_gets_a_problem_document(bounded_broker: Broker) -> None:
    sock = _connect(bounded_broker)
    sock.sendall(b"GARBAGE\x00\x01 / HTTP/9\r\n\r\n")
    status, problem = _status_and_problem(_read_all(sock))
    sock.close()
    assert (status, problem["code"]) == (400, "malformed_http")


@pytest.mark.parametrize("version", [b"2.0", b"0.9"])
def test_a_token_request_naming_another_http_version_is_505_and_mints_nothing(
    bounded_broker: Broker, version: bytes
) -> None:
    sock = _connect(bounded_broker)
    key = bounded_broker.clients["billing"].key
    body = json.dumps({"audience": AUDIENCE, "externalUserId": "versioned"}).encode()
    sock.sendall(
        b"POST /tokens HTTP/" + version + b"\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer "
        + key.encode()
        + b"\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )
    raw = _read_all(sock)
    sock.close()
    status, problem = _status_and_problem(raw)
    assert (status, problem["code"]) == (505, "http_version_not_supported")
    assert not any(r.get("externalUserId") == "versioned" for r in bounded_broker.audit_lines())
    assert (
        bounded_broker.metric(
            "broker_connections_refused_total", reason="http_version_not_supported"
        )
        >= 1
    )


@pytest.mark.parametrize(
    ("coding", "refusal"),
    [
        (b"gzip, chunked", (501, "unsupported_transfer_coding")),
        (b"identity", (501, "unsupported_transfer_coding")),
        (b"br", (501, "unsupported_transfer_coding")),
        # httptools refuses chunked twice itself.
        (b"chunked, chunked", (400, "malformed_http")),
    ],
)
def test_a_transfer_coding_other_than_chunked_is_refused_before_any_handler(
    bounded_broker: Broker, coding: bytes, refusal: tuple[int, str]
) -> None:
    sock = _connect(bounded_broker)
    key = bounded_broker.clients["billing"].key
    body = json.dumps({"audience": AUDIENCE, "externalUserId": "coded"}).encode()
    sock.sendall(
        b"POST /tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer "
        + key.encode()
        + b"\r\nTransfer-Encoding: "
        + coding
        + b"\r\n\r\n%x\r\n" % len(body)
        + body
        + b"\r\n0\r\n\r\n"
    )
    raw = _read_all(sock)
    sock.close()
    status, problem = _status_and_problem(raw)
    assert (status, problem["code"]) == refusal
    if refusal[1] == "unsupported_transfer_coding":
        assert problem["errors"] == [
            {"field": "Transfer-Encoding", "message": "must be chunked, or absent"}
        ]
    assert raw.count(b"HTTP/1.1 ") == 1
    assert not any(r.get("externalUserId") == "coded" for r in bounded_broker.audit_lines())
    assert bounded_broker.metric("broker_connections_refused_total", reason=refusal[1]) >= 1


def test_chunked_in_any_case_is_served(bounded_broker: Broker) -> None:
    sock = _connect(bounded_broker)
    key = bounded_broker.clients["billing"].key
    body = json.dumps({"audience": AUDIENCE, "externalUserId": "chunky"}).encode()
    sock.sendall(
        b"POST /tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + key.encode() + b"\r\nTransfer-Encoding:  Chunked \r\n"
        b"Connection: close\r\n\r\n%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    )
    raw = _read_all(sock)
    sock.close()
    assert raw.startswith(b"HTTP/1.1 200 "), raw[:200]


def test_a_token_request_that_asks_to_upgrade_is_served_in_http_1_1(
    bounded_broker: Broker,
) -> None:
    """``curl --http2`` on plain HTTP asks to upgrade to h2c. httptools stops at such a
    request's head and skips its body, which reached the handler as empty: a valid request
    was answered malformed_json, and recorded so."""
    key = bounded_broker.clients["billing"].key
    head = (
        b"POST /tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + key.encode() + b"\r\n"
        b"Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMA\r\n"
    )

    def body(user: str) -> bytes:
        return json.dumps({"audience": AUDIENCE, "externalUserId": user}).encode()

    before = len(bounded_broker.audit_lines())
    sock = _connect(bounded_broker)
    # Two such requests pipelined, then one that closes the connection.
    sock.sendall(
        b"".join(
            head + b"Content-Length: %d\r\n\r\n" % len(body(user)) + body(user)
            for user in ("upgrader-1", "upgrader-2")
        )
        + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    raw = _read_all(sock)
    sock.close()
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n"), raw[:400]
    assert raw.count(b"HTTP/1.1 200 OK\r\n") == 3, raw[:400]
    assert b"101 Switching" not in raw
    records = bounded_broker.audit_lines()[before:]
    assert [(r["externalUserId"], r["outcome"]) for r in records] == [
        ("upgrader-1", "issued"),
        ("upgrader-2", "issued"),
    ]

    # A chunked body cannot be read past such a head: refused, never read as empty.
    sock = _connect(bounded_broker)
    sock.sendall(
        head
        + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(body("upgrader-3"))
        + body("upgrader-3")
        + b"\r\n0\r\n\r\n"
    )
    raw = _read_all(sock)
    sock.close()
    status, problem = _status_and_problem(raw)
    assert (status, problem["code"]) == (400, "unsupported_upgrade")
    assert problem["errors"] == [
        {"field": "Upgrade", "message": "must be absent on a request with a chunked body"}
    ]
    assert raw.count(b"\r\ncontent-type: ") == 1  # one answer; the body never read
    assert (
        bounded_broker.metric("broker_connections_refused_total", reason="unsupported_upgrade") >= 1
    )
    assert len(bounded_broker.audit_lines()) == before + 2


def test_bound_refusals_are_counted(bounded_broker: Broker) -> None:
    sock = _connect(bounded_broker)
    _read_all(sock, timeout=5)
    sock.close()
    assert bounded_broker.metric("broker_connections_refused_total", reason="head_timeout") >= 1


def _limit_files_to_128() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))


@pytest.fixture
def idle_sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def test_idle_sockets_beyond_the_file_limit_do_not_lock_callers_out(
    start_broker: BrokerFactory, idle_sockets: list[socket.socket]
) -> None:
    # A head timeout far longer than the test: only the connection cap can save the caller.
    broker = start_broker(
        name="flooded",
        extra_server="head_timeout_seconds = 60.0\n",
        preexec=_limit_files_to_128,
    )
    for _ in range(150):
        sock = socket.create_connection(("127.0.0.1", broker.server.port), timeout=5)
        # Half of them start a head and stall, as slowloris does.
        if len(idle_sockets) % 2:
            sock.sendall(b"POST /tokens HTTP/1.1\r\nHost: x\r\n")
        idle_sockets.append(sock)
    started = time.monotonic()
    response = broker.post_token(body={"audience": AUDIENCE, "externalUserId": "flood-victim"})
    assert response.status_code == 200, response.text
    assert time.monotonic() - started < 5.0
    assert broker.metric("broker_connections_refused_total", reason="evicted") >= 1
    # The flood is one log line, not one per socket.
    output = broker.server.output()
    assert output.count('"connections_refused"') <= 2


def test_sockets_that_take_none_of_their_answers_do_not_lock_callers_out(
    start_broker: BrokerFactory, idle_sockets: list[socket.socket]
) -> None:
    broker = start_broker(
        name="unread", extra_server="max_connections = 4\nhead_timeout_seconds = 1.0\n"
    )
    # Anyone may ask for the OpenAPI document (30 KB) and never read it. The kernel takes
    # a few megabytes of answers a socket; the rest wait in the broker for the client.
    asks = http1.request("GET", "/openapi.json", {}, length=False) * 16
    for _ in range(4):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", broker.server.port))
        idle_sockets.append(sock)
    for _ in range(30):  # 16 at a time: within the pipelining bound while answers flow
        for sock in idle_sockets:
            sock.sendall(asks)
        time.sleep(0.1)
    # Each now holds answers its client has not taken, waiting in line or in a close (the
    # pipelining bound's), and none waits for a head: callers got 503 until the write
    # timeout, or for as long as the process ran once the close had ended the write
    # timeout's clock. Now the one stalled longest makes room.
    time.sleep(2.5)
    response = broker.post_token(body={"audience": AUDIENCE, "externalUserId": "unread-victim"})
    assert response.status_code == 200, response.text
    assert broker.metric("broker_connections_refused_total", reason="evicted") >= 1


def test_bodies_that_trickle_in_do_not_lock_callers_out(
    start_broker: BrokerFactory, idle_sockets: list[socket.socket]
) -> None:
    broker = start_broker(name="rudy", extra_server="max_connections = 4\n")
    head = http1.request("POST", "/tokens", {"Content-Length": "100"}, length=False)
    for _ in range(4):
        sock = _connect(broker)
        sock.sendall(head + b"{")  # and the rest, a byte now and then, if ever
        idle_sockets.append(sock)
    time.sleep(1.5)
    # Each held its place for the whole body timeout (10 s), and a flood of them, started
    # again as they ended, kept callers out with 503.
    response = broker.post_token(body={"audience": AUDIENCE, "externalUserId": "rudy-victim"})
    assert response.status_code == 200, response.text
    assert broker.metric("broker_connections_refused_total", reason="evicted") >= 1
    # The slowest is answered why, as its request's answer; the others wait on.
    answered = [raw for sock in idle_sockets if (raw := _read_all(sock, timeout=0.5))]
    assert len(answered) == 1
    status, problem = _status_and_problem(answered[0])
    assert (status, problem["code"]) == (503, "too_many_connections")


def _send_queue(local_port: int, remote_port: int) -> int:
    """Bytes the kernel holds to send on the loopback connection between the two ports (its
    tx_queue in /proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, queues = fields[1], fields[2], fields[4]
        if (int(local.split(":")[1], 16), int(remote.split(":")[1], 16)) == (
            local_port,
            remote_port,
        ):
            return int(queues.split(":")[0], 16)
    raise AssertionError(f"no connection from :{local_port} to :{remote_port}")


def test_a_connection_holds_a_bounded_share_of_the_kernels_memory(
    bounded_broker: Broker, idle_sockets: list[socket.socket]
) -> None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", bounded_broker.server.port))
    idle_sockets.append(sock)
    # Three megabytes of answers that the client never reads.
    asks = http1.request("GET", "/openapi.json", {}, length=False) * 16
    for _ in range(6):
        sock.sendall(asks)
        time.sleep(0.1)
    ports = (bounded_broker.server.port, sock.getsockname()[1])
    eventually(lambda: _send_queue(*ports) > 64 * 1024, what="the kernel's buffer filled")
    time.sleep(0.3)  # and the broker went on writing what it could
    # The kernel's share stays near the send buffer the broker sets (64 KiB, doubled, and
    # one more packet's worth): autotuned, it took megabytes, and with a connection cap of
    # 1024 a few hundred sockets of this sort held the host's TCP memory.
    assert _send_queue(*ports) <= 256 * 1024


def test_a_socket_closed_with_answers_untaken_stays_the_brokers_to_reset(
    start_broker: BrokerFactory, idle_sockets: list[socket.socket]
) -> None:
    broker = start_broker(name="lingering", extra_server="max_connections = 1\n")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", broker.server.port))
    idle_sockets.append(sock)
    # Half a megabyte of answers, the last one closing the connection: the kernel takes all
    # of it, so the broker's close is done at once, with the answers still unread.
    asks = http1.request("GET", "/openapi.json", {}, length=False) * 15
    last = http1.request("GET", "/openapi.json", {"Connection": "close"}, length=False)
    sock.sendall(asks + last)
    time.sleep(1.5)
    # The socket is still the broker's, counted under its cap: a caller past it makes room
    # by resetting it. Before, the kernel alone held it, with its half megabyte, for minutes
    # (338 s for a client that reads nothing), out of every bound the broker sets.
    response = broker.post_token(body={"audience": AUDIENCE, "externalUserId": "lingering"})
    assert response.status_code == 200, response.text
    sock.settimeout(10)
    with pytest.raises(ConnectionResetError):
        _read_until_the_end(sock)
    assert broker.metric("broker_connections_refused_total", reason="evicted") >= 1


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/tokens/"),
        ("POST", "//tokens"),
        ("POST", "/tok%65ns"),
        ("POST", "/tokens%2F"),
        ("GET", "/admin%2Frevocations"),
        ("GET", "//admin/revocations"),
        ("GET", "/admin/revocations/"),
        ("GET", "/audit//events"),
        ("GET", "/audit%2Fevents"),
    ],
)
def test_another_spelling_of_a_route_is_404_not_the_route(
    bounded_broker: Broker, method: str, path: str
) -> None:
    # A gateway in front that allows or denies by path may read these as no route of its
    # rules; here they used to reach the route itself.
    caller = bounded_broker.clients["billing"].headers(**{"Content-Type": "application/json"})
    body = json.dumps({"audience": AUDIENCE, "externalUserId": "spelled"}).encode()
    with _connect(bounded_broker) as sock:
        sock.sendall(http1.request(method, path, caller | {"Connection": "close"}, body))
        status, problem = _status_and_problem(_read_all(sock))
    assert status == 404
    assert problem["code"] == "not_found"
    assert "percent-encoding" in str(problem["detail"])
    # Named as written, never as the route its unquoted form names: in the answer, the
    # access line and the request metrics.
    assert problem["instance"] == path

    access = [
        (line["path"], line["status"])
        for line in map(json.loads, bounded_broker.settled_output().splitlines())
        if line.get("request_id") == problem["requestId"]
    ]
    assert access == [(path, 404)]
    for route in ("/tokens", "/admin/revocations", "/audit/events"):
        assert (
            bounded_broker.metric(
                "broker_request_duration_seconds_count", route=route, status="404"
            )
            == 0
        )
    # The route as written still answers.
    written = path.replace("%2F", "/").replace("%65", "e").replace("//", "/").rstrip("/")
    with _connect(bounded_broker) as sock:
        sock.sendall(http1.request(method, written, caller | {"Connection": "close"}, body))
        assert int(_read_all(sock).split(b" ", 2)[1]) != 404


@pytest.mark.parametrize(
    ("method", "target"),
    [("GET", "/admin/revocations#x"), ("POST", "/tokens#"), ("GET", "/audit/events?limit=1#x")],
)
def test_a_target_with_a_fragment_is_400_never_the_route(
    bounded_broker: Broker, method: str, target: str
) -> None:
    # httptools dropped the fragment: the route answered, past a gateway in front that
    # denies the path as written, and the access line named the route.
    caller = bounded_broker.clients["billing"].headers(**{"Content-Type": "application/json"})
    body = json.dumps({"audience": AUDIENCE, "externalUserId": "fragment"}).encode()

    def served() -> list[float]:
        return [
            bounded_broker.metric(
                "broker_request_duration_seconds_count", route=route, status=status
            )
            for route in ("/tokens", "/admin/revocations", "/audit/events")
            for status in ("200", "400", "401", "403")
        ]

    before = served()
    with _connect(bounded_broker) as sock:
        sock.sendall(http1.request(method, target, caller | {"Connection": "close"}, body))
        status, problem = _status_and_problem(_read_all(sock))
    assert (status, problem["code"]) == (400, "malformed_http")
    assert served() == before


def test_trailer_fields_name_no_end_user(bounded_broker: Broker) -> None:
    # httptools reports a chunked body's trailer fields as headers, and they were appended
    # to the request's: "X-On-Behalf-Of: admin" after the last chunk got a token for end
    # user admin, where a proxy in front had checked only the head (RFC 9110 6.5.1).
    auth = bounded_broker.clients["billing"].headers()
    answer = http1.end_user_in_trailer(bounded_broker.server.port, auth, AUDIENCE)
    assert answer.status == 403, answer.body
    assert answer.json()["code"] == "external_user_id_required"
