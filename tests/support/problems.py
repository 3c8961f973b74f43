"""Checking answers: a problem document as RFC 9457 and the broker promise it, and a token's
claims read without verification."""

from __future__ import annotations

from typing import Any

import jwt

PROBLEM = "application/problem+json"


def claims(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


def assert_problem(
    response: Any, status: int, code: str, field: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    assert response.headers["x-content-type-options"] == "nosniff"
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["code"] == code
    assert problem["type"].endswith(code)
    assert problem["title"]
    # Every answer to a request names it: the path as received and the request's id, the
    # same as its X-Request-ID header (the edge's own refusals too: preflight, shutdown).
    assert problem["requestId"] == response.headers["x-request-id"], problem
    # As written: a path with an escape is no route's (404), and names none.
    assert problem["instance"] == response.request.url.raw_path.decode().split("?")[0]
    if field is not None:
        assert [error["field"] for error in problem["errors"]] == [field], problem
        assert problem["errors"][0]["message"]
    return problem
