"""The audit trail as a running broker writes it: one chained line per outcome, fail closed."""

from __future__ import annotations

import hashlib
import resource
from pathlib import Path

from broker.audit.records import WITHHELD_REASON
from tests.conftest import AUDIENCE, BrokerFactory, Simulator
from tests.support import loopback
from tests.support.problems import assert_problem


def test_one_chained_record_per_outcome_without_secrets(
    start_broker: BrokerFactory, simulator: Simulator
) -> None:
    broker = start_broker(name="audit-outcomes")
    issued = broker.post_token(headers={"X-Forwarded-For": "203.0.113.9"})
    invalid = broker.post_token(body={"audience": AUDIENCE, "externalUserId": "*"})
    unauthenticated = broker.post_token(client=None)
    denied = broker.post_token(body={"audience": "https://evil.example", "externalUserId": "u"})
    simulator.fault(status=500, times=1)
    failed = broker.post_token(fresh=True)
    responses = [issued, invalid, unauthenticated, denied, failed]
    assert [r.status_code for r in responses] == [200, 400, 401, 403, 502]

    lines = broker.audit_lines()
    assert [(line["outcome"], line["code"], line["status"]) for line in lines] == [
        ("issued", "issued", 200),
        ("rejected", "invalid_request", 400),
        ("denied", "unauthenticated", 401),
        ("denied", "audience_not_allowed", 403),
        ("failed", "upstream_error", 502),
    ]
    assert [line["requestId"] for line in lines] == [
        r.json()["requestId"] if r.status_code != 200 else r.headers["x-request-id"]
        for r in responses
    ]

    record = lines[0]
    body = issued.json()
    assert record["caller"] == "billing-svc"
    assert record["authMethod"] == "client_key"
    assert record["sourceAddress"] == "127.0.0.1"
    assert record["externalUserId"] == "user_123"
    assert record["audience"] == AUDIENCE
    assert record["permissions"] == body["permissions"]
    assert record["requestedExpiresIn"] is None
    assert record["grantedExpiresIn"] == 900
    assert record["expiresAt"] == body["expiresAt"]
    assert record["upstreamStatus"] == 200
    assert record["upstreamLatencyMs"] > 0
    assert record["tokenSha256"] == body["tokenSha256"]
    assert record["tokenId"] == body["tokenId"]
    assert record["time"].endswith("Z")
    assert lines[2]["caller"] is None
    assert lines[2]["reason"] == "missing_authorization"
    assert lines[4]["upstreamStatus"] == 500

    # The chain: consecutive sequence numbers, each prev the SHA-256 of the line before.
    raw = b"".join(path.read_bytes() for path in sorted(broker.audit_dir.glob("*.jsonl")))
    raw_lines = raw.splitlines()
    chained = broker.audit_records()
    assert [line["seq"] for line in chained] == list(range(1, len(chained) + 1))
    # A chain opens with its start record, signed at once by a start checkpoint.
    assert [(r["type"], r.get("reason")) for r in chained[:2]] == [
        ("start", None),
        ("checkpoint", "start"),
    ]
    assert chained[0]["prev"] == "0" * 64
    for before, line in zip(raw_lines[:-1], chained[1:], strict=True):
        assert line["prev"] == hashlib.sha256(before).hexdigest()

    text = raw.decode()
    assert body["token"] not in text
    assert body["token"].split(".")[2] not in text
    assert simulator.api_key not in text
    for client in broker.clients.values():
        assert client.key not in text
        assert client.sha256 not in text


def test_unwritable_audit_directory_gives_503_and_no_token_then_recovers(
    start_broker: BrokerFactory, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the audit directory's parent should be")
    broker = start_broker(audit_dir=blocker / "audit", name="audit-blocked")

    response = broker.post_token()
    problem = assert_problem(response, 503, "audit_unavailable")
    assert "token" not in problem
    assert "eyJ" not in response.text
    assert response.headers["retry-after"]
    # A refusal needs no token, so it is still answered as what it is.
    assert broker.post_token(client=None).status_code == 401
    # A bar is on the record before it is made: without the record, it is not made.
    admin = broker.clients["admin"].headers()
    bar = {"kind": "caller", "value": "billing-svc", "reason": "test"}
    refused = loopback.post(broker.url + "/admin/revocations", json=bar, headers=admin, timeout=10)
    assert_problem(refused, 503, "audit_unavailable")
    assert refused.headers["retry-after"] == "1"

    blocker.unlink()
    recovered = broker.post_token()
    assert recovered.status_code == 200, recovered.text
    lines = broker.audit_lines()
    assert lines[-1]["outcome"] == "issued"
    assert lines[-1]["tokenSha256"] == recovered.json()["tokenSha256"]
    listed = loopback.get(broker.url + "/admin/revocations", headers=admin, timeout=10)
    assert listed.json()["bars"] == []


def _limit_file_size() -> None:
    # Room for a few records, then writes fail with EFBIG, as on a full disk.
    resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))


def test_a_disk_that_fills_up_mid_run_withholds_tokens(start_broker: BrokerFactory) -> None:
    broker = start_broker(name="audit-full", preexec=_limit_file_size)
    responses = [broker.post_token(fresh=True) for _ in range(12)]
    statuses = [response.status_code for response in responses]
    assert statuses[0] == 200
    assert 503 in statuses
    assert set(statuses) == {200, 503}
    for response in responses:
        if response.status_code == 503:
            assert response.json()["code"] == "audit_unavailable"
            assert "eyJ" not in response.text

    # Read once the broker has stopped: a withheld token's record is written after its 503
    # (nobody waits for it), and a write that fails part way is cut back (ftruncate) a moment
    # later, so files read while it runs can end mid-line or gain a record between reads.
    broker.server.stop()
    # Every token handed out has its record, and no record claims a token that was withheld.
    lines = broker.audit_lines()
    handed_out = [r.json()["tokenSha256"] for r in responses if r.status_code == 200]
    assert [line["tokenSha256"] for line in lines if line["outcome"] == "issued"] == handed_out
    # A withheld token's record, once the writer has a new file: it says so, by fingerprint.
    withheld = [line for line in lines if line["outcome"] != "issued"]
    assert 1 <= len(withheld) <= statuses.count(503)
    for line in withheld:
        assert (line["outcome"], line["code"], line["status"]) == (
            "failed",
            "audit_unavailable",
            503,
        )
        assert line["reason"] == WITHHELD_REASON
        assert line["tokenSha256"] not in handed_out
    # After a failed write the writer starts a new file that carries the chain on, so the
    # files hold only whole lines and the chain has no gap.
    paths = sorted(broker.audit_dir.glob("*.jsonl"))
    assert len(paths) > 1
    raw_lines: list[bytes] = []
    for path in paths:
        data = path.read_bytes()
        assert data.endswith(b"\n")
        raw_lines += data.splitlines()
    chained = broker.audit_records()
    assert [line["seq"] for line in chained] == list(range(1, len(chained) + 1))
    for before, line in zip(raw_lines[:-1], chained[1:], strict=True):
        assert line["prev"] == hashlib.sha256(before).hexdigest()
