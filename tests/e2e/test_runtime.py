"""Running without restarts: API key rotation, SIGHUP reload, and SIGTERM under load."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import (
    AUDIENCE,
    AuditKeys,
    BackgroundLoad,
    Broker,
    BrokerFactory,
    SimulatorFactory,
    new_api_key,
    new_client,
)
from tests.support import http1, loopback
from tests.support.problems import assert_problem
from tests.support.waiting import eventually, free_port, until_stored


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def replace_atomically(path: Path, text: str) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def test_a_rotated_key_file_takes_effect_without_restart(
    start_broker: BrokerFactory, start_simulator: SimulatorFactory, tmp_path: Path
) -> None:
    second_key = new_api_key()
    simulator = start_simulator(second_key)
    key_file = tmp_path / "mka1-api-key"
    key_file.write_text(simulator.api_key + "\n")
    broker = start_broker(
        name="key-rotation",
        upstream_url=simulator.url,
        api_key_setting=f'api_key_file = "{key_file}"\napi_key_check_seconds = 0.1',
    )
    assert broker.post_token(fresh=True).status_code == 200

    replace_atomically(key_file, second_key + "\n")
    time.sleep(0.3)
    assert broker.post_token(fresh=True).status_code == 200

    # A botched rotation (an empty file) keeps the last good key, and says so.
    replace_atomically(key_file, "")
    time.sleep(0.3)
    assert broker.post_token(fresh=True).status_code == 200
    assert [seen["keySha256"] for seen in simulator.requests()] == [
        sha256(simulator.api_key),
        sha256(second_key),
        sha256(second_key),
    ]
    output = broker.server.wait_for_output("api_key_file_unusable")
    assert "api_key_file_unusable" in output
    assert second_key not in output
    assert broker.metric("broker_api_key_reloads_total", result="reloaded") == 1
    assert broker.metric("broker_api_key_reloads_total", result="kept_old") == 1
    # The rotation is on the audit trail: when, which source, the key's fingerprint only.
    [rotation] = [r for r in broker.audit_records() if r["type"] == "api_key"]
    assert rotation["which"] == "api_key"
    assert rotation["keySha256"] == sha256(second_key)
    assert second_key not in json.dumps(broker.audit_records())


def test_the_next_key_is_tried_once_when_the_current_one_is_refused(
    start_broker: BrokerFactory, start_simulator: SimulatorFactory, tmp_path: Path
) -> None:
    simulator = start_simulator()
    current, upcoming = tmp_path / "current", tmp_path / "next"
    current.write_text("mka1_revoked_key")
    upcoming.write_text(simulator.api_key)
    broker = start_broker(
        name="next-key",
        upstream_url=simulator.url,
        api_key_setting=f'api_key_file = "{current}"\napi_key_next_file = "{upcoming}"',
    )
    assert broker.post_token(fresh=True).status_code == 200
    assert [seen["status"] for seen in simulator.requests()] == [401, 200]
    broker.server.wait_for_output("next_api_key_accepted")


def test_sighup_reloads_clients_and_a_bad_file_keeps_the_old_config(
    start_broker: BrokerFactory,
) -> None:
    broker = start_broker(name="reload")
    process = broker.server.process
    assert process is not None
    newcomer = new_client("newcomer")
    original = broker.config_path.read_text()
    assert broker.post_token(newcomer).status_code == 401

    broker.config_path.write_text(
        original
        + f'\n[[clients]]\nid = "newcomer"\nkey_sha256 = "{newcomer.sha256}"\n'
        + f'audiences = ["{AUDIENCE}"]\nsubjects = "any"\n'
    )
    process.send_signal(signal.SIGHUP)
    broker.server.wait_for_output("config_reloaded")
    assert broker.post_token(newcomer).status_code == 200
    assert broker.metric("broker_config_reloads_total", result="applied") == 1

    broker.config_path.write_text(original.replace("max_expires_in = 3600", "max_expires_in = 1"))
    process.send_signal(signal.SIGHUP)
    output = broker.server.wait_for_output("config_reload_rejected")
    assert "clients[1].max_expires_in" in output
    assert broker.post_token(newcomer).status_code == 200
    assert broker.metric("broker_config_reloads_total", result="rejected") == 1
    assert loopback.get(broker.url + "/readyz").status_code == 200
    # Both reloads are on the audit trail, with what changed by caller id.
    deadline = time.monotonic() + 5
    while len(reloads := [r for r in broker.audit_records() if r["type"] == "config"]) < 2:
        assert time.monotonic() < deadline, reloads
        time.sleep(0.02)
    assert [(r["result"], r["callersAdded"]) for r in reloads] == [
        ("applied", ["newcomer"]),
        ("rejected", []),
    ]
    assert newcomer.key not in json.dumps(reloads)


# Misses run as tasks; cache hits are answered from the audit writer's callbacks.
@pytest.mark.parametrize("hits", [False, True], ids=["misses", "hits"])
def test_sigterm_under_load_loses_no_audit_record(
    start_broker: BrokerFactory, audit_keys: AuditKeys, hits: bool
) -> None:
    broker = start_broker(name=f"sigterm-{'hits' if hits else 'misses'}")
    with BackgroundLoad(broker, hits=hits) as load:
        load.wait_for(100)
        assert broker.server.stopped_cleanly()
    received, refused = load.received, load.refused

    assert len(received) >= 100
    assert set(refused) <= {503}
    records = broker.audit_lines()
    assert set(received) <= {record["tokenSha256"] for record in records}
    # Every token handed out is on the record under its own request.
    assert set(load.request_ids) <= {record["requestId"] for record in records}
    if hits:
        assert sum(record["cache"] == "hit" for record in records) >= len(received) - 8
    # A clean stop seals the chain: it verifies without any allowance.
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "broker",
            "audit",
            "verify",
            str(broker.audit_dir),
            "--public-key",
            str(audit_keys.public),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout
    assert broker.audit_records()[-1]["reason"] == "shutdown"


def test_the_broker_runs_without_the_test_only_packages(broker: Broker) -> None:
    """As deployed: pydantic is in the test environment only, and not loaded in the broker
    (Litestar adds its pydantic plugins wherever pydantic imports)."""
    assert broker.server.process is not None
    maps = Path(f"/proc/{broker.server.process.pid}/maps").read_text()
    # Extension modules show in the process's mappings: msgspec's (used), pydantic's core.
    assert "msgspec/_core" in maps
    assert "pydantic" not in maps


def test_metrics_are_prometheus_text(start_broker: BrokerFactory) -> None:
    broker = start_broker(name="metrics")
    broker.post_token()
    assert_problem(broker.post_token(client=None), 401, "unauthenticated")
    response = loopback.get(broker.url + "/metrics")
    assert response.headers["content-type"] == "text/plain; version=1.0.0; charset=utf-8"
    assert broker.metric("broker_tokens_total", outcome="issued", cache="miss") == 1
    assert broker.metric("broker_tokens_total", outcome="denied", code="unauthenticated") == 1
    for status in ("200", "401"):
        assert (
            broker.metric("broker_request_duration_seconds_count", route="/tokens", status=status)
            == 1
        )
    assert broker.metric("broker_upstream_duration_seconds_count") == 1
    assert broker.metric("broker_audit_write_seconds_count") >= 2
    assert broker.metric("broker_cache_entries") == 1
    for secret in [client.key for client in broker.clients.values()]:
        assert secret not in response.text


def test_a_flood_of_scrapes_is_served_the_last_rendering_past_its_share_of_time(
    start_broker: BrokerFactory,
) -> None:
    broker = start_broker(name="scraped")
    # Anyone may ask for /metrics on the API's port, and a rendering costs milliseconds: one
    # connection asking back to back kept the broker's event loop busy rendering.
    sock = http1.connect(broker.server.port)
    reader = http1.Reader(sock)
    bodies: list[bytes] = []

    def served_again() -> int:
        return broker.server.output().count('"metrics_served_again"')

    # Past about a second of rendering, the broker says it serves the last rendering again.
    # (Two fresh renderings can be alike: a scrape is counted once its task has ended,
    # which may be after the next scrape is read. So the log says it, not the bodies.)
    while len(bodies) < 5000 and not (len(bodies) % 50 == 0 and served_again()):
        sock.sendall(http1.request("GET", "/metrics", {}, length=False))
        answer = reader.response()
        assert answer.status == 200
        bodies.append(answer.body)
    sock.close()
    assert served_again() == 1, "every one of 5000 scrapes was rendered afresh"
    # Served again, an answer is the very bytes of the last rendering.
    assert any(before == body for before, body in itertools.pairwise(bodies))
    scrapes = len(bodies)

    def counted() -> float:
        return broker.metric(
            "broker_request_duration_seconds_count", route="/metrics", status="200"
        )

    # Once the share is earned back, a scrape is fresh again: it counts every one before it.
    eventually(lambda: counted() >= scrapes, what="a fresh rendering")


def test_a_telemetry_port_takes_probes_and_metrics_off_the_api_port(
    start_broker: BrokerFactory,
) -> None:
    telemetry = free_port()
    broker = start_broker(name="telemetry", extra_server=f"telemetry_port = {telemetry}")
    assert broker.post_token().status_code == 200
    for path in ("/healthz", "/readyz", "/metrics"):
        assert loopback.get(f"http://127.0.0.1:{telemetry}{path}").status_code == 200
        assert_problem(loopback.get(broker.url + path), 404, "not_found")
    metrics = loopback.get(f"http://127.0.0.1:{telemetry}/metrics").text
    assert 'broker_tokens_total{cache="miss",code="issued",outcome="issued"}' in metrics
    assert loopback.get(broker.url + "/openapi.json").status_code == 200
    assert_problem(loopback.post(f"http://127.0.0.1:{telemetry}/tokens", json={}), 404, "not_found")


def test_a_reload_applies_the_logging_level(start_broker: BrokerFactory) -> None:
    broker = start_broker(name="reload-logging")
    process = broker.server.process
    assert process is not None
    assert broker.post_token().status_code == 200
    broker.server.wait_for_output('"path":"/tokens"')
    broker.config_path.write_text(
        broker.config_path.read_text() + '\n[logging]\nlevel = "warning"\n'
    )
    process.send_signal(signal.SIGHUP)
    broker.server.wait_for_output("logging_reconfigured")
    before = broker.server.output().count('"path":"/tokens"')
    assert broker.post_token().status_code == 200
    assert broker.post_token(client=None).status_code == 401
    # An error-level line after them marks that everything before it is in the output.
    broker.config_path.write_text("not toml [")
    process.send_signal(signal.SIGHUP)
    output = broker.server.wait_for_output("config_reload_rejected")
    # Info-level access lines are gone; the level change itself was said once.
    assert output.count('"path":"/tokens"') == before
    assert output.count("logging_reconfigured") == 1


def test_an_auditor_only_client_reads_the_trail_and_mints_nothing(
    start_broker: BrokerFactory,
) -> None:
    reader = new_client("reader")
    broker = start_broker(
        name="auditor-only",
        extra=f'\n[[clients]]\nid = "reader"\nkey_sha256 = "{reader.sha256}"\n'
        'roles = ["auditor"]\n',
    )
    assert broker.post_token().status_code == 200
    refused = broker.post_token(reader)
    assert_problem(refused, 403, "minting_not_allowed", "audience")

    def newest_two() -> list[str]:
        events = loopback.get(broker.url + "/audit/events", headers=reader.headers())
        assert events.status_code == 200, events.text
        return [e["code"] for e in events.json()["events"]][:2]

    until_stored(newest_two, ["minting_not_allowed", "issued"])
