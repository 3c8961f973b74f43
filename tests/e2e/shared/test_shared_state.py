"""Two broker replicas on one real Redis: limits, cache, single-flight and revocations that
hold for the pair; nothing readable in the store; and the store's outage."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import (
    AUDIENCE,
    GENEROUS_LIMITS,
    Broker,
    BrokerFactory,
    Simulator,
    shared_state_config,
    store_config,
)
from tests.support import loopback
from tests.support.postgres import PostgresServer, store_url_file
from tests.support.redis import RedisServer
from tests.support.waiting import eventually


def _pair(
    start_broker: BrokerFactory,
    url: str,
    tmp_path: Path,
    *,
    rate_limits: str = GENEROUS_LIMITS,
) -> list[Broker]:
    prefix = f"t{secrets.token_hex(4)}:"
    shared = shared_state_config(tmp_path / "shared", url, prefix=prefix)
    return [start_broker(name=f"pair{n}", extra=shared, rate_limits=rate_limits) for n in range(2)]


def _revoke_end_user(broker: Broker, user: str, action: str = "bar") -> None:
    """Bar (or lift) an end user through a replica's admin API."""
    answer = loopback.post(
        broker.url + "/admin/revocations",
        json={"kind": "end_user", "value": user, "action": action, "reason": "compromised"},
        headers=broker.clients["admin"].headers(),
    )
    assert answer.status_code == 200, answer.text


@pytest.fixture(scope="module")
def pair(
    start_module_broker: BrokerFactory,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> list[Broker]:
    """Two replicas for the tests that need no limits or store of their own: each asks for
    end users of its own, so what one leaves cached or barred is nothing to the next."""
    return _pair(start_module_broker, redis_server.url, tmp_path_factory.mktemp("pair"))


def test_a_token_minted_by_one_replica_is_served_by_the_other(pair: list[Broker]) -> None:
    first, second = pair
    body = {"audience": AUDIENCE, "externalUserId": f"shared-{secrets.token_hex(4)}"}
    minted = first.post_token(body=body)
    served = second.post_token(body=body)
    assert minted.status_code == served.status_code == 200
    assert served.json()["tokenSha256"] == minted.json()["tokenSha256"]
    [record] = [r for r in second.audit_lines() if r["externalUserId"] == body["externalUserId"]]
    assert record["cache"] == "shared"
    # Served locally from then on: a hit, not another trip to the store.
    assert second.post_token(body=body).json()["tokenSha256"] == minted.json()["tokenSha256"]
    assert [r["cache"] for r in second.audit_lines()][-1] == "hit"


def test_nothing_in_the_store_reads_as_a_token_user_audience_or_caller(
    pair: list[Broker], redis_server: RedisServer
) -> None:
    first, second = pair
    user = f"readable-{secrets.token_hex(4)}"
    tokens = [
        replica.post_token(body={"audience": AUDIENCE, "externalUserId": user}).json()
        for replica in (first, second)
    ]
    admin = first.clients["admin"].headers()
    barred = loopback.post(
        first.url + "/admin/revocations",
        json={"kind": "end_user", "value": f"{user}-barred", "reason": "test"},
        headers=admin,
    )
    assert barred.status_code == 200, barred.text
    client = redis_server.client()
    keys = list(client.scan_iter(count=1000))
    assert keys
    blobs = b"".join(keys) + b"".join(client.dump(key) or b"" for key in keys)
    for secret in (
        user,
        AUDIENCE,
        "api.example.com",
        "billing-svc",
        tokens[0]["token"],
        tokens[0]["token"].split(".")[1][:40],
        tokens[0]["tokenSha256"],
    ):
        assert secret.encode() not in blobs, secret
    # The pair is shared: the next test finds no bar in force.
    lifted = loopback.post(
        first.url + "/admin/revocations",
        json={"kind": "end_user", "value": f"{user}-barred", "action": "lift"},
        headers=admin,
    )
    assert lifted.status_code == 200, lifted.text


def test_five_hundred_identical_cold_requests_over_both_make_one_upstream_call(
    pair: list[Broker], simulator: Simulator
) -> None:
    replicas = pair
    before = simulator.exchanges()
    body = {"audience": AUDIENCE, "externalUserId": f"cold-{secrets.token_hex(4)}"}
    barrier = threading.Barrier(50)

    # One client for all threads: a client per request costs the test more than the broker.
    client = httpx.Client(timeout=30, limits=httpx.Limits(max_connections=100))

    def ask(index: int) -> str:
        replica = replicas[index % 2]
        headers = replica.clients["billing"].headers()
        if index < 50:
            barrier.wait()
        response = client.post(replica.url + "/tokens", json=body, headers=headers)
        assert response.status_code == 200, response.text
        token: str = response.json()["tokenSha256"]
        return token

    with client, ThreadPoolExecutor(max_workers=50) as pool:
        tokens = set(pool.map(ask, range(500)))
    assert len(tokens) == 1
    assert simulator.exchanges() - before == 1


# At 20/s each check is one store call; at 100/s a replica takes two tokens at a time and
# spends the second from its reserve, as cache hits answered without a task do (issue_now).
@pytest.mark.parametrize("rate", [20, 100])
def test_a_per_caller_limit_holds_for_the_pair(
    start_broker: BrokerFactory, redis_server: RedisServer, tmp_path: Path, rate: int
) -> None:
    burst, seconds = rate, 2.0
    limits = GENEROUS_LIMITS.replace(
        "per_caller = { rate_per_second = 100000, burst = 100000 }",
        f"per_caller = {{ rate_per_second = {rate}, burst = {burst} }}",
    )
    replicas = _pair(start_broker, redis_server.url, tmp_path, rate_limits=limits)
    body = {"audience": AUDIENCE, "externalUserId": "limited"}
    # (sent, answered, status) of every request.
    seen: list[tuple[float, float, int]] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def drive(replica: Broker) -> None:
        headers = replica.clients["billing"].headers()
        with httpx.Client(timeout=10) as client:
            while time.monotonic() < stop:
                sent = time.monotonic()
                status = client.post(replica.url + "/tokens", json=body, headers=headers)
                with lock:
                    seen.append((sent, time.monotonic(), status.status_code))

    threads = [threading.Thread(target=drive, args=(r,)) for r in replicas for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = [status for _, _, status in seen]
    allowed = statuses.count(200)
    assert set(statuses) == {200, 429}
    # The buckets can have granted tokens only between the first request's sending and the
    # last one's answer, and must have granted what refilled while their refusals show them
    # empty: the pair allows one limit over that time (each replica alone would allow it
    # twice), whatever this machine's speed.
    most = burst + rate * (max(a for _, a, _ in seen) - min(s for s, _, _ in seen))
    assert allowed <= 1.1 * most, (allowed, most)
    least = _granted_at_least(seen, rate, burst)
    fallbacks = sum(
        r.metric("broker_shared_state_fallbacks_total", kind="rate_limit") for r in replicas
    )
    # A check that outlived the store's timeout (a loaded host) is answered from the local
    # share, and the token it took in the store is lost: fewer granted, never more.
    assert allowed >= (0.9 if fallbacks == 0 else 0.5) * least, (allowed, least, fallbacks)


def _granted_at_least(seen: list[tuple[float, float, int]], rate: float, burst: int) -> float:
    """The tokens the bucket must have granted, from when its refusals say it was empty.

    It started full, and the first 429 found it empty: the burst was granted. Each 429
    found it empty at some moment between sending and answer, and a token refilled between
    two such moments was granted, unless the bucket filled up in between and threw refills
    away, which takes burst / rate seconds from empty. So: the burst, and the refill over
    each run of refusals closer together than that. A driver starved by a loaded host (six
    threads below the rate for a second) then ends a run instead of failing the bound."""
    refusals = sorted((sent, answered) for sent, answered, status in seen if status == 429)
    fills = burst / rate
    least = float(burst)
    first = previous = refusals[0]
    for sent, answered in refusals[1:]:
        if answered - previous[0] >= fills:
            least += rate * max(0.0, previous[0] - first[1])
            first = (sent, answered)
        previous = (sent, answered)
    return least + rate * max(0.0, previous[0] - first[1])


def test_a_bar_reaches_every_replica_and_a_lift_undoes_it(pair: list[Broker]) -> None:
    first, second = pair
    user = f"bar-{secrets.token_hex(4)}"
    body = {"audience": AUDIENCE, "externalUserId": user}
    before = second.post_token(body=body)  # cached on the second and in the store
    assert before.status_code == 200
    environment = os.environ | {"ADMIN_KEY": first.clients["admin"].key}

    def revoke(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "broker", "revoke", "--url", first.url, "--key-env",
             "ADMIN_KEY", *args],
            capture_output=True, text=True, env=environment, timeout=30, check=False,
        )  # fmt: skip

    done = revoke("--end-user", user, "--reason", "account compromised")
    assert done.returncode == 0, done.stderr
    assert "every replica" in done.stdout
    assert user in done.stdout

    def refused_on_second() -> bool:
        return second.post_token(body=body).status_code == 403

    eventually(refused_on_second, what="the bar reached the second replica")
    refusal = second.post_token(body=body)
    assert refusal.json()["code"] == "revoked"
    assert '"token"' not in refusal.text
    assert first.post_token(body=body).json()["code"] == "revoked"
    [record] = [
        r for r in first.audit_records() if r["type"] == "revocation" and r["value"] == user
    ]
    assert (record["action"], record["kind"], record["value"], record["scope"]) == (
        "bar",
        "end_user",
        user,
        "deployment",
    )
    assert record["by"] == "admin-svc"
    # Not the admin role: refused.
    forbidden = loopback.post(
        first.url + "/admin/revocations",
        json={"kind": "end_user", "value": user, "action": "lift"},
        headers=first.clients["billing"].headers(),
    )
    assert forbidden.status_code == 403
    assert forbidden.json()["code"] == "not_admin"

    assert revoke("--end-user", user, "--lift").returncode == 0
    eventually(lambda: second.post_token(body=body).status_code == 200, what="lifted")
    # A token from before the bar is served by no replica again, not even from the store.
    for replica in pair:
        assert replica.post_token(body=body).json()["tokenSha256"] != before.json()["tokenSha256"]
    listed = revoke("--list")
    assert "(none)" in listed.stdout


def test_a_bar_lifted_before_a_replica_looked_still_makes_it_forget_its_tokens(
    pair: list[Broker],
) -> None:
    first, second = pair
    user = f"blink-{secrets.token_hex(4)}"
    body = {"audience": AUDIENCE, "externalUserId": user}
    before = second.post_token(body=body).json()["tokenSha256"]
    assert second.post_token(body=body).json()["tokenSha256"] == before  # a local hit
    for action in ("bar", "lift"):
        _revoke_end_user(first, user, action)
    # Whether or not the second read the bar in the milliseconds it stood (then it refuses
    # until it reads the lift: no token, not yet), once it reads the store again its token
    # from before is gone.
    eventually(
        lambda: second.post_token(body=body).json().get("tokenSha256", before) != before,
        what="the second replica forgot the token it held before the bar",
    )
    assert first.post_token(body=body).json()["tokenSha256"] != before


def test_without_a_shared_store_a_bar_holds_on_one_replica_and_says_so(
    broker: Broker,
) -> None:
    user = f"local-bar-{secrets.token_hex(4)}"
    answer = loopback.post(
        broker.url + "/admin/revocations",
        json={"kind": "end_user", "value": user, "reason": "test"},
        headers=broker.clients["admin"].headers(),
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["scope"] == "replica"
    refused = broker.post_token(body={"audience": AUDIENCE, "externalUserId": user})
    assert refused.json()["code"] == "revoked"
    lifted = loopback.post(
        broker.url + "/admin/revocations",
        json={"kind": "end_user", "value": user, "action": "lift"},
        headers=broker.clients["admin"].headers(),
    )
    assert lifted.json()["bars"] == []
    # Media types are case-insensitive (RFC 9110 8.3.1), as on POST /tokens.
    spelled = loopback.post(
        broker.url + "/admin/revocations",
        content=json.dumps({"kind": "end_user", "value": user, "action": "lift"}),
        headers={
            "Content-Type": "Application/JSON; charset=utf-8",
            **broker.clients["admin"].headers(),
        },
    )
    assert spelled.status_code == 200, spelled.text
    twice = loopback.post(
        broker.url + "/admin/revocations",
        content=f'{{"kind": "end_user", "value": "{user}", "value": "someone-else"}}',
        headers={"Content-Type": "application/json", **broker.clients["admin"].headers()},
    )
    assert twice.status_code == 400
    assert twice.json()["errors"] == [
        {"field": "value", "message": "is given more than once; send each field once"}
    ]
    for bad in (
        {"kind": "planet", "value": "x"},
        {"kind": "end_user", "value": ""},
        {"kind": "end_user", "value": "x", "since": "yesterday"},
        {"kind": "end_user", "value": "x", "extra": 1},
    ):
        refused_change = loopback.post(
            broker.url + "/admin/revocations", json=bad, headers=broker.clients["admin"].headers()
        )
        assert refused_change.status_code == 400, bad
        assert refused_change.headers["content-type"] == "application/problem+json"


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A server of this test's own, to stop and start."""
    with RedisServer.running() as server:
        yield server


def test_a_replica_started_while_the_store_is_away_issues_nothing_until_it_has_read_the_bars(
    start_broker: BrokerFactory, own_redis: RedisServer, tmp_path: Path
) -> None:
    shared = shared_state_config(tmp_path / "shared", own_redis.url, prefix="away:")
    first = start_broker(name="first", extra=shared)
    barred = {"audience": AUDIENCE, "externalUserId": "barred-while-up"}
    other = {"audience": AUDIENCE, "externalUserId": "someone-else"}
    _revoke_end_user(first, barred["externalUserId"])
    assert own_redis.process is not None
    own_redis.process.send_signal(signal.SIGSTOP)  # away: connections time out
    try:
        # A new replica (a rollout, a rescheduled pod) while the store is away. It used to
        # start with no bars at all and hand the barred end user a token.
        second = start_broker(name="second", extra=shared)
        for body in (barred, other):
            refused = second.post_token(body=body)
            assert refused.status_code == 503, refused.text
            assert refused.json()["code"] == "shared_state_unavailable"
            assert refused.headers["retry-after"] == "1"
        ready = loopback.get(second.url + "/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["revocations"] == "unread"
        # Nor does it list the bars in force as none.
        listed = loopback.get(
            second.url + "/admin/revocations", headers=second.clients["admin"].headers()
        )
        assert (listed.status_code, listed.json()["code"]) == (503, "shared_state_unavailable")
        records = [r for r in second.audit_lines() if r.get("code") == "shared_state_unavailable"]
        assert [(r["reason"], r.get("route")) for r in records] == [
            ("revocations_unread", None),
            ("revocations_unread", None),
            ("revocations_unread", "GET /admin/revocations"),
        ]
    finally:
        own_redis.process.send_signal(signal.SIGCONT)
    eventually(lambda: second.post_token(body=other).status_code == 200, what="the bars were read")
    assert second.post_token(body=barred).json()["code"] == "revoked"
    assert loopback.get(second.url + "/readyz").status_code == 200


def test_a_store_restarted_without_its_data_lifts_no_bar(
    start_broker: BrokerFactory, own_redis: RedisServer, tmp_path: Path
) -> None:
    shared = shared_state_config(tmp_path / "shared", own_redis.url, prefix="restart:")
    first, second = (start_broker(name=name, extra=shared) for name in ("first", "second"))
    barred = {"audience": AUDIENCE, "externalUserId": "barred-before-restart"}
    _revoke_end_user(first, barred["externalUserId"])
    eventually(lambda: second.post_token(body=barred).status_code == 403, what="barred")
    # A restart of a store that keeps nothing on disk (as this one): every key is gone (the
    # replicas may write the bar back before anything here could look).
    own_redis.stop()
    own_redis.start()
    # Started after the restart, it reads the store alone: it used to find no bar, ever.
    third = start_broker(name="third", extra=shared)
    eventually(
        lambda: third.post_token(body=barred).status_code == 403,
        what="the replicas that held the bar wrote it back",
    )
    assert third.post_token(body=barred).json()["code"] == "revoked"
    for replica in (first, second):
        assert replica.post_token(body=barred).json()["code"] == "revoked"
    # On the trail of each replica that wrote it back, once: what happened, the bar's own.
    restored = [
        (replica.url, record["by"], record["reason"], record["value"], record["requestId"])
        for replica in (first, second)
        for record in replica.audit_records()
        if record["type"] == "revocation" and record["action"] == "restore"
    ]
    assert restored
    assert len({name for name, *_ in restored}) == len(restored)
    assert {tuple(r[1:]) for r in restored} == {
        ("admin-svc", "compromised", barred["externalUserId"], "")
    }


def test_a_deployment_restarted_after_the_store_lost_its_data_keeps_its_bars(
    start_broker: BrokerFactory, own_redis: RedisServer, postgres: PostgresServer, tmp_path: Path
) -> None:
    """No replica runs to hold the bars when the store comes back empty (a whole deployment
    restarted, after a power cut, say): the audit store's revocation records still say
    which stand. A replica started then used to find no bar, and served every end user."""
    database = postgres.create_database()
    extra = shared_state_config(tmp_path / "shared", own_redis.url, prefix="whole:") + store_config(
        store_url_file(tmp_path, database)
    )
    first, second = (start_broker(name=name, extra=extra) for name in ("first", "second"))
    barred = {"audience": AUDIENCE, "externalUserId": "barred-then-all-restarted"}
    lifted = {"audience": AUDIENCE, "externalUserId": "barred-and-lifted"}
    _revoke_end_user(first, barred["externalUserId"])
    _revoke_end_user(first, lifted["externalUserId"])
    _revoke_end_user(second, lifted["externalUserId"], "lift")
    for replica in (first, second):
        assert replica.server.stopped_cleanly()

    def shipped() -> bool:
        with psycopg.connect(database) as db:
            try:
                found = db.execute("SELECT count(*) FROM audit_records WHERE type = 'revocation'")
            except psycopg.errors.UndefinedTable:
                return False  # no shipping pass has made the table yet
            return found.fetchone() == (3,)

    eventually(shipped, timeout=15.0, what="the revocation records shipped")
    own_redis.stop()
    own_redis.start()
    third = start_broker(name="third", extra=extra)
    # At once: it wrote the bar back before it served.
    assert third.post_token(body=barred).json()["code"] == "revoked"
    assert third.post_token(body=lifted).status_code == 200
    [restored] = [
        record
        for record in third.audit_records()
        if record["type"] == "revocation" and record["action"] == "restore"
    ]
    assert (restored["value"], restored["by"], restored["reason"], restored["requestId"]) == (
        barred["externalUserId"],
        "admin-svc",
        "compromised",
        "",
    )
    assert third.metric("broker_revocations_written_back_total") == 1
    assert third.metric("broker_revocations_in_force") == 1
    # Back in the store for every replica: one started now writes nothing back, and still
    # refuses; the bar is listed, and a lift ends it.
    fourth = start_broker(name="fourth", extra=extra)
    assert fourth.post_token(body=barred).json()["code"] == "revoked"
    assert not [r for r in fourth.audit_records() if r.get("action") == "restore"]
    assert fourth.metric("broker_revocations_written_back_total") == 0
    listed = loopback.get(
        fourth.url + "/admin/revocations", headers=fourth.clients["admin"].headers()
    ).json()
    assert [bar["value"] for bar in listed["bars"]] == [barred["externalUserId"]]
    _revoke_end_user(fourth, barred["externalUserId"], "lift")
    eventually(lambda: third.post_token(body=barred).status_code == 200, what="lifted")


def test_a_replica_restarted_after_the_store_lost_its_data_keeps_its_own_recent_bars(
    start_broker: BrokerFactory, own_redis: RedisServer, tmp_path: Path
) -> None:
    """With the embedded store, a replica's own records: its bars of the last 29 days."""
    shared = shared_state_config(tmp_path / "shared", own_redis.url, prefix="own:")
    trail = tmp_path / "trail"
    before = start_broker(name="before", extra=shared, audit_dir=trail)
    barred = {"audience": AUDIENCE, "externalUserId": "barred-on-its-own"}
    _revoke_end_user(before, barred["externalUserId"])
    assert before.server.stopped_cleanly()  # its records shipped into its store as it stops
    own_redis.stop()
    own_redis.start()
    after = start_broker(name="after", extra=shared, audit_dir=trail)
    assert after.post_token(body=barred).json()["code"] == "revoked"
    assert [r["value"] for r in after.audit_records() if r.get("action") == "restore"] == [
        barred["externalUserId"]
    ]


def test_the_store_away_under_load_limits_fall_back_and_nothing_waits_or_fails_open(
    start_broker: BrokerFactory, own_redis: RedisServer, tmp_path: Path
) -> None:
    # Low enough that the pair is refused at any speed this machine runs at: the loop sends
    # at least 40 requests, and each replica allows (burst + rate * elapsed) / 2.
    rate, burst = 2, 4
    limits = GENEROUS_LIMITS.replace(
        "per_caller = { rate_per_second = 100000, burst = 100000 }",
        f"per_caller = {{ rate_per_second = {rate}, burst = {burst} }}",
    )
    replicas = _pair(start_broker, own_redis.url, tmp_path, rate_limits=limits)
    body = {"audience": AUDIENCE, "externalUserId": "outage"}
    assert replicas[0].post_token(body=body).status_code == 200
    own_redis.stop()
    time.sleep(0.3)
    latencies: list[float] = []
    statuses: list[int] = []
    seconds = 2.0
    stop = time.monotonic() + seconds
    for replica in replicas:
        assert replica.post_token(body=body).status_code in (200, 429)
    started = time.monotonic()
    while time.monotonic() < stop or len(statuses) < 40:
        for replica in replicas:
            began = time.monotonic()
            statuses.append(replica.post_token(body=body).status_code)
            latencies.append(time.monotonic() - began)
    elapsed = time.monotonic() - started
    # Bounded: the store's timeout (50 ms) and no more; here well under a second each.
    assert max(latencies) < 1.0, max(latencies)
    # Never open: each replica allows limit / 2, so the pair at most about the limit.
    allowed = statuses.count(200)
    assert allowed <= (burst + rate * elapsed) * 1.1 + 2, (allowed, statuses.count(429))
    assert statuses.count(429) > 0
    for replica in replicas:
        assert replica.metric("broker_shared_state_up") == 0
        ready = loopback.get(replica.url + "/readyz")
        assert ready.status_code == 200
        assert ready.json()["detail"]["sharedState"]["state"] == "unreachable"
        assert any(r.get("sharedState") == "unavailable" for r in replica.audit_lines())
        assert "shared_state_unreachable" in replica.server.output()
        assert own_redis.password not in replica.server.output()
    # A bar the store cannot take is refused, and the trail says it was not applied.
    refused_bar = loopback.post(
        replicas[0].url + "/admin/revocations",
        json={"kind": "end_user", "value": "during-outage"},
        headers=replicas[0].clients["admin"].headers(),
    )
    assert refused_bar.status_code == 503
    assert refused_bar.json()["code"] == "shared_state_unavailable"
    bars = [r for r in replicas[0].audit_records() if r["type"] == "revocation"]
    assert [(r["value"], r["applied"]) for r in bars] == [
        ("during-outage", True),
        ("during-outage", False),
    ]
    own_redis.start()
    for replica in replicas:

        def back(broker: Broker = replica) -> bool:
            return broker.metric("broker_shared_state_up") == 1

        eventually(back, what="back")
        assert (
            loopback.get(replica.url + "/readyz").json()["detail"]["sharedState"]["state"] == "ok"
        )


def test_a_token_whose_iat_no_time_can_be_is_served_and_shared(
    pair: list[Broker], simulator: Simulator
) -> None:
    # Right in every claim the broker checks, with an iat of 10**30: keeping it in the shared
    # cache failed msgpack's encoding after the mint, and the caller got a 500.
    first, second = pair
    body = {"audience": AUDIENCE, "externalUserId": f"far-iat-{secrets.token_hex(4)}"}
    simulator.fault(token="iat_out_of_range", times=1)
    minted = first.post_token(body=body)
    assert minted.status_code == 200, minted.text
    served = second.post_token(body=body)
    assert served.status_code == 200
    assert served.json()["tokenSha256"] == minted.json()["tokenSha256"]
