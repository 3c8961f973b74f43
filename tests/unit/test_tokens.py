"""``POST /tokens``'s translation (``broker/api/tokens.py``) in-process: a fault of the
broker's own anywhere on the route, before the token service takes the request too, is a
500 on the trail, never one without a record; and one in the cache-hit lane sends the request
the task way, where that holds."""

from __future__ import annotations

import json
from typing import Any

from broker.api.edge import Edge
from broker.api.tokens import lane, token_answer
from tests.support.privileged import READER_KEY, Guarded, bearer


def _scope(**extra: Any) -> dict[str, Any]:
    """A POST /tokens from a known caller, as the server layer hands it over."""
    return {
        "type": "http",
        "method": "POST",
        "path": "/tokens",
        "headers": [*bearer(READER_KEY), (b"content-type", b"application/json")],
        "client": ("192.0.2.7", 50000),
        **extra,
    }


def test_a_fault_before_the_token_service_is_a_500_on_the_trail(guarded: Guarded) -> None:
    async def broken(_: str | None) -> bytes:
        raise RuntimeError("the body could not be read")

    scope = _scope(state={"request_id": "fault-1"})
    status, _, body = guarded.driver.loop.run_until_complete(
        token_answer(guarded.runtime, scope, broken)
    )

    assert status == 500
    problem = json.loads(body)
    assert (problem["code"], problem["detail"]) == (
        "internal_error",
        "an unexpected error occurred",
    )
    [record] = [r for r in guarded.records("decision") if r["requestId"] == "fault-1"]
    assert {name: record[name] for name in ("outcome", "code", "status", "caller", "reason")} == {
        "outcome": "failed",
        "code": "internal_error",
        "status": 500,
        "caller": "reader-svc",
        "reason": "RuntimeError",
    }
    assert record["sourceAddress"] == "192.0.2.7"


def test_a_fault_in_the_cache_hit_lane_declines_the_request_rather_than_answer_500(
    guarded: Guarded,
) -> None:
    # The lane answers hits without a task; what it trips on goes the task way instead,
    # where a fault is put on the trail (above) and anything else is served. It answered
    # the connection layer's bare 500, with no record.
    take = lane(guarded.runtime, Edge(guarded.runtime.metrics, lambda: frozenset()))
    answered: list[object] = []
    # No "state": the lane reads it as given, the task way makes one.
    assert take(_scope(), b"{}", answered.append) is False
    assert answered == []
