"""The privileged routes' guard, in-process: who may, and the record of every refusal (who
tried, how, from where, why), within bounds that a flood cannot push past."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker.cli import main
from broker.ratelimit import RepeatBudget
from tests.support.clock import ManualClock
from tests.support.privileged import (
    ADMIN_KEY,
    AUDITOR_KEY,
    READER_KEY,
    Guarded,
    bearer,
    privileged_client,
)


def test_a_caller_without_the_role_is_refused_and_the_attempt_is_on_the_trail(
    guarded: Guarded, capsys: pytest.CaptureFixture[str]
) -> None:
    assert guarded.get("/audit/events", bearer(READER_KEY)) == 403
    [refused] = guarded.refusals()
    assert {
        "route": "GET /audit/events",
        "outcome": "denied",
        "code": "not_auditor",
        "status": 403,
        "caller": "reader-svc",
        "authMethod": "client_key",
        "sourceAddress": "127.0.0.1",
        "reason": "no auditor role",
        "unrecordedBefore": None,
        "tokenSha256": None,
        "externalUserId": None,
    }.items() <= refused.items()
    assert refused["requestId"]
    # An auditor's usual question finds it.
    capsys.readouterr()
    where = str(guarded.directory)
    assert main(["audit", "query", where, "--caller", "reader-svc", "--format", "json"]) == 0
    printed = capsys.readouterr().out
    assert [json.loads(line)["route"] for line in printed.splitlines() if "route" in line] == [
        "GET /audit/events"
    ]

    response = guarded.driver.request(
        "POST",
        "/admin/revocations",
        headers=[*bearer(AUDITOR_KEY), (b"content-type", b"application/json")],
        body=b'{"kind": "caller", "value": "reader-svc"}',
    )
    assert response.status == 403
    assert json.loads(response.body)["code"] == "not_admin"
    assert guarded.refusals()[-1]["route"] == "POST /admin/revocations"
    assert guarded.refusals()[-1]["caller"] == "auditor-svc"
    assert guarded.runtime.revocations.current() == []


def test_the_roles_pass_and_leave_no_refusal(guarded: Guarded) -> None:
    assert guarded.get("/audit/events", bearer(AUDITOR_KEY)) == 200
    assert guarded.get("/admin/revocations", bearer(ADMIN_KEY)) == 200
    assert guarded.refusals() == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        # Not UTF-8: msgspec raised UnicodeDecodeError, which the route did not catch (a 500).
        (b'{"kind": "end_user", "value": "\xff", "action": "bar"}', "malformed_json"),
        (b"{not json", "malformed_json"),
        # Deeper than msgspec recurses, where a string goes: refused at its first bracket.
        (b'{"kind": ' + b"[" * 1500 + b"]" * 1500 + b"}", "invalid_request"),
    ],
)
def test_a_revocation_body_that_is_not_json_in_utf8_is_400_not_500(
    guarded: Guarded, body: bytes, code: str
) -> None:
    headers = [*bearer(ADMIN_KEY), (b"content-type", b"application/json")]
    answer = guarded.driver.request("POST", "/admin/revocations", headers=headers, body=body)
    assert answer.status == 400, answer.body
    assert json.loads(answer.body)["code"] == code
    assert guarded.records("revocation") == []


def test_a_known_caller_polling_gets_one_record_a_second_with_the_repeats_counted(
    guarded: Guarded,
) -> None:
    clock = ManualClock()
    guarded.runtime.route_refusals = RepeatBudget(interval_seconds=1.0, clock=clock)
    statuses = [guarded.get("/audit/events", bearer(READER_KEY)) for _ in range(25)]
    assert statuses == [403] * 25
    assert len(guarded.refusals()) == 1
    # The same caller at the other route is a record of its own.
    assert guarded.get("/admin/revocations", bearer(READER_KEY)) == 403
    assert [r["route"] for r in guarded.refusals()] == [
        "GET /audit/events",
        "GET /admin/revocations",
    ]
    # A second on, the next refusal is recorded and says how many it stands for.
    clock.now += 1.0
    assert guarded.get("/audit/events", bearer(READER_KEY)) == 403
    assert guarded.refusals()[-1]["unrecordedBefore"] == 24
    assert len(guarded.refusals()) == 3


def test_unknown_callers_are_recorded_within_the_deployments_budget(guarded: Guarded) -> None:
    # Bad keys: 401 each, a record each within unauthenticated_records (a burst of 3); the
    # rest are counted for the next record written (the token route's budget and count).
    for n in range(5):
        assert guarded.get("/audit/events", bearer(f"bk_guess_{n}_" + "g" * 32)) == 401
    refused = guarded.refusals()
    assert [r["code"] for r in refused] == ["unauthenticated"] * 3
    assert {r["caller"] for r in refused} == {None}
    assert {r["sourceAddress"] for r in refused} == {"127.0.0.1"}
    assert all(r["reason"] for r in refused)
    assert guarded.runtime.anonymous_records.take_unrecorded() == 2


def test_a_throttled_address_is_refused_quietly_with_no_record(guarded: Guarded) -> None:
    for n in range(8):
        guarded.get("/audit/events", bearer(f"bk_guess_{n}_" + "g" * 32))
    before = len(guarded.refusals())
    counted = guarded.runtime.anonymous_records.take_unrecorded() or 0
    for n in range(20):
        assert guarded.get("/audit/events", bearer(f"bk_more_{n}_" + "g" * 32)) == 429
    assert len(guarded.refusals()) == before
    # No record of their own, but each is counted for the trail: an auditor can account for
    # every refusal (the count goes into the next such record, or an unrecorded record).
    assert guarded.runtime.anonymous_records.take_unrecorded() == 20
    assert counted == 5  # the 8 guesses: 3 recorded within the budget, 5 counted
    # A key known at no cost still gets its answer, and a refusal its record.
    assert guarded.get("/audit/events", bearer(AUDITOR_KEY)) == 200
    assert guarded.get("/admin/revocations", bearer(AUDITOR_KEY)) == 403
    assert guarded.refusals()[-1]["caller"] == "auditor-svc"


def test_a_role_holder_spends_from_its_per_caller_bucket(tmp_path: Path) -> None:
    # A leaked auditor key must not grow the trail without bound: each read is a record.
    limited = Guarded(tmp_path / "audit", per_caller="{ rate_per_second = 0.01, burst = 3 }")
    limited.driver.start()
    try:
        statuses = [limited.get("/audit/events", bearer(AUDITOR_KEY)) for _ in range(6)]
        assert statuses == [200] * 3 + [429] * 3
        response = limited.driver.request("GET", "/audit/events", headers=bearer(AUDITOR_KEY))
        assert json.loads(response.body)["code"] == "rate_limited"
        assert int(response.headers[b"retry-after"]) >= 1
        # The refusals are on the trail once a second, the reads that ran as reads.
        refused = limited.refusals()
        assert [(r["code"], r["status"], r["caller"]) for r in refused] == [
            ("rate_limited", 429, "auditor-svc")
        ]
        assert len(limited.records("read")) == 3
        # Another caller's bucket is its own.
        assert limited.get("/admin/revocations", bearer(ADMIN_KEY)) == 200
    finally:
        limited.driver.stop()


def test_a_barred_caller_is_refused_at_the_privileged_routes_until_lifted(
    tmp_path: Path,
) -> None:
    # A leaked auditor key read on after its bar, and a leaked admin key lifted its own.
    second = "bk_second_" + "s" * 32
    extra = privileged_client("second-admin", second, '["admin"]')
    guarded = Guarded(tmp_path / "audit", extra=extra)

    def by_second(body: dict[str, str]) -> int:
        headers = [*bearer(second), (b"content-type", b"application/json")]
        encoded = json.dumps(body).encode()
        return guarded.driver.request(
            "POST", "/admin/revocations", headers=headers, body=encoded
        ).status

    guarded.driver.start()
    try:
        assert (
            guarded.revoke({"kind": "caller", "value": "auditor-svc", "reason": "leaked"})[0] == 200
        )
        assert guarded.get("/audit/events", bearer(AUDITOR_KEY)) == 403
        refused = guarded.refusals()[-1]
        assert (refused["route"], refused["code"], refused["status"], refused["reason"]) == (
            "GET /audit/events",
            "revoked",
            403,
            "barred by admin-svc: leaked",
        )
        # Not its own bar (only another admin could lift it); another admin's, yes.
        status, problem = guarded.revoke({"kind": "caller", "value": "admin-svc"})
        assert (status, problem["errors"][0]["field"]) == (400, "value")
        assert by_second({"kind": "caller", "value": "admin-svc"}) == 200
        status, problem = guarded.revoke({"kind": "caller", "value": "admin-svc", "action": "lift"})
        assert (status, problem["code"]) == (403, "revoked")
        assert guarded.get("/admin/revocations", bearer(ADMIN_KEY)) == 403

        assert by_second({"kind": "caller", "value": "auditor-svc", "action": "lift"}) == 200
        assert guarded.get("/audit/events", bearer(AUDITOR_KEY)) == 200
    finally:
        guarded.driver.stop()
