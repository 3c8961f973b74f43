"""The edge's headers in-process: no-store and the request id on every answer, CORS only
for a listed origin on a browser route, and never for a caller refused for its origin."""

from __future__ import annotations

import json
import os
from typing import Any

from broker.api.auth import CORS_DENIED
from broker.api.edge import Edge
from broker.metrics import Metrics

ORIGIN = "https://app.example.com"


def _scope(path: str = "/tokens", method: str = "POST", origin: str | None = ORIGIN) -> Any:
    headers = [(b"content-type", b"application/json")]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    return {"type": "http", "path": path, "method": method, "headers": headers}


def _answer(scope: Any, denied: bool = False) -> dict[str, str]:
    edge = Edge(Metrics(), lambda: frozenset({ORIGIN}), access_log=False)
    passage = edge.begin(scope)
    if denied:
        scope["state"][CORS_DENIED] = True
    sent = [(b"content-type", b"application/json"), (b"cache-control", b"max-age=60")]
    headers = edge.headers(passage, sent, scope["state"])
    edge.end(passage, scope, 200)
    names = [name for name, _ in headers]
    assert len(names) == len(set(names)), "no header twice"
    return {name.decode(): value.decode() for name, value in headers}


def test_every_answer_is_no_store_with_a_request_id() -> None:
    first = _answer(_scope(origin=None))
    second = _answer(_scope(origin=None))
    assert first["cache-control"] == "no-store"  # the route's own value replaced
    assert first["pragma"] == "no-cache"
    assert first["x-request-id"] != second["x-request-id"]
    assert "vary" not in first


def _request_id(edge: Edge) -> str:
    return edge.begin(_scope(origin=None), bind=False).request_id


def test_a_forked_process_numbers_its_requests_apart_from_its_parent() -> None:
    # granian forks its workers from a master that has imported the edge.
    edge = Edge(Metrics(), access_log=False)
    before = _request_id(edge)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child reports through the pipe)
        try:
            os.write(write, _request_id(edge).encode())
        finally:
            os._exit(0)
    os.close(write)
    in_child = os.read(read, 100).decode()
    os.close(read)
    assert os.waitpid(child, 0)[1] == 0
    after = _request_id(edge)
    assert len(in_child) == len(before) == 32
    assert in_child[:16] != before[:16], "the child draws a prefix of its own"
    assert int(in_child[16:], 16) == 1, "and counts from the start"
    assert after[:16] == before[:16], "the parent goes on as it was"
    assert int(after[16:], 16) == int(before[16:], 16) + 1


def test_a_listed_origin_on_a_browser_route_is_allowed() -> None:
    headers = _answer(_scope())
    assert headers["access-control-allow-origin"] == ORIGIN
    assert headers["vary"] == "Origin"
    exposed = headers["access-control-expose-headers"].split(", ")
    assert exposed == ["X-Request-ID", "Retry-After", "WWW-Authenticate"]


def test_no_cors_for_other_origins_other_routes_or_a_caller_refused_its_origin() -> None:
    unlisted = _answer(_scope(origin="https://evil.example"))
    assert "access-control-allow-origin" not in unlisted
    assert unlisted["vary"] == "Origin"
    assert "access-control-allow-origin" not in _answer(_scope(path="/audit/events"))
    assert "access-control-allow-origin" not in _answer(_scope(), denied=True)


def test_a_preflight_is_recognised_only_with_its_request_method() -> None:
    edge = Edge(Metrics(), lambda: frozenset({ORIGIN}), access_log=False)
    scope = _scope(method="OPTIONS")
    assert not edge.begin(scope).preflight
    scope = _scope(method="OPTIONS")
    scope["headers"].append((b"access-control-request-method", b"POST"))
    passage = edge.begin(scope)
    assert passage.preflight
    assert passage.listed


def test_only_paths_written_as_the_routes_are_count_as_canonical() -> None:
    from broker.api.edge import canonical

    def scope(raw: bytes) -> Any:
        # As uvicorn builds it: the raw bytes, and the path unquoted from them.
        from urllib.parse import unquote

        return {"raw_path": raw, "path": unquote(raw.decode("ascii"))}

    for raw in (b"/", b"/tokens", b"/tokens/policy", b"/admin/revocations", b"/openapi.json"):
        assert canonical(scope(raw)), raw
    for raw in (
        b"/tokens/",
        b"//tokens",
        b"/tok%65ns",
        b"/admin%2Frevocations",
        b"/admin%2frevocations",
        b"/audit//events",
        b"/audit/./events",
        b"/audit/events/..",
        b"/admin/../admin/revocations",
        b"/audit/events%00",
    ):
        assert not canonical(scope(raw)), raw
    # A server that gives no raw path: the path alone decides.
    assert canonical({"path": "/tokens"})
    assert not canonical({"path": "/tokens/"})


def test_a_preflight_with_two_origins_is_refused_as_ambiguous() -> None:
    # As on the routes themselves (400 ambiguous_header): the first was allowed, though
    # which one counts is a guess, and a proxy in front may have read the other.
    from tests.support.asgi import AsgiDriver

    reached: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            for step in ("startup", "shutdown"):
                await receive()
                await send({"type": f"lifespan.{step}.complete"})
            return
        reached.append(scope["method"])  # a preflight never does

    edge = Edge(Metrics(), lambda: frozenset({ORIGIN}), access_log=False)
    driver = AsgiDriver(edge.asgi(app))
    driver.start()
    try:
        asked = [(b"access-control-request-method", b"POST")]
        one = driver.request("OPTIONS", "/tokens", headers=[(b"origin", ORIGIN.encode()), *asked])
        two = driver.request(
            "OPTIONS",
            "/tokens",
            headers=[(b"origin", ORIGIN.encode()), (b"origin", b"https://evil.example"), *asked],
        )
    finally:
        driver.stop()
    assert one.status == 204
    assert two.status == 400
    problem = json.loads(two.body)
    assert problem["code"] == "ambiguous_header"
    assert problem["errors"] == [{"field": "Origin", "message": "must be sent at most once"}]
    assert b"access-control-allow-origin" not in two.headers
    assert reached == []
