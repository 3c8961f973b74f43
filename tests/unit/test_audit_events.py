"""``GET /audit/events`` (``broker/api/audit.py``) in-process, against its embedded store: a
store that fails is a 503 worth a retry; a store that holds a row no broker wrote is not, and
says how to find it. Neither serves a page, and neither leaks the store's own text."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import pytest

from broker.audit.store import RECORDS
from tests.support.privileged import AUDITOR_KEY, READER_KEY, Guarded, bearer
from tests.support.waiting import eventually, until_stored


def _stored(guarded: Guarded) -> sqlite3.Connection:
    """A refusal on the trail and in the store, and a connection to that store's file as
    someone with the disk would open it."""
    assert guarded.get("/audit/events", bearer(READER_KEY)) == 403

    def codes() -> list[str]:
        page = guarded.driver.request("GET", "/audit/events", headers=bearer(AUDITOR_KEY))
        assert page.status == 200
        return [event["code"] for event in json.loads(page.body)["events"]]

    until_stored(codes, ["not_auditor"])
    return sqlite3.connect(guarded.runtime.settings.audit.sqlite_path)


def _behind(guarded: Guarded) -> int:
    """A page's count of this replica's records the store did not hold yet."""
    page = guarded.driver.request("GET", "/audit/events", headers=bearer(AUDITOR_KEY))
    assert page.status == 200
    return int(page.headers[b"audit-store-behind"])


def test_a_page_says_how_many_of_its_replicas_records_the_store_lacks(guarded: Guarded) -> None:
    # Past its wait of a second, a page was served as the store had it, short of the newest
    # records, and nothing told the auditor so.
    _stored(guarded).close()
    eventually(lambda: _behind(guarded) == 0, what="the store holding every record")
    with guarded.shipping_stopped():
        refused = guarded.driver.request(
            "POST",
            "/tokens",
            headers=[*bearer(READER_KEY), (b"content-type", b"application/json")],
            body=b"{}",
        )
        assert refused.status == 400  # a decision on the trail, which the store lacks
        assert _behind(guarded) >= 1
    eventually(lambda: _behind(guarded) == 0, what="the store caught up")


def test_a_row_edited_in_the_store_is_a_502_that_says_how_to_find_it(guarded: Guarded) -> None:
    with _stored(guarded) as store:
        store.execute("UPDATE audit_records SET line = '[\"planted\"]'")
    reads_before = len(guarded.records("read"))

    response = guarded.driver.request("GET", "/audit/events", headers=bearer(AUDITOR_KEY))

    assert response.status == 502
    assert response.headers[b"content-type"] == b"application/problem+json"
    # Asking again meets the same row: nothing invites a retry.
    assert b"retry-after" not in response.headers
    problem = json.loads(response.body)
    assert problem["code"] == "audit_store_inconsistent"
    assert "broker audit verify --database" in problem["detail"]
    assert "planted" not in response.body.decode()
    # No page left, so no read is on the trail either.
    assert len(guarded.records("read")) == reads_before


def test_a_store_that_fails_is_a_503_worth_a_retry(guarded: Guarded) -> None:
    with _stored(guarded) as store:
        store.execute(f"DROP TABLE {RECORDS}")

    response = guarded.driver.request("GET", "/audit/events", headers=bearer(AUDITOR_KEY))

    assert response.status == 503
    assert response.headers[b"retry-after"] == b"5"
    problem = json.loads(response.body)
    assert problem["code"] == "audit_store_unavailable"
    assert RECORDS not in response.body.decode()
    assert str(guarded.runtime.settings.audit.sqlite_path) not in response.body.decode()


def test_a_fault_of_the_brokers_own_is_a_500_on_the_trail(guarded: Guarded) -> None:
    # A real fault, not a fake: the route's thread pool is shut down, so the read cannot even
    # be scheduled. The trail holds every request to the route, this one included.
    kept = guarded.runtime.store_executor
    gone = ThreadPoolExecutor(1)
    gone.shutdown()
    guarded.runtime.store_executor = gone
    try:
        response = guarded.driver.request("GET", "/audit/events", headers=bearer(AUDITOR_KEY))
    finally:
        guarded.runtime.store_executor = kept

    assert response.status == 500
    assert json.loads(response.body)["code"] == "internal_error"
    [fault] = [r for r in guarded.refusals() if r["code"] == "internal_error"]
    assert (fault["route"], fault["caller"], fault["outcome"], fault["status"]) == (
        "GET /audit/events",
        "auditor-svc",
        "failed",
        500,
    )
    assert fault["reason"] == "RuntimeError"
    # Refusals and answers the route means to give are recorded as themselves, not as faults.
    assert guarded.get("/audit/events", bearer(READER_KEY)) == 403
    assert [r["code"] for r in guarded.refusals()][-1] == "not_auditor"


@pytest.mark.parametrize(
    ("query", "field"),
    [
        (b"subject=%ff%fe", "subject"),
        (b"limit=5&caller=ok&audience=https%3A%2F%2Fa%C3", "audience"),
        (b"subject=\xff", "subject"),
        (b"%ff=1", "…"),
    ],
)
def test_a_filter_that_is_not_utf8_is_a_400_naming_it(
    guarded: Guarded, query: bytes, field: str
) -> None:
    # The framework read such bytes as U+FFFD: an empty page, and a read record holding a
    # filter the auditor never sent.
    reads_before = len(guarded.records("read"))
    response = guarded.driver.request(
        "GET", "/audit/events", headers=bearer(AUDITOR_KEY), query=query
    )
    assert response.status == 400
    problem = json.loads(response.body)
    assert problem["code"] == "invalid_query"
    assert problem["errors"] == [
        {"field": field, "message": "is not valid UTF-8 once percent-decoded"}
    ]
    assert len(guarded.records("read")) == reads_before
    # Good UTF-8, percent-encoded or not, is a filter like any other.
    good = guarded.driver.request(
        "GET", "/audit/events", headers=bearer(AUDITOR_KEY), query=b"subject=%C3%A9l%C3%A8ve"
    )
    assert good.status == 200
    assert guarded.records("read")[-1]["filters"] == {"subject": "élève"}


def test_the_embedded_store_is_made_before_the_first_read(guarded: Guarded) -> None:
    # Left to the shipping process (a fresh interpreter, 0.5-2 s to start on a busy host),
    # the first reads after a start answered 503 "no such table": found as a flaky test.
    with contextlib.closing(sqlite3.connect(guarded.runtime.settings.audit.sqlite_path)) as db:
        assert db.execute("SELECT count(*) FROM audit_records").fetchone() is not None


@pytest.mark.parametrize(
    "query",
    [
        b"tokenId=eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1In0.c2ln",
        b"subject=bk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ],
)
def test_a_filter_holding_a_token_or_a_client_key_is_refused_before_the_trail(
    guarded: Guarded, query: bytes
) -> None:
    # Taken, the filter went into the read's record: a token pasted into tokenId was a
    # live token in the audit trail, for good.
    response = guarded.driver.request(
        "GET", "/audit/events", headers=bearer(AUDITOR_KEY), query=query
    )
    assert response.status == 400
    [error] = json.loads(response.body)["errors"]
    assert error["field"] == query.split(b"=")[0].decode()
    assert error["message"].startswith("holds a token or a client key")
    secret = query.split(b"=")[1]
    for path in guarded.directory.glob("audit-*.jsonl"):
        assert secret not in path.read_bytes()
