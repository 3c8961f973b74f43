"""Files written by a running broker, tampered with: ``broker audit verify`` names each place.

Also: a broker killed with SIGKILL under load leaves a chain that verifies (at most a
partial last line and an unsigned tail) holding every token a client received; and the
auditor's tools find a token and answer queries.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import AUDIENCE, AuditKeys, BackgroundLoad, Broker, BrokerFactory
from tests.support import loopback
from tests.support.audit_cli import run_audit, verify
from tests.support.waiting import eventually, until_stored

SMALL_FILES = """
checkpoint_every_records = 4
rotate_bytes = 4096
"""


@pytest.fixture(scope="module")
def finished_trail(
    start_module_broker: BrokerFactory, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[httpx.Response]]:
    """A trail of several rotated files, from a broker that was then stopped cleanly."""
    broker = start_module_broker(name="trail", extra_audit=SMALL_FILES)
    responses = []
    for index in range(30):
        user = f"user_{index}"
        body = {"audience": AUDIENCE, "externalUserId": user, "expiresIn": 300 + index}
        responses.append(broker.post_token(body=body))
        if index % 7 == 0:
            broker.post_token(body={"audience": "https://nope.example", "externalUserId": user})
    assert broker.server.stopped_cleanly()
    pristine = tmp_path_factory.mktemp("pristine")
    for path in broker.audit_dir.iterdir():
        shutil.copy2(path, pristine / path.name)
    return pristine, responses


@pytest.fixture
def trail(finished_trail: tuple[Path, list[httpx.Response]], tmp_path: Path) -> Path:
    copy = tmp_path / "audit"
    shutil.copytree(finished_trail[0], copy)
    return copy


def files(directory: Path) -> list[Path]:
    return sorted(directory.glob("audit-*.jsonl"))


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def decision_line(path: Path) -> int:
    """The index of a decision record that is neither first nor last in its file."""
    lines = lines_of(path)
    for index in range(1, len(lines) - 1):
        if b'"type":"decision"' in lines[index]:
            return index
    raise AssertionError(f"no inner decision line in {path}")


def assert_fails_at(result: subprocess.CompletedProcess[str], place: str, what: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith("FAILED: "), result.stdout
    assert place in result.stdout, result.stdout
    assert what in result.stdout, result.stdout


def test_an_untouched_trail_verifies(trail: Path, audit_keys: AuditKeys) -> None:
    result = verify(trail, audit_keys)
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("OK: ")
    assert len(files(trail)) >= 3
    assert "35 record(s)" in result.stdout  # 30 issued, 5 denied
    records = [json.loads(line) for path in files(trail) for line in lines_of(path)]
    reasons = [record["reason"] for record in records if record["type"] == "checkpoint"]
    assert {"count", "rotation"} <= set(reasons)
    assert reasons[-1] == "shutdown"
    # Each file after the first starts where the one before left off.
    for before, after in zip(files(trail), files(trail)[1:], strict=False):
        last = lines_of(before)[-1].rstrip(b"\n")
        assert json.loads(lines_of(after)[0])["prev"] == hashlib.sha256(last).hexdigest()
        assert json.loads(last)["next"] == after.name


def test_verify_also_accepts_single_files_in_order(trail: Path, audit_keys: AuditKeys) -> None:
    result = run_audit("verify", *files(trail), "--public-key", audit_keys.public)
    assert result.returncode == 0, result.stdout


def test_a_changed_field_is_found(trail: Path, audit_keys: AuditKeys) -> None:
    path = files(trail)[1]
    lines = lines_of(path)
    index = decision_line(path)
    record = json.loads(lines[index])
    lines[index] = lines[index].replace(
        f'"externalUserId":"{record["externalUserId"]}"'.encode(), b'"externalUserId":"mallory"'
    )
    path.write_bytes(b"".join(lines))
    result = verify(trail, audit_keys)
    assert_fails_at(
        result, f"{path}:{index + 2} ", f"line {index + 1}, seq {record['seq']}) was modified"
    )


def test_a_deleted_line_is_found(trail: Path, audit_keys: AuditKeys) -> None:
    path = files(trail)[0]
    lines = lines_of(path)
    index = decision_line(path)
    seq = json.loads(lines[index])["seq"]
    del lines[index]
    path.write_bytes(b"".join(lines))
    assert_fails_at(
        verify(trail, audit_keys), f"{path}:{index + 1} (seq {seq + 1})", "1 record(s) deleted"
    )


def test_swapped_lines_are_found(trail: Path, audit_keys: AuditKeys) -> None:
    path = files(trail)[1]
    lines = lines_of(path)
    index = decision_line(path)
    lines[index], lines[index + 1] = lines[index + 1], lines[index]
    path.write_bytes(b"".join(lines))
    result = verify(trail, audit_keys)
    assert_fails_at(result, f"{path}:{index + 1} ", "deleted")


def test_a_forged_line_is_found(trail: Path, audit_keys: AuditKeys) -> None:
    path = files(trail)[1]
    lines = lines_of(path)
    index = decision_line(path)
    before = json.loads(lines[index - 1])
    forged = json.loads(lines[index]) | {
        "seq": before["seq"] + 1,
        "prev": hashlib.sha256(lines[index - 1].rstrip(b"\n")).hexdigest(),
        "externalUserId": "forged",
    }
    lines.insert(index, json.dumps(forged, separators=(",", ":")).encode() + b"\n")
    path.write_bytes(b"".join(lines))
    result = verify(trail, audit_keys)
    assert_fails_at(result, f"{path}:{index + 2} ", "inserted")


def test_rehashing_the_rest_of_the_chain_breaks_the_signature(
    trail: Path, audit_keys: AuditKeys
) -> None:
    path = files(trail)[0]
    lines = lines_of(path)
    index = decision_line(path)
    changed = lines[index].replace(b'"externalUserId":"user_', b'"externalUserId":"mallory_')
    assert changed != lines[index]
    lines[index] = changed
    # Recompute every later prev, as a careful forger would; only the signature can tell.
    for later in range(index + 1, len(lines)):
        record = json.loads(lines[later])
        record["prev"] = hashlib.sha256(lines[later - 1].rstrip(b"\n")).hexdigest()
        if record["type"] == "checkpoint":
            record["headHash"] = record["prev"]
        lines[later] = json.dumps(record, separators=(",", ":")).encode() + b"\n"
    path.write_bytes(b"".join(lines))
    result = verify(trail, audit_keys)
    assert_fails_at(result, f"{path}:", "checkpoint signature is invalid")


def test_a_line_cut_in_half_is_found(trail: Path, audit_keys: AuditKeys) -> None:
    path = files(trail)[-1]
    data = path.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    path.write_bytes(data[: last_start + (len(data) - last_start) // 2])
    count = len(lines_of(path))
    assert_fails_at(verify(trail, audit_keys), f"{path}:{count}", "partial last line")


def test_a_deleted_rotated_file_is_found(trail: Path, audit_keys: AuditKeys) -> None:
    middle = files(trail)[1]
    middle.unlink()
    assert_fails_at(
        verify(trail, audit_keys), str(files(trail)[1]), f"missing file before it: {middle.name}"
    )


def test_a_deleted_last_file_is_found(trail: Path, audit_keys: AuditKeys) -> None:
    last = files(trail)[-1]
    last.unlink()
    assert_fails_at(verify(trail, audit_keys), str(files(trail)[-1]), f"missing file: {last.name}")


def test_dropping_records_after_the_last_checkpoint_is_found(
    trail: Path, audit_keys: AuditKeys
) -> None:
    path = files(trail)[-1]
    lines = lines_of(path)
    # Cut back to the last checkpoint before the shutdown checkpoint, dropping what follows.
    earlier = [index for index, line in enumerate(lines[:-1]) if b'"type":"checkpoint"' in line]
    if earlier:
        path.write_bytes(b"".join(lines[: earlier[-1] + 1]))
        expected = "not a shutdown checkpoint"
    else:
        path.write_bytes(b"".join(lines[:-1]))
        expected = "not signed"
    assert_fails_at(verify(trail, audit_keys), str(path), expected)


def test_a_wrong_public_key_fails(trail: Path, tmp_path: Path) -> None:
    from broker.audit.signing import generate_key_pair

    _, other = generate_key_pair(tmp_path / "other")
    result = run_audit("verify", trail, "--public-key", other)
    assert result.returncode == 1
    assert "not this key" in result.stdout


def test_find_token_finds_what_tokens_returned(
    finished_trail: tuple[Path, list[httpx.Response]],
) -> None:
    directory, responses = finished_trail
    body = responses[5].json()
    for args in (
        ["--token", body["token"]],
        ["--sha256", body["tokenSha256"]],
        ["--jti", body["tokenId"]],
    ):
        result = run_audit("find-token", directory, *args, "--format", "json")
        assert result.returncode == 0, result.stderr
        (record,) = [json.loads(line) for line in result.stdout.splitlines()]
        assert record["tokenSha256"] == body["tokenSha256"]
        assert record["externalUserId"] == "user_5"
        assert record["caller"] == "billing-svc"
        assert body["token"] not in result.stdout
    missing = run_audit("find-token", directory, "--jti", "no-such-jti")
    assert missing.returncode == 1


def _reencoded(token: str) -> str:
    """The same ES256 token with its signature's s replaced by n - s: other bytes, and still
    a valid signature (ECDSA is malleable), so its SHA-256 no longer matches the record."""
    header, payload, signature = token.split(".")
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    r, s = raw[:32], int.from_bytes(raw[32:], "big")
    flipped = r + (order - s).to_bytes(32, "big")
    return ".".join([header, payload, base64.urlsafe_b64encode(flipped).rstrip(b"=").decode()])


def test_find_token_matches_a_reencoded_token_by_jti_and_says_so(
    finished_trail: tuple[Path, list[httpx.Response]],
) -> None:
    directory, responses = finished_trail
    body = responses[5].json()
    exact = run_audit("find-token", directory, "--token", body["token"])
    assert "matched by tokenSha256" in exact.stderr
    other_bytes = _reencoded(body["token"])
    assert other_bytes != body["token"]
    found = run_audit("find-token", directory, "--token", other_bytes, "--format", "json")
    assert found.returncode == 0, found.stderr
    (record,) = [json.loads(line) for line in found.stdout.splitlines()]
    assert record["tokenId"] == body["tokenId"]
    assert "matched by tokenId (jti) only" in found.stderr


def test_query_filters(finished_trail: tuple[Path, list[httpx.Response]]) -> None:
    directory, _ = finished_trail
    result = run_audit("query", directory, "--subject", "user_7", "--format", "json")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["outcome"], r["code"]) for r in records] == [
        ("issued", "issued"),
        ("denied", "audience_not_allowed"),
    ]
    denied = run_audit("query", directory, "--outcome", "denied", "--format", "json")
    assert len(denied.stdout.splitlines()) == 5
    future = run_audit("query", directory, "--since", "2999-01-01T00:00:00Z", "--format", "json")
    assert future.stdout == ""
    table = run_audit("query", directory, "--caller", "billing-svc", "--audience", AUDIENCE)
    header, *rows = table.stdout.splitlines()
    assert header.split() == [
        "time",
        "outcome",
        "code",
        "caller",
        "externalUserId",
        "audience",
        "tokenId",
    ]
    assert len(rows) == 30


def test_sigkill_under_load_loses_no_issued_token(
    start_broker: BrokerFactory, audit_keys: AuditKeys
) -> None:
    broker = start_broker(name="killed", extra_audit=SMALL_FILES)
    process = broker.server.process
    assert process is not None
    with BackgroundLoad(broker) as load:
        load.wait_for(150)
        os.kill(process.pid, signal.SIGKILL)
    process.wait()
    received = load.received
    assert len(received) >= 150

    result = verify(broker.audit_dir, audit_keys, "--allow-crash-tail")
    assert result.returncode == 0, result.stdout
    assert "FAILED" not in result.stdout
    recorded = {record["tokenSha256"] for record in broker.audit_lines(killed=True)}
    assert set(received) <= recorded
    # Without the allowance the open end is reported, not hidden.
    assert verify(broker.audit_dir, audit_keys).returncode == 1


def test_audit_events_for_auditors(broker: Broker) -> None:
    for index in range(5):
        broker.post_token(body={"audience": AUDIENCE, "externalUserId": f"ev-{index}"})
    auditor = broker.clients["auditor"].headers()
    url = broker.url + "/audit/events"
    # The last record stored means every one before it is.
    until_stored(
        lambda: [
            event["externalUserId"]
            for event in loopback.get(
                url, params={"limit": 1, "caller": "billing-svc"}, headers=auditor
            ).json()["events"]
        ],
        ["ev-4"],
    )

    first = loopback.get(url, params={"limit": 2, "caller": "billing-svc"}, headers=auditor)
    assert first.status_code == 200, first.text
    assert first.headers["cache-control"] == "no-store"
    page = first.json()
    assert [event["externalUserId"] for event in page["events"]] == ["ev-4", "ev-3"]
    second = loopback.get(
        url,
        params={"limit": 2, "caller": "billing-svc", "cursor": page["nextCursor"]},
        headers=auditor,
    ).json()
    assert [event["externalUserId"] for event in second["events"]] == ["ev-2", "ev-1"]

    only = loopback.get(url, params={"subject": "ev-3"}, headers=auditor).json()
    assert [event["outcome"] for event in only["events"]] == ["issued"]
    assert only["nextCursor"] is None
    assert all("token" not in event for event in only["events"])

    assert loopback.get(url, headers=broker.clients["billing"].headers()).status_code == 403
    assert loopback.get(url).status_code == 401
    # Who tried without the role, and who without a credential, is on the trail too.
    tried = [
        (r["caller"], r["code"], r["status"])
        for r in broker.audit_records()
        if r.get("route") == "GET /audit/events"
    ]
    assert tried == [("billing-svc", "not_auditor", 403), (None, "unauthenticated", 401)]
    for params in (
        {"limit": "0"},
        {"limit": "x"},
        {"since": "yesterday"},
        # In range as written, in the year 10000 once in UTC (was a 500).
        {"since": "9999-12-31T23:59:59-23:59"},
        {"until": "0001-01-01T00:00:00+01:00"},
        {"until": "20261203T100000Z"},
        {"colour": "red"},
        {"outcome": "won"},
        {"cache": "HIT"},
        {"cursor": "../../etc/passwd:1"},
        {"cursor": "audit-host-000001.jsonl:1\n"},
        {"limit": "9" * 5000},
        {"tokenSha256": "ABC"},
        {"cursor": "2026-11-28T10:00:00.000Z~host~x"},
    ):
        bad = loopback.get(url, params=params, headers=auditor)
        assert bad.status_code == 400, params
        assert bad.headers["content-type"] == "application/problem+json"
        assert bad.json()["errors"][0]["field"] == next(iter(params))

    # Every page read is on the trail: who read, with which filters, how many came back.
    reads = [r for r in broker.audit_records() if r["type"] == "read"]
    assert {"caller": "auditor-svc", "filters": {"subject": "ev-3"}, "returned": 1}.items() <= (
        next(r for r in reads if r["filters"] == {"subject": "ev-3"}).items()
    )


def test_readiness_recovers_without_traffic(start_broker: BrokerFactory, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    broker = start_broker(audit_dir=blocker / "audit", name="ready-recovery")
    failed_writes = broker.metric("broker_audit_write_failures_total")
    assert broker.post_token().status_code == 503
    # The refusal queues a second record (the token withheld) that fails too, unless it is
    # still waiting when the disk comes back: then it, not the probe, would bring the log back.
    eventually(
        lambda: broker.metric("broker_audit_write_failures_total") >= failed_writes + 2,
        what="the withheld token's record tried",
    )
    assert loopback.get(broker.url + "/readyz").status_code == 503
    headed = loopback.request("HEAD", broker.url + "/readyz")
    assert (headed.status_code, headed.content) == (503, b"")
    blocker.unlink()
    ready = loopback.get(broker.url + "/readyz")
    assert ready.status_code == 200, ready.text
    records = broker.audit_records()
    assert records[-1]["type"] == "checkpoint"
    assert records[-1]["reason"] == "recovery"


def test_stdout_sink_lines_verify_once_collected(
    start_broker: BrokerFactory, audit_keys: AuditKeys, tmp_path: Path
) -> None:
    broker = start_broker(name="stdout-sink", extra_audit='sink = "stdout"')
    issued = broker.post_token().json()
    assert broker.post_token(client=None).status_code == 401
    assert broker.server.stopped_cleanly()
    # What a log pipeline would collect: the chained lines, apart from the JSON logs.
    lines = [line for line in broker.server.output().splitlines() if line.startswith('{"v":1,')]
    records = [json.loads(line) for line in lines]
    assert [(r["type"], r.get("reason")) for r in records] == [
        ("start", None),
        ("checkpoint", "start"),
        ("decision", None),
        ("decision", "missing_authorization"),
        ("checkpoint", "shutdown"),
    ]
    assert records[2]["tokenSha256"] == issued["tokenSha256"]
    collected = tmp_path / f"audit-{records[0]['instance']}-000001.jsonl"
    collected.write_text("\n".join(lines) + "\n")
    result = verify(tmp_path, audit_keys)
    assert result.returncode == 0, result.stdout
    assert not list(broker.audit_dir.glob("*.jsonl"))


def test_files_rotate_by_age(start_broker: BrokerFactory, audit_keys: AuditKeys) -> None:
    import time

    broker = start_broker(name="age-rotation", extra_audit="rotate_seconds = 1")
    assert (
        broker.post_token(body={"audience": AUDIENCE, "externalUserId": "first"}).status_code == 200
    )
    time.sleep(1.2)
    assert (
        broker.post_token(body={"audience": AUDIENCE, "externalUserId": "second"}).status_code
        == 200
    )
    assert broker.server.stopped_cleanly()
    # At least one rotation between the two tokens; more where this host was slow enough
    # for half a second to pass again before the seal.
    paths = files(broker.audit_dir)
    assert len(paths) >= 2
    records = [[json.loads(line) for line in lines_of(path)] for path in paths]
    for this_file, next_path in zip(records, paths[1:], strict=False):
        assert this_file[-1]["reason"] == "rotation"
        assert this_file[-1]["next"] == next_path.name

    def file_of(user: str) -> int:
        [index] = [
            i for i, rs in enumerate(records) if any(r.get("externalUserId") == user for r in rs)
        ]
        return index

    assert file_of("first") < file_of("second")
    assert verify(broker.audit_dir, audit_keys).returncode == 0


def test_a_brokers_own_log_anchors_its_trail_and_finds_it_cut_back(
    start_broker: BrokerFactory, audit_keys: AuditKeys, tmp_path: Path
) -> None:
    # The heads a real broker logs on its stdout, as collected, held against its files.
    broker = start_broker(name="anchored", extra_audit=SMALL_FILES)
    for index in range(12):
        broker.post_token(body={"audience": AUDIENCE, "externalUserId": f"anchored_{index}"})
    assert broker.server.stopped_cleanly()
    log = broker.server.log_path
    assert '"event":"audit_checkpoint_signed"' in log.read_text()
    result = verify(broker.audit_dir, audit_keys, "--anchors", str(log))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all found" in result.stdout
    # Cut back to the first file: the rest reads as a crash, and only the log can tell.
    copy = tmp_path / "audit"
    shutil.copytree(broker.audit_dir, copy)
    chain = files(copy)
    for path in chain[1:]:
        path.unlink()
    first = lines_of(chain[0])
    assert json.loads(first[-1])["reason"] == "rotation"
    chain[0].write_bytes(b"".join(first[:-1]))
    alone = verify(copy, audit_keys, "--allow-crash-tail")
    assert alone.returncode == 0, alone.stdout
    against = verify(copy, audit_keys, "--allow-crash-tail", "--anchors", str(log))
    assert against.returncode == 1
    assert "the trail does not hold it" in against.stdout
