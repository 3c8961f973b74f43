"""The one table from refusal to answer, in-process: every code's problem document and headers,
the router's own 404/405/413, a fault's 500, and a durable-or-refused record."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from litestar import Litestar, Request, get, post
from litestar.exceptions import HTTPException
from litestar.testing import TestClient

from broker.api.errors import (
    PROBLEM_CODE,
    PROBLEM_JSON,
    QUIET,
    ProblemError,
    handle_http_exception,
    handle_problem,
    handle_unexpected,
    record_or_refuse,
    refusal_answer,
)
from broker.audit.records import RevocationBody
from broker.audit.writer import AuditWriter
from broker.config import AuditSettings
from broker.models import FieldError
from broker.refusals import STATUS_OF, Refusal
from broker.rules import MAX_BODY


def _scope(path: str = "/tokens") -> dict[str, Any]:
    return {"type": "http", "path": path, "state": {"request_id": "req-1"}}


def _answer(
    refusal: Refusal, scope: dict[str, Any] | None = None
) -> tuple[int, dict[str, str], Any]:
    status, headers, body = refusal_answer(scope if scope is not None else _scope(), refusal)
    named = {name.decode("latin-1"): value.decode("latin-1") for name, value in headers}
    assert len(named) == len(headers), "a header named twice"
    assert all(name == name.lower() for name in named)
    assert named["content-length"] == str(len(body))
    return status, named, json.loads(body)


@pytest.mark.parametrize("code", sorted(STATUS_OF))
def test_every_code_is_answered_as_a_problem_with_its_status(code: str) -> None:
    scope = _scope()
    status, headers, problem = _answer(Refusal(code, "what happened", outcome="denied"), scope)
    assert 400 <= status <= 599
    assert status == STATUS_OF[code]
    assert headers["content-type"] == PROBLEM_JSON
    assert problem["status"] == status
    assert problem["code"] == code
    assert problem["type"].endswith(code)
    assert problem["title"]
    assert problem["detail"] == "what happened"
    assert problem["instance"] == "/tokens"
    assert problem["requestId"] == "req-1"
    assert "errors" not in problem
    # For the access line: the code the request ended with.
    assert scope["state"][PROBLEM_CODE] == code
    assert QUIET not in scope["state"]


def test_an_unauthenticated_answer_names_the_scheme_to_use() -> None:
    _, headers, _ = _answer(Refusal("unauthenticated", "no credentials", outcome="denied"))
    assert headers["www-authenticate"] == 'Bearer realm="mka1-token-broker"'


def test_a_retry_after_and_a_refusals_own_headers_are_sent() -> None:
    refusal = Refusal(
        "rate_limited",
        "slow down",
        outcome="denied",
        retry_after=7,
        headers={"Vary": "Origin"},
    )
    status, headers, _ = _answer(refusal)
    assert (status, headers["retry-after"], headers["vary"]) == (429, "7", "Origin")


def test_field_errors_name_each_field_and_its_rule() -> None:
    errors = [
        FieldError("expiresIn", "must be an integer from 300 to 2592000"),
        FieldError("audience", "is required"),
    ]
    refusal = Refusal(
        "invalid_request", "the request is invalid", outcome="rejected", errors=errors
    )
    _, _, problem = _answer(refusal)
    assert problem["errors"] == [
        {"field": "expiresIn", "message": "must be an integer from 300 to 2592000"},
        {"field": "audience", "message": "is required"},
    ]


def test_a_quiet_refusal_asks_for_no_access_line_of_its_own() -> None:
    scope = _scope()
    refusal = Refusal("too_many_auth_failures", "slow down", outcome="denied", retry_after=1)
    refusal.quiet = True
    _answer(refusal, scope)
    assert scope["state"][QUIET] is True


def test_the_instance_is_the_path_as_received() -> None:
    _, _, problem = _answer(
        Refusal("not_found", "no such resource", outcome="rejected"), _scope("/a%2Fb/%ff")
    )
    assert problem["instance"] == "/a%2Fb/%ff"


@get("/boom", sync_to_thread=False)
def _boom() -> None:
    raise RuntimeError("a secret in an exception: mk_live_abcdef0123456789")


@get("/refused", sync_to_thread=False)
def _refused() -> None:
    raise ProblemError(429, "rate_limited", "slow down", headers={"Retry-After": "3"}, quiet=True)


@post("/echo")
async def _echo(request: Request[Any, Any, Any]) -> bytes:
    return await request.body()


def _client() -> TestClient[Litestar]:
    app = Litestar(
        [_boom, _refused, _echo],
        # As the broker's app: one bound for every route, which the 413's detail names.
        request_max_body_size=MAX_BODY,
        exception_handlers={
            ProblemError: handle_problem,
            HTTPException: handle_http_exception,
            Exception: handle_unexpected,
        },
    )
    return TestClient(app, raise_server_exceptions=False)


@pytest.mark.parametrize(
    ("method", "path", "status", "code", "detail"),
    [
        ("GET", "/nowhere", 404, "not_found", "no such resource"),
        ("DELETE", "/boom", 405, "method_not_allowed", "DELETE is not allowed here"),
        ("POST", "/echo", 413, "body_too_large", f"the body must be at most {MAX_BODY} bytes"),
        ("GET", "/boom", 500, "internal_error", "an unexpected error occurred"),
    ],
)
def test_the_routers_own_answers_and_a_fault_are_problems_too(
    method: str, path: str, status: int, code: str, detail: str
) -> None:
    with _client() as client:
        response = client.request(method, path, content=b"x" * (MAX_BODY + 1))
    assert response.status_code == status
    assert response.headers["content-type"] == PROBLEM_JSON
    problem = response.json()
    assert (problem["status"], problem["code"], problem["detail"]) == (status, code, detail)
    assert "mk_live_" not in response.text


def test_a_problem_raised_by_a_handler_keeps_its_headers() -> None:
    with _client() as client:
        response = client.get("/refused")
    assert (response.status_code, response.headers["retry-after"]) == (429, "3")
    assert response.json()["code"] == "rate_limited"


def test_a_record_that_cannot_be_made_durable_refuses_the_request(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the audit directory should be")
    writer = AuditWriter(AuditSettings(dir=str(blocked), fsync=False))
    body = RevocationBody(
        time="2026-12-07T00:00:00.000Z",
        request_id="req-1",
        by="admin",
        action="bar",
        kind="caller",
        value="svc",
        scope="replica",
    )

    async def run() -> ProblemError:
        await writer.start()
        try:
            with pytest.raises(ProblemError) as refused:
                await record_or_refuse(writer, "revocation", body, "the change was not made")
            return refused.value
        finally:
            await writer.close()

    problem = asyncio.run(run())
    assert (problem.status, problem.code) == (503, "audit_unavailable")
    assert problem.detail == "the change was not made; retry"
    assert problem.headers == {"Retry-After": "1"}
