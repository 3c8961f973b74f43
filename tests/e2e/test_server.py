"""The broker on granian with two workers (``broker serve --server granian --workers 2``):
processes forked from one master, answering on one port, each with an audit chain of its
own."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import AUDIENCE, Broker, BrokerFactory
from tests.support import http1, loopback
from tests.support.waiting import eventually


def _records_of(broker: Broker, answered: list[httpx.Response]) -> list[dict[str, Any]]:
    asked = {response.headers["x-request-id"] for response in answered}
    return [record for record in broker.audit_lines() if record["requestId"] in asked]


def test_two_workers_never_give_two_requests_the_same_id(start_broker: BrokerFactory) -> None:
    # The workers are forked after the master has imported the edge; they shared its
    # request id prefix and counter, so two requests could carry one id, in the logs and in
    # the audit trail.
    broker = start_broker(name="granian-2", serve_args=("--server", "granian", "--workers", "2"))

    def ask(n: int) -> httpx.Response:
        return broker.post_token(body={"audience": AUDIENCE, "externalUserId": f"worker-{n}"})

    answered: list[httpx.Response] = []
    deadline = time.monotonic() + 30
    with ThreadPoolExecutor(max_workers=16) as pool:
        # Each call is a connection of its own; concurrent ones reach both workers.
        while len({record["instance"] for record in _records_of(broker, answered)}) < 2:
            assert time.monotonic() < deadline, "every request reached one worker"
            answered += pool.map(ask, range(len(answered), len(answered) + 32))
    assert {response.status_code for response in answered} == {200}
    ids = [response.headers["x-request-id"] for response in answered]
    assert len(set(ids)) == len(ids)
    records = _records_of(broker, answered)
    assert sorted((record["requestId"], record["tokenId"]) for record in records) == sorted(
        (response.headers["x-request-id"], response.json()["tokenId"]) for response in answered
    )
    prefixes = {record["instance"]: record["requestId"][:16] for record in records}
    assert len(set(prefixes.values())) == len(prefixes) == 2, "each worker its own prefix"

    # granian's parser, like the broker's own on uvicorn, takes a header's value without the
    # whitespace after it (RFC 9110 5.5): "user_ws " is not another end user.
    sent = {"Content-Type": "application/json", **broker.clients["billing"].headers()}
    sock = http1.connect(broker.server.port)
    body = b'{"audience":"%s"}' % AUDIENCE.encode()
    sock.sendall(http1.request("POST", "/tokens", sent | {"X-On-Behalf-Of": "user_ws \t"}, body))
    answer = http1.Reader(sock).response()
    sock.close()
    assert answer.status == 200, answer.body
    assert answer.json()["externalUserId"] == "user_ws"
    # A chunked body's trailer fields are never read as headers (RFC 9110 6.5.1).
    auth = broker.clients["billing"].headers()
    answer = http1.end_user_in_trailer(broker.server.port, auth, AUDIENCE)
    assert answer.status == 403, answer.body
    assert answer.json()["code"] == "external_user_id_required"


def test_granian_believes_a_trusted_proxy_as_uvicorn_does(start_broker: BrokerFactory) -> None:
    # Granian reads no X-Forwarded-For: server.trusted_proxies was silently ignored there.
    broker = start_broker(
        name="granian-proxied",
        serve_args=("--server", "granian"),
        extra_server='trusted_proxies = ["127.0.0.1"]',
        extra=f"""
[[proxies]]
id = "identity-proxy"
cidrs = ["192.0.2.0/24"]
audiences = ["{AUDIENCE}"]
""",
    )
    answered = [
        broker.post_token(
            body={"audience": AUDIENCE, "externalUserId": "proxied"},
            headers={"X-Forwarded-For": forwarded},
        )
        for forwarded in ("203.0.113.9", "evil")
    ]
    assert [response.status_code for response in answered] == [200, 200]
    assert [record["sourceAddress"] for record in _records_of(broker, answered)] == [
        "203.0.113.9",
        "127.0.0.1",
    ]
    # The forwarded client authenticates nothing: the identity proxy's network is checked
    # against the connection's own peer, on granian as on uvicorn.
    forged = loopback.post(
        broker.url + "/tokens",
        json={"audience": AUDIENCE},
        headers={"X-Forwarded-For": "192.0.2.10", "X-Forwarded-User": "victim"},
    )
    assert forged.status_code == 401, forged.text


def _running(pid: int) -> bool:
    """Whether ``pid`` runs: gone, or a zombie no one has reaped yet (an init that does not
    reap would keep it in /proc), it does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_worker_whose_granian_master_is_killed_stops_and_seals(
    start_broker: BrokerFactory,
) -> None:
    # A master killed outright (kill -9, an OOM kill) left its worker serving on the port,
    # with its own cache, limits and audit chain, unseen by whatever restarts the master.
    broker = start_broker(name="granian-orphan", serve_args=("--server", "granian"))
    assert broker.post_token().status_code == 200
    [instance] = {record["instance"] for record in broker.audit_records()}
    worker = int(instance.rsplit("-", 1)[1])  # host-start-pid
    assert broker.server.process is not None
    assert worker != broker.server.process.pid
    broker.server.process.send_signal(signal.SIGKILL)
    eventually(lambda: not _running(worker), timeout=15, what="the worker gone")
    assert broker.audit_records()[-1]["reason"] == "shutdown"
    assert "server_parent_gone" in broker.server.output()
