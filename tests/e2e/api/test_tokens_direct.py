"""``POST /tokens`` is answered by the server without ASGI when the request is plain (HTTP/1.1,
one Content-Length within the body limit) and through the ASGI app otherwise: over raw
loopback sockets, both ways give the same answer, pipelining and Connection: close hold, a
body cut short is still on the record, and a trusted proxy's X-Forwarded-For names the
source."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import AUDIENCE, Broker, BrokerFactory
from tests.support.http1 import RawResponse, Reader, chunked, connect, request
from tests.support.records import decision
from tests.support.waiting import eventually

BODY = json.dumps({"audience": AUDIENCE, "externalUserId": "user_direct"}).encode()


@pytest.fixture(scope="module")
def broker(start_module_broker: BrokerFactory) -> Broker:
    return start_module_broker(name="direct")


def _headers(broker: Broker, **extra: str) -> dict[str, str]:
    key = broker.clients["billing"].key
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json", **extra}


def _stable(answer: RawResponse) -> dict[str, object]:
    body: dict[str, object] = answer.json()
    return {name: value for name, value in body.items() if name not in ("expiresIn", "refreshAt")}


def test_a_cache_hit_is_the_same_answer_and_record_both_ways(broker: Broker) -> None:
    """A plain miss is answered by the route's task, a plain hit from callbacks (the lane),
    a chunked hit through the ASGI app: the same headers, the same body, the same record."""
    body = json.dumps({"audience": AUDIENCE, "externalUserId": "user_lane"}).encode()
    sock = connect(broker.server.port)
    reader = Reader(sock)
    sock.sendall(request("POST", "/tokens", _headers(broker), body))
    miss = reader.response()
    sock.sendall(request("POST", "/tokens", _headers(broker), body))
    lane = reader.response()
    chunked_request = request(
        "POST", "/tokens", _headers(broker, **{"Transfer-Encoding": "chunked"}), length=False
    )
    sock.sendall(chunked_request + chunked(body))
    through_asgi = reader.response()
    sock.close()
    assert miss.status == lane.status == through_asgi.status == 200
    assert miss.names() == lane.names() == through_asgi.names()
    for name in ("content-type", "cache-control", "pragma"):
        assert miss.header(name) == lane.header(name) == through_asgi.header(name)
    assert lane.header("cache-control") == "no-store"
    # The same token; only the seconds left may move on between the three.
    assert _stable(miss) == _stable(lane) == _stable(through_asgi)

    def records() -> list[dict[str, object]]:
        return [r for r in broker.audit_lines() if r.get("externalUserId") == "user_lane"]

    eventually(lambda: len(records()) == 3, what="three records")
    _, by_lane, by_asgi = records()
    assert (by_lane["requestId"], by_asgi["requestId"]) == (
        lane.header("x-request-id"),
        through_asgi.header("x-request-id"),
    )
    assert by_lane["cache"] == "hit"
    assert decision(by_lane) == decision(by_asgi)


def test_pipelined_cache_hits_are_answered_in_order_and_recorded(broker: Broker) -> None:
    body = json.dumps({"audience": AUDIENCE, "externalUserId": "user_pipelined_hits"}).encode()
    sock = connect(broker.server.port)
    reader = Reader(sock)
    sock.sendall(request("POST", "/tokens", _headers(broker), body))
    assert reader.response().status == 200
    sock.sendall(b"".join(request("POST", "/tokens", _headers(broker), body) for _ in range(4)))
    answers = [reader.response() for _ in range(4)]
    sock.close()
    assert [a.status for a in answers] == [200] * 4
    assert len({a.json()["tokenSha256"] for a in answers}) == 1
    ids = [a.header("x-request-id") for a in answers]

    def recorded() -> list[object]:
        return [
            r["requestId"]
            for r in broker.audit_lines()
            if r.get("externalUserId") == "user_pipelined_hits" and r["cache"] == "hit"
        ]

    eventually(lambda: len(recorded()) == 4, what="four hit records")
    assert recorded() == ids


def test_a_refusal_is_the_same_problem_both_ways(broker: Broker) -> None:
    sock = connect(broker.server.port)
    reader = Reader(sock)
    headers = {"Authorization": "Bearer bk_not_a_key", "Content-Type": "application/json"}
    sock.sendall(request("POST", "/tokens", headers, BODY))
    plain = reader.response()
    sock.sendall(
        request("POST", "/tokens", headers | {"Transfer-Encoding": "chunked"}, length=False)
        + chunked(BODY)
    )
    through_asgi = reader.response()
    sock.close()
    assert plain.status == through_asgi.status == 401
    assert plain.names() == through_asgi.names()
    assert plain.header("www-authenticate") == through_asgi.header("www-authenticate")
    assert plain.header("www-authenticate") == (
        'Bearer realm="mka1-token-broker", error="invalid_token"'
    )
    first, second = plain.json(), through_asgi.json()
    assert first.pop("requestId") != second.pop("requestId")
    assert first == second
    assert first["code"] == "unauthenticated"


def test_pipelined_requests_are_answered_in_order(broker: Broker) -> None:
    sock = connect(broker.server.port)
    reader = Reader(sock)
    other = json.dumps({"audience": AUDIENCE, "externalUserId": "user_pipelined"}).encode()
    sock.sendall(
        request("POST", "/tokens", _headers(broker), BODY)
        + request("GET", "/healthz", {}, length=False)
        + request("POST", "/tokens", _headers(broker), other)
        + request("POST", "/tokens", _headers(broker), b"{")
    )
    answers = [reader.response() for _ in range(4)]
    sock.close()
    assert [a.status for a in answers] == [200, 200, 200, 400]
    assert answers[0].json()["externalUserId"] == "user_direct"
    assert answers[2].json()["externalUserId"] == "user_pipelined"
    assert answers[3].json()["code"] == "malformed_json"
    ids = [a.header("x-request-id") for a in answers]
    assert len(set(ids)) == 4


def test_connection_close_is_honoured(broker: Broker) -> None:
    sock = connect(broker.server.port)
    reader = Reader(sock)
    sock.sendall(request("POST", "/tokens", _headers(broker, Connection="close"), BODY))
    answer = reader.response()
    assert answer.status == 200
    assert answer.header("connection") == "close"
    assert reader.closed()
    sock.close()


def test_expect_100_continue_is_served(broker: Broker) -> None:
    sock = connect(broker.server.port)
    reader = Reader(sock)
    headers = _headers(broker, Expect="100-continue", **{"Content-Length": str(len(BODY))})
    sock.sendall(request("POST", "/tokens", headers, length=False))
    interim = sock.recv(64)
    assert interim.startswith(b"HTTP/1.1 100 ")
    sock.sendall(BODY)
    assert reader.response().status == 200
    sock.close()


def test_a_body_cut_short_is_still_on_the_record(broker: Broker) -> None:
    before = len(broker.audit_lines())
    sock = connect(broker.server.port)
    head = request("POST", "/tokens", _headers(broker), BODY)
    sock.sendall(head[: len(head) - len(BODY) // 2])
    time.sleep(0.2)
    sock.close()

    def cut_short() -> list[dict[str, object]]:
        return [line for line in broker.audit_lines()[before:] if line["code"] == "body_incomplete"]

    eventually(lambda: bool(cut_short()), what="a body_incomplete record")
    [record] = cut_short()
    assert record["caller"] == "billing-svc"
    assert record["outcome"] == "rejected"


def test_a_trusted_proxy_names_the_source(start_broker: BrokerFactory) -> None:
    proxied = start_broker(name="direct-proxied", extra_server='trusted_proxies = ["127.0.0.1"]')
    sock = connect(proxied.server.port)
    reader = Reader(sock)
    # A miss, then a hit; then what is no address (the proxy stays the source), on the
    # direct path and through the ASGI app (a chunked body).
    for address in ("203.0.113.9", "203.0.113.10", "evil"):
        headers = _headers(proxied, **{"X-Forwarded-For": address})
        sock.sendall(request("POST", "/tokens", headers, BODY))
        assert reader.response().status == 200
    for address in ("203.0.113.11", "x" * 2000):
        headers = _headers(proxied, **{"X-Forwarded-For": address, "Transfer-Encoding": "chunked"})
        sock.sendall(request("POST", "/tokens", headers, length=False) + chunked(BODY))
        assert reader.response().status == 200
    sock.close()
    eventually(lambda: len(proxied.audit_lines()) == 5, what="the records")
    assert [(r["cache"], r["sourceAddress"]) for r in proxied.audit_lines()] == [
        ("miss", "203.0.113.9"),
        ("hit", "203.0.113.10"),
        ("hit", "127.0.0.1"),
        ("hit", "203.0.113.11"),
        ("hit", "127.0.0.1"),
    ]
