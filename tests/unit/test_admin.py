"""``POST /admin/revocations`` in-process: a body of the wrong shape, or a bar that could never
match, is refused naming the field and its rule, as ``POST /tokens`` does; nothing is barred
or recorded."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from broker.shared import Bar
from tests.support.privileged import ADMIN_KEY, Guarded, bearer
from tests.support.waiting import eventually

_VALUE_RULE = "must be a string of 1 to 2048 characters"
_SINCE_RULE = "must be an RFC 3339 time with an offset or Z (default: now)"


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        (
            {"kind": "everyone", "value": "x"},
            "kind",
            'must be one of "caller", "end_user", "audience" (is not one of them)',
        ),
        ({"kind": "end_user", "value": ""}, "value", f"{_VALUE_RULE} (has a length outside"),
        ({"kind": "end_user", "value": "u" * 2049}, "value", f"{_VALUE_RULE} (has a length"),
        ({"kind": "end_user", "value": 7}, "value", f"{_VALUE_RULE} (got int)"),
        ({"kind": "end_user"}, "value", f"is required; {_VALUE_RULE}"),
        ({"value": "x"}, "kind", 'is required; must be one of "caller"'),
        ({"kind": "end_user", "value": "x", "action": "BAR"}, "action", 'must be "bar" or "lift"'),
        ({"kind": "end_user", "value": "x", "since": 5}, "since", f"{_SINCE_RULE} (got int)"),
        ({"kind": "end_user", "value": "x", "since": "yesterday"}, "since", _SINCE_RULE),
        (
            {"kind": "end_user", "value": "x", "reason": "r" * 501},
            "reason",
            "must be a string of at most 500 characters",
        ),
        (
            {"kind": "end_user", "value": "x", "colour": "red"},
            "colour",
            "unknown field; allowed fields are kind, value, action, since, reason",
        ),
        ({"kind": "end_user", "value": "x", "": 1}, '""', "unknown field"),
        ([], "(body)", "must be a JSON object"),
    ],
)
def test_a_body_of_the_wrong_shape_names_the_field_and_its_rule(
    guarded_by_module: Guarded, body: object, field: str, message: str
) -> None:
    response = guarded_by_module.driver.request(
        "POST",
        "/admin/revocations",
        headers=[*bearer(ADMIN_KEY), (b"content-type", b"application/json")],
        body=json.dumps(body).encode(),
    )
    assert response.status == 400
    problem = json.loads(response.body)
    assert problem["code"] == "invalid_request"
    [error] = problem["errors"]
    assert error["field"] == field
    assert error["message"].startswith(message), error["message"]
    assert guarded_by_module.records("revocation") == []
    assert list(guarded_by_module.runtime.revocations.current()) == []


@pytest.mark.parametrize(
    "body", [b"{", b'{"kind": "end_user", "value": "\xff"}', b'{"kind": "end_user", "value": "x"']
)
def test_a_body_that_is_not_json_is_malformed_json_naming_the_body(
    guarded_by_module: Guarded, body: bytes
) -> None:
    response = guarded_by_module.driver.request(
        "POST",
        "/admin/revocations",
        headers=[*bearer(ADMIN_KEY), (b"content-type", b"application/json")],
        body=body,
    )
    assert response.status == 400
    problem = json.loads(response.body)
    assert problem["code"] == "malformed_json"
    assert problem["errors"] == [{"field": "(body)", "message": "is not valid JSON in UTF-8"}]
    assert guarded_by_module.records("revocation") == []


@pytest.mark.parametrize(
    ("kind", "value", "rule"),
    [
        ("end_user", "user\n1", "must be 1 to 150 printable ASCII characters"),
        ("end_user", "*", "must be 1 to 150 printable ASCII characters"),
        ("end_user", "u" * 151, "must be 1 to 150 printable ASCII characters"),
        ("audience", "billing", "must be an absolute http or https URL"),
        ("audience", "https://a.example/#x", "must be an absolute http or https URL"),
        ("caller", "svc\x1b[2J", "must be a caller's id: printable ASCII"),
    ],
)
def test_a_bar_that_could_never_match_is_refused_naming_the_rule_of_its_kind(
    guarded: Guarded, kind: str, value: str, rule: str
) -> None:
    status, problem = guarded.revoke({"kind": kind, "value": value})
    assert status == 400
    assert problem["code"] == "invalid_request"
    [error] = problem["errors"]
    assert error["field"] == "value"
    assert error["message"].startswith(f"for kind {kind!r}, {rule}"), error["message"]
    assert guarded.records("revocation") == []
    # A lift is never refused for its value: it must be able to end any bar there is.
    status, answer = guarded.revoke({"kind": kind, "value": value, "action": "lift"})
    assert status == 200, answer
    assert [record["action"] for record in guarded.records("revocation")] == ["lift"]


def test_a_bar_of_each_kind_on_a_value_it_can_match_is_made(guarded: Guarded) -> None:
    for kind, value in (
        ("end_user", "user_1 with spaces"),
        ("audience", "https://api.example.com"),
        ("caller", "idp/subject 7"),
    ):
        status, answer = guarded.revoke({"kind": kind, "value": value})
        assert status == 200, answer
    assert {(bar.kind, bar.value) for bar in guarded.runtime.revocations.current()} == {
        ("end_user", "user_1 with spaces"),
        ("audience", "https://api.example.com"),
        ("caller", "idp/subject 7"),
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "caller", "value": "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1In0.c2ln"}, "value"),
        (
            {"kind": "end_user", "value": "u1", "reason": "leaked bk_" + "A" * 43},
            "reason",
        ),
        # A lift of a value no bar holds would only put it on the trail.
        ({"kind": "end_user", "value": "bk_" + "A" * 43, "action": "lift"}, "value"),
    ],
)
def test_a_token_or_a_client_key_never_reaches_the_revocations_record(
    guarded_by_module: Guarded, body: dict[str, str], field: str
) -> None:
    # The revocation's record keeps its value and reason for good; an admin who pastes the
    # leaked credential itself would have put it on the trail.
    status, problem = guarded_by_module.revoke(body)
    assert status == 400
    [error] = problem["errors"]
    assert (error["field"], error["message"]) == (
        field,
        "holds a token or a client key, which the audit trail must never keep",
    )
    assert guarded_by_module.records("revocation") == []


def test_a_bar_past_the_most_in_force_is_refused_and_a_lift_or_a_bar_in_force_is_not(
    guarded: Guarded,
) -> None:
    """Every replica reads every bar whenever they change, and the list is one answer: a
    script gone wrong (or a stolen admin key) could otherwise bar values without end."""
    guarded.runtime.revocations.max_bars = 2
    for value in ("u1", "u2"):
        assert guarded.revoke({"kind": "end_user", "value": value})[0] == 200
    status, problem = guarded.revoke({"kind": "end_user", "value": "u3"})
    assert status == 409
    assert problem["code"] == "too_many_bars"
    assert problem["detail"] == "at most 2 bars may be in force at once; lift one first"
    assert problem["errors"] == [{"field": "value", "message": "would be bar 3; at most 2"}]
    # Refused before the trail: nothing was asked of the kill switch.
    assert [r["value"] for r in guarded.records("revocation")] == ["u1", "u2"]
    # A bar in force may be made again (a new reason, a new time), and any lifted.
    assert guarded.revoke({"kind": "end_user", "value": "u2", "reason": "again"})[0] == 200
    assert guarded.revoke({"kind": "end_user", "value": "u1", "action": "lift"})[0] == 200
    assert guarded.revoke({"kind": "end_user", "value": "u3"})[0] == 200
    assert {bar.value for bar in guarded.runtime.revocations.current()} == {"u2", "u3"}


def test_a_bar_in_force_on_a_tokens_text_can_be_lifted(guarded: Guarded) -> None:
    # An older broker barred such values: its lift must still end the bar.
    token = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1In0.c2ln"
    bar = Bar("caller", token, time.time(), "", "admin")
    assert asyncio.run(guarded.runtime.revocations.bar(bar)) == "replica"
    assert guarded.revoke({"kind": "caller", "value": token, "action": "lift"})[0] == 200
    assert guarded.runtime.revocations.current() == []


def _change(guarded: Guarded, body: dict[str, str]) -> int:
    """POST /admin/revocations as the admin; how many of the replica's records the audit
    store still lacked when it answered (200 required)."""
    response = guarded.driver.request(
        "POST",
        "/admin/revocations",
        headers=[*bearer(ADMIN_KEY), (b"content-type", b"application/json")],
        body=json.dumps(body).encode(),
    )
    assert response.status == 200, response.body
    return int(response.headers[b"audit-store-behind"])


def test_a_change_says_when_its_record_is_not_in_the_audit_store_yet(guarded: Guarded) -> None:
    # The store's copy of a bar's record is what brings the bar back when the shared store
    # loses it after every replica that held it is gone too: the admin is told when the
    # answer came before it (the store lagging past the wait of a second).
    values = (f"u_{number}" for number in range(1000))

    def in_store() -> bool:
        return _change(guarded, {"kind": "end_user", "value": next(values)}) == 0

    eventually(in_store, what="a change answered once the store holds its record")
    with guarded.shipping_stopped():
        assert _change(guarded, {"kind": "end_user", "value": "u_stolen"}) >= 1
    # In force all the same: the store's lag delays nothing but its copy.
    assert ("end_user", "u_stolen") in {
        (bar.kind, bar.value) for bar in guarded.runtime.revocations.current()
    }
    eventually(in_store, what="the store caught up")
