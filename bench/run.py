"""The benchmark: every figure beside a baseline measured in the same run, in interleaved
rounds (the host's speed drifts, so only ratios from one run mean anything).

    python -m bench.run            # the full run (a few minutes); writes bench/results/
    python -m bench.run --quick    # a few seconds; what CI runs so this cannot rot
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx

from bench.load import LoadResult, LoadSpec, run

AUDIENCE = "https://api.example.com"
HERE = Path(__file__).parent


@dataclass(frozen=True)
class Plan:
    rounds: int
    seconds: float
    connections: int
    burst: int
    memory_seconds: float
    memory_cache_entries: int
    many_clients: int
    # Before each hit round: written data flushed, then a pause (see _quiesce).
    settle_seconds: float
    # One round each of the minimal endpoint and broker hits this long: past the audit
    # store's lag bound (5 s), where a busy broker's store is shipped for at normal priority.
    sustained_seconds: float
    sustained_rounds: int
    # Head to head (measure_head_to_head): pairs of adjacent rounds this long.
    pair_rounds: int
    pair_seconds: float
    # The connection layer in-process (bench.layer): rounds, and requests a round.
    layer_rounds: int
    layer_requests: int
    # Durable / no-fsync with open-loop arrivals past capacity (bench.openloop), for the
    # decision on how issue 7's bar is measured: pairs of rounds this long, connections.
    openloop_pairs: int
    openloop_seconds: float
    openloop_connections: int


_TLS = httpx.create_ssl_context()

FULL = Plan(
    rounds=5,
    seconds=4.0,
    connections=32,
    burst=500,
    memory_seconds=60.0,
    memory_cache_entries=2000,
    many_clients=5000,
    settle_seconds=1.0,
    sustained_seconds=20.0,
    sustained_rounds=2,
    # 15, not 7: single pairs spread by 10% here, more than three verdicts sit from their
    # bars, and a median of 7 put a different one of them on the wrong side in each run.
    pair_rounds=15,
    pair_seconds=2.0,
    layer_rounds=7,
    layer_requests=20000,
    openloop_pairs=3,
    openloop_seconds=3.0,
    openloop_connections=128,
)
QUICK = Plan(
    rounds=1,
    seconds=0.25,
    connections=8,
    burst=50,
    memory_seconds=0.5,
    memory_cache_entries=100,
    many_clients=200,
    settle_seconds=0.0,
    sustained_seconds=0.3,
    sustained_rounds=1,
    pair_rounds=1,
    pair_seconds=0.25,
    layer_rounds=1,
    layer_requests=200,
    openloop_pairs=1,
    openloop_seconds=0.25,
    openloop_connections=8,
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_kib(self) -> int:
        return self._status_field("VmRSS:")

    def threads(self) -> int:
        return self._status_field("Threads:")

    def _status_field(self, name: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(name):
                return int(line.split()[1])
        return 0


def proc_stat(path: Path) -> tuple[str, int, float] | None:
    """A /proc stat file's command name, parent pid and CPU seconds (user and system); None
    once the process or thread is gone."""
    try:
        stat = path.read_text()
    except OSError:
        return None
    # After the command: state, ppid, ..., utime and stime (fields 14 and 15 of stat).
    fields = stat.rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return stat[stat.index("(") + 1 : stat.rindex(")")], int(fields[1]), ticks / _TICK


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system, all threads) of a process and every process under it
    (granian's workers), from /proc."""
    found: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := proc_stat(Path(f"/proc/{entry}/stat"))) is not None:
            found[int(entry)] = (stat[1], stat[2])
    tree = {pid}
    grew = True
    while grew:
        grew = False
        for child, (parent, _) in found.items():
            if parent in tree and child not in tree:
                tree.add(child)
                grew = True
    return sum(found[p][1] for p in tree if p in found)


def _start(args: list[str], port: int, ready: str, env: dict[str, str] | None = None) -> Server:
    return _ready(_spawn(args, port, env), ready, args)


def start_simulator(api_key: str, *, faults: bool = False) -> Server:
    """The embedded MKA1 simulator on a port of its own, taking ``api_key`` (the brokers'
    ``BENCH_MKA1_API_KEY``), ready; ``faults`` lets a test ask it for failures."""
    port = free_port()
    command = ["-m", "broker", "sim", "--port", str(port), "--api-key-env", "BENCH_MKA1_API_KEY"]
    if faults:
        command.append("--faults")
    return _start(command, port, "/.well-known/jwks.json", {"BENCH_MKA1_API_KEY": api_key})


def stop_servers(servers: list[Server]) -> None:
    """Stop every server, all asked at once; one that has not ended within 15 s is killed."""
    for server in servers:
        server.process.terminate()
    for server in servers:
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.process.kill()


def _spawn(args: list[str], port: int, env: dict[str, str] | None = None) -> Server:
    process = subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ | (env or {}),
    )
    return Server(process, port)


def _ready(server: Server, ready: str, args: list[str]) -> Server:
    process = server.process
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{args} exited with {process.returncode}")
        try:
            # A shared SSL context: httpx.get builds one per call (24 ms of CPU) otherwise.
            httpx.get(server.url + ready, timeout=0.5, verify=_TLS)
            return server
        except httpx.TransportError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{args} did not start")


@dataclass
class Stack:
    simulator: Server
    api_key: str
    client_key: str
    brokers: dict[str, Server]
    baseline: Server
    baseline_unbounded: Server
    caller_jwt: str


def _broker_config(
    directory: Path,
    name: str,
    sim_port: int,
    port: int,
    digest: str,
    *,
    fsync: bool,
    max_entries: int,
    extra: str = "",
) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}

[upstream]
base_url = "http://127.0.0.1:{sim_port}"
api_key_env = "BENCH_MKA1_API_KEY"
max_connections = 256

[cache]
max_entries = {max_entries}

[audit]
dir = "{directory / name / "audit"}"
fsync = {"true" if fsync else "false"}

[rate_limits]
per_caller = {{ rate_per_second = 1000000, burst = 1000000 }}
per_end_user = {{ rate_per_second = 1000000, burst = 1000000 }}

[[clients]]
id = "bench"
key_sha256 = "{digest}"
audiences = ["{AUDIENCE}"]
subjects = "any"
max_expires_in = 3600
"""
        + extra
    )
    return path


def _many_clients(count: int) -> str:
    """``count`` more clients, each with its own random key (authentication must not slow
    down with their number)."""
    return "".join(
        f'\n[[clients]]\nid = "other-{n}"\n'
        f'key_sha256 = "{hashlib.sha256(secrets.token_bytes(16)).hexdigest()}"\n'
        f'audiences = ["{AUDIENCE}"]\n'
        for n in range(count)
    )


class CallerIdP:
    """A JWKS for the JWT-caller benchmark, served from a thread of this process, and one
    caller token signed with its key."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        import jwt
        from cryptography.hazmat.primitives.asymmetric import ec
        from jwt.algorithms import ECAlgorithm

        key = ec.generate_private_key(ec.SECP256R1())
        jwk = json.loads(ECAlgorithm.to_jwk(key.public_key())) | {"kid": "bench", "use": "sig"}
        document = json.dumps({"keys": [jwk]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(document)))
                self.end_headers()
                self.wfile.write(document)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        now = int(time.time())
        self.token = jwt.encode(
            {
                "iss": self.url,
                "sub": "jwt-user",
                "aud": "mka1-token-broker",
                "iat": now,
                "exp": now + 3600,
            },
            key,
            algorithm="ES256",
            headers={"kid": "bench"},
        )

    def issuer_block(self) -> str:
        return f"""
[[issuers]]
id = "bench-idp"
issuer = "{self.url}"
jwks_url = "{self.url}/jwks.json"
audience = "mka1-token-broker"
audiences = ["{AUDIENCE}"]
subjects = "any"
"""

    def close(self) -> None:
        self._server.shutdown()


@contextmanager
def stack(plan: Plan) -> Iterator[Stack]:
    api_key = "mka1_bench_" + secrets.token_urlsafe(16)
    client_key = "bk_" + secrets.token_urlsafe(32)
    digest = hashlib.sha256(client_key.encode()).hexdigest()
    servers: list[Server] = []
    stoppers: list[Callable[[], None]] = []
    with tempfile.TemporaryDirectory(prefix="broker-bench-") as temporary:
        directory = Path(temporary)
        try:
            simulator = start_simulator(api_key, faults=True)
            sim_port = simulator.port
            servers.append(simulator)
            brokers = {}
            idp = CallerIdP()
            # The shared store (issue 14): a Redis of its own, as a deployment would have.
            from tests.support.redis import RedisServer

            redis_server = RedisServer(directory / "redis").start()
            stoppers.append(redis_server.stop)
            (directory / "shared-url").write_text(redis_server.url)
            (directory / "shared-key").write_text(
                base64.b64encode(secrets.token_bytes(32)).decode()
            )
            shared_block = (
                f'\n[shared_state]\nurl_file = "{directory / "shared-url"}"\n'
                f'encryption_key_file = "{directory / "shared-key"}"\n'
            )
            # Spawned together, then waited for: their start-ups overlap.
            spawned: dict[str, tuple[Server, list[str]]] = {}
            for name, fsync, entries, server_args, extra in (
                ("durable", True, 10_000, [], ""),
                ("no-fsync", False, 10_000, [], ""),
                ("memory", True, plan.memory_cache_entries, [], ""),
                ("granian-1", True, 10_000, ["--server", "granian"], ""),
                ("granian-2", True, 10_000, ["--server", "granian", "--workers", "2"], ""),
                ("many-clients", True, 10_000, [], _many_clients(plan.many_clients)),
                ("jwt-callers", True, 10_000, [], idp.issuer_block()),
                ("shared-state", True, 10_000, [], shared_block),
                # What shipping into the embedded store costs: the same broker without it.
                ("no-store", True, 10_000, [], '\n[audit.store]\nbackend = "none"\n'),
            ):
                port = free_port()
                config = _broker_config(
                    directory,
                    name,
                    sim_port,
                    port,
                    digest,
                    fsync=fsync,
                    max_entries=entries,
                    extra=extra,
                )
                args = ["-m", "broker", "serve", "--config", str(config), *server_args]
                spawned[name] = (_spawn(args, port, {"BENCH_MKA1_API_KEY": api_key}), args)
                servers.append(spawned[name][0])
            baseline_args = ["-m", "bench.baseline", "--port", str(free_port())]
            unbounded_args = ["-m", "bench.baseline", "--port", str(free_port()), "--unbounded"]
            baseline = _spawn(baseline_args, int(baseline_args[3]))
            unbounded = _spawn(unbounded_args, int(unbounded_args[3]))
            servers += [baseline, unbounded]
            for name, (server, args) in spawned.items():
                brokers[name] = _ready(server, "/healthz", args)
            _ready(baseline, "/openapi", baseline_args)
            _ready(unbounded, "/openapi", unbounded_args)
            yield Stack(simulator, api_key, client_key, brokers, baseline, unbounded, idp.token)
        finally:
            stop_servers(servers)
            for stop in stoppers:
                stop()


def wait_shipped(url: str, timeout: float = 120.0) -> float:
    """Wait until a broker's audit store holds every record it has written (its shipping
    process works at idle priority, partly after a round): the seconds waited. A server
    without that metric (the minimal endpoint, a broker without a store) does not wait."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            text = httpx.get(url + "/metrics", timeout=5.0).text
        except httpx.HTTPError:
            return 0.0
        lag = next(
            (
                float(line.split()[-1])
                for line in text.splitlines()
                if line.startswith("broker_audit_ship_lag_records ")
            ),
            0.0,
        )
        if lag == 0:
            return time.monotonic() - started
        time.sleep(0.05)
    raise RuntimeError(f"{url}: the audit store still lags after {timeout} s")


def _quiesce(plan: Plan) -> None:
    """Start a round on a quiet machine: each broker round writes tens of MB (audit files,
    the embedded store), and the kernel's writeback of it, and a store catching up, ran into
    the rounds that followed (the later rounds of every broker ran 25% slower than the first,
    the baseline's 10%)."""
    os.sync()
    time.sleep(plan.settle_seconds)


def _token_body(user: str, expires_in: int = 900) -> bytes:
    return json.dumps(
        {"audience": AUDIENCE, "externalUserId": user, "expiresIn": expires_in}
    ).encode()


def _summary(results: list[LoadResult], cpu: list[float] | None = None) -> dict[str, Any]:
    """Medians of the rounds; ``cpu``: the server's CPU seconds in each round."""
    ok = [r for r in results if r.requests]
    per_request = [
        spent / result.requests * 1e6
        for result, spent in zip(results, cpu or [], strict=False)
        if result.requests
    ]
    statuses: dict[str, int] = {}
    for result in results:
        for status, count in result.statuses.items():
            statuses[str(status)] = statuses.get(str(status), 0) + count
    return {
        "throughput_rps": statistics.median(r.throughput for r in ok) if ok else 0.0,
        "p50_ms": statistics.median(r.percentile(0.50) for r in ok) * 1000 if ok else None,
        "p99_ms": statistics.median(r.percentile(0.99) for r in ok) * 1000 if ok else None,
        "rounds": [round(r.throughput) for r in results],
        "statuses": statuses,
        "errors": sum(r.errors for r in results),
        "cpu_us_per_request": statistics.median(per_request) if per_request else None,
    }


def measure_hits(pool: ProcessPoolExecutor, s: Stack, plan: Plan) -> dict[str, Any]:
    """Cache-hit POST /tokens on the broker (with and without fsync) beside the minimal
    Litestar endpoint, in interleaved rounds."""
    auth = {"Authorization": f"Bearer {s.client_key}", "Content-Type": "application/json"}
    body = _token_body("hit-user")
    jwt_auth = {"Authorization": f"Bearer {s.caller_jwt}", "Content-Type": "application/json"}
    for name in (
        "durable",
        "no-fsync",
        "granian-1",
        "granian-2",
        "many-clients",
        "shared-state",
        "no-store",
    ):
        for _ in range(4):  # each granian worker has its own cache to fill
            httpx.post(s.brokers[name].url + "/tokens", content=body, headers=auth)
    for _ in range(2):
        httpx.post(s.brokers["jwt-callers"].url + "/tokens", content=body, headers=jwt_auth)
    targets = {
        "baseline": (s.baseline, {"Content-Type": "application/json"}),
        "baseline_unbounded": (s.baseline_unbounded, {"Content-Type": "application/json"}),
        "broker_hit": (s.brokers["durable"], auth),
        "broker_hit_no_fsync": (s.brokers["no-fsync"], auth),
        "broker_hit_granian_1_worker": (s.brokers["granian-1"], auth),
        "broker_hit_granian_2_workers": (s.brokers["granian-2"], auth),
        "broker_hit_5000_clients": (s.brokers["many-clients"], auth),
        "broker_hit_jwt_caller": (s.brokers["jwt-callers"], jwt_auth),
        "broker_hit_shared_state": (s.brokers["shared-state"], auth),
        "broker_hit_no_audit_store": (s.brokers["no-store"], auth),
    }
    out, last = _interleaved(pool, targets, body, plan, plan.seconds, plan.rounds)
    out["latency_samples_ms"] = {
        name: [x * 1000 for x in result.latencies[:: max(1, len(result.latencies) // 5000)]]
        for name, result in last.items()
    }
    return out


# Head to head: each verdict that compares two servers differing in one thing, as
# (numerator, denominator) of its ratio.
HEAD_TO_HEAD = {
    "hit_vs_minimal": ("durable", "baseline"),
    "5000_clients": ("many-clients", "durable"),
    "jwt_caller": ("jwt-callers", "durable"),
    "durable_vs_no_fsync": ("durable", "no-fsync"),
    "bounded_layer": ("baseline", "baseline_unbounded"),
    "shared_state": ("shared-state", "durable"),
}


def measure_head_to_head(pool: ProcessPoolExecutor, s: Stack, plan: Plan) -> dict[str, Any]:
    """Each pair of HEAD_TO_HEAD in adjacent rounds, which goes first alternating: the
    ratios of each pair's throughputs and p99s, and their medians. Among ten targets a
    round apart, two servers' rounds were up to a minute apart, and the host's speed drifts
    more than the difference these verdicts measure."""
    auth = {"Authorization": f"Bearer {s.client_key}", "Content-Type": "application/json"}
    jwt_auth = {"Authorization": f"Bearer {s.caller_jwt}", "Content-Type": "application/json"}
    plain = {"Content-Type": "application/json"}
    body = _token_body("hit-user")
    servers: dict[str, tuple[Server, dict[str, str]]] = {
        "baseline": (s.baseline, plain),
        "baseline_unbounded": (s.baseline_unbounded, plain),
        "jwt-callers": (s.brokers["jwt-callers"], jwt_auth),
        **{
            name: (s.brokers[name], auth)
            for name in ("durable", "no-fsync", "many-clients", "shared-state")
        },
    }
    out: dict[str, Any] = {}
    for name, (numerator, denominator) in HEAD_TO_HEAD.items():
        ratios: list[float] = []
        p99_ratios: list[float] = []
        # Each side's answers over its rounds: a refusal counts in a round's throughput as a
        # token would (an expired caller JWT, a 503), so the ratio means nothing without it.
        statuses: dict[str, Counter[str]] = {numerator: Counter(), denominator: Counter()}
        for number in range(plan.pair_rounds):
            order = [numerator, denominator] if number % 2 == 0 else [denominator, numerator]
            found = {
                side: _round(pool, *servers[side], body, plan, plan.pair_seconds)[0]
                for side in order
            }
            for side, result in found.items():
                statuses[side].update({str(code): n for code, n in result.statuses.items()})
                statuses[side]["error"] += result.errors
            ratios.append(found[numerator].throughput / found[denominator].throughput)
            p99_ratios.append(
                found[numerator].percentile(0.99) / found[denominator].percentile(0.99)
            )
        out[name] = {
            "numerator": numerator,
            "denominator": denominator,
            "ratios": ratios,
            "median_ratio": statistics.median(ratios),
            "p99_ratios": p99_ratios,
            "median_p99_ratio": statistics.median(p99_ratios),
            "statuses": {side: dict(sorted((+n).items())) for side, n in statuses.items()},
        }
    return out


# Offered past the no-fsync broker's closed-loop capacity: each broker achieves its own.
OPENLOOP_FRACTION = 1.15


def measure_openloop(pool: ProcessPoolExecutor, s: Stack, plan: Plan) -> dict[str, Any]:
    """Durable against no-fsync with open-loop arrivals past capacity (bench.openloop):
    informational beside the closed-loop verdict, which issue 7 set, until the team decides
    how that bar is measured (bench/notes.md)."""
    from bench.openloop import measure  # bench.openloop builds on this module

    auth = {"Authorization": f"Bearer {s.client_key}", "Content-Type": "application/json"}
    return measure(
        pool,
        s.brokers,
        _token_body("hit-user"),
        auth,
        pairs=plan.openloop_pairs,
        seconds=plan.openloop_seconds,
        connections=plan.openloop_connections,
        fractions=[OPENLOOP_FRACTION],
    )


def measure_sustained(pool: ProcessPoolExecutor, s: Stack, plan: Plan) -> dict[str, Any]:
    """Hits on the durable broker for longer than its store may lag (5 s): a busy broker's
    shipping process waits for quiet until then, and ships at normal priority past it, so
    short rounds alone would show only the first part. Interleaved."""
    auth = {"Authorization": f"Bearer {s.client_key}", "Content-Type": "application/json"}
    targets = {
        "baseline": (s.baseline, {"Content-Type": "application/json"}),
        "broker_hit": (s.brokers["durable"], auth),
    }
    out, _ = _interleaved(
        pool,
        targets,
        _token_body("hit-user"),
        plan,
        plan.sustained_seconds,
        plan.sustained_rounds,
    )
    return out


def _round(
    pool: ProcessPoolExecutor,
    server: Server,
    headers: dict[str, str],
    body: bytes,
    plan: Plan,
    seconds: float,
) -> tuple[LoadResult, float, float]:
    """One round of ``seconds`` of POST /tokens on ``server``, on a quiet machine and
    followed by its store's catch-up: the load's result, the server's CPU seconds, and the
    seconds the catch-up took (the store's catch-up is this server's cost, not the next
    round's)."""
    spec = LoadSpec("127.0.0.1", server.port, "/tokens", body, headers, plan.connections, seconds)
    _quiesce(plan)
    before = cpu_seconds(server.process.pid)
    result = pool.submit(run, spec).result()
    waited = wait_shipped(server.url)
    return result, cpu_seconds(server.process.pid) - before, waited


def _interleaved(
    pool: ProcessPoolExecutor,
    targets: dict[str, tuple[Server, dict[str, str]]],
    body: bytes,
    plan: Plan,
    seconds: float,
    rounds: int,
) -> tuple[dict[str, Any], dict[str, LoadResult]]:
    """``rounds`` rounds of ``seconds`` of POST /tokens on each target in turn, each on a
    quiet machine and followed by its store's catch-up; the medians, with what a request
    cost the server in CPU (with the load generator on the same cores, throughput is about
    the CPU a server gets divided by this) and how long its store took to catch up; and
    each target's last round (the latency plot's samples)."""
    results: dict[str, list[LoadResult]] = {name: [] for name in targets}
    cpu: dict[str, list[float]] = {name: [] for name in targets}
    catch_up: dict[str, list[float]] = {name: [] for name in targets}
    order = list(targets)
    for number in range(rounds):
        # Each round starts one target further on: with one order throughout, whatever
        # builds up over a round (the earlier targets' files, stores, heaps) fell on the
        # same targets every time, and a target's place could not be told from its cost.
        for name in order[number % len(order) :] + order[: number % len(order)]:
            server, headers = targets[name]
            result, spent, waited = _round(pool, server, headers, body, plan, seconds)
            results[name].append(result)
            cpu[name].append(spent)
            catch_up[name].append(waited)
    out: dict[str, Any] = {}
    for name, found in results.items():
        out[name] = _summary(found, cpu[name])
        out[name]["store_catch_up_s"] = statistics.median(catch_up[name])
    return out, {name: found[-1] for name, found in results.items()}


def measure_misses(pool: ProcessPoolExecutor, s: Stack, plan: Plan) -> dict[str, Any]:
    """A real mint per request (a new end user each time) through the broker, beside the
    same exchange called directly on the simulator, at 1 and at N connections."""
    out: dict[str, Any] = {}
    broker_headers = {"Authorization": f"Bearer {s.client_key}", "Content-Type": "application/json"}
    sim_headers = {
        "Authorization": f"Bearer {s.api_key}",
        "Content-Type": "application/json",
        "X-On-Behalf-Of": "bench",
    }
    body = _token_body("miss-{n}-" + secrets.token_hex(4))
    for connections in (1, plan.connections):
        direct: list[LoadResult] = []
        brokered: list[LoadResult] = []
        for _ in range(plan.rounds):
            direct.append(
                pool.submit(
                    run,
                    LoadSpec(
                        "127.0.0.1",
                        s.simulator.port,
                        "/api/v1/authentication/api-key/exchange-token",
                        body,
                        sim_headers,
                        connections,
                        plan.seconds,
                        unique_users=True,
                    ),
                ).result()
            )
            brokered.append(
                pool.submit(
                    run,
                    LoadSpec(
                        "127.0.0.1",
                        s.brokers["durable"].port,
                        "/tokens",
                        body,
                        broker_headers,
                        connections,
                        plan.seconds,
                        unique_users=True,
                    ),
                ).result()
            )
        upstream, broker = _summary(direct), _summary(brokered)
        added = (broker["p50_ms"] or 0) - (upstream["p50_ms"] or 0)
        out[f"c{connections}"] = {
            "direct": upstream,
            "broker": broker,
            "added_p50_ms": added,
            "p50_ratio": (broker["p50_ms"] or 0) / (upstream["p50_ms"] or 1),
        }
    return out


def measure_burst(s: Stack, plan: Plan) -> dict[str, Any]:
    """N identical concurrent requests on a cold cache: how many upstream calls?"""
    httpx.delete(s.simulator.url + "/_sim/requests").raise_for_status()
    body = _token_body("burst-" + secrets.token_hex(4))
    headers = {"Authorization": f"Bearer {s.client_key}", "Content-Type": "application/json"}

    async def burst() -> list[int]:
        limits = httpx.Limits(max_connections=plan.burst)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            replies = await asyncio.gather(
                *(
                    client.post(s.brokers["durable"].url + "/tokens", content=body, headers=headers)
                    for _ in range(plan.burst)
                )
            )
        return [reply.status_code for reply in replies]

    statuses = asyncio.run(burst())
    calls = httpx.get(s.simulator.url + "/_sim/requests").json()["exchanges"]
    return {"requests": plan.burst, "ok": statuses.count(200), "upstream_calls": calls}


def measure_memory(pool: ProcessPoolExecutor, s: Stack, plan: Plan) -> dict[str, Any]:
    """Peak RSS of a broker serving ever-new end users, its cache bounded by max_entries."""
    server = s.brokers["memory"]
    headers = {"Authorization": f"Bearer {s.client_key}", "Content-Type": "application/json"}
    spec = LoadSpec(
        "127.0.0.1",
        server.port,
        "/tokens",
        _token_body("mem-{n}"),
        headers,
        8,
        plan.memory_seconds,
        unique_users=True,
    )
    future = pool.submit(run, spec)
    samples: list[tuple[float, int]] = []
    threads: set[int] = set()
    started = time.monotonic()
    while not future.done():
        samples.append((time.monotonic() - started, server.rss_kib()))
        threads.add(server.threads())
        time.sleep(0.25)
    result = future.result()
    entries_filled_at = plan.memory_cache_entries / max(result.throughput, 1)
    after_fill = [rss for at, rss in samples if at >= entries_filled_at] or [samples[-1][1]]
    first, last = after_fill[0], after_fill[-1]
    return {
        "requests": result.requests,
        # What the load got: a growth in RSS reads differently if answers were refusals.
        "statuses": {str(status): count for status, count in sorted(result.statuses.items())},
        "errors": result.errors,
        "cache_max_entries": plan.memory_cache_entries,
        "cache_full_after_s": entries_filled_at,
        "rss_kib_when_cache_full": first,
        # Halfway between: a leak grows in both halves, a one-off allocation in one.
        "rss_kib_halfway": after_fill[len(after_fill) // 2],
        "rss_kib_at_end": last,
        "rss_kib_peak": max(rss for _, rss in samples),
        "growth_after_full": (last - first) / first if first else 0.0,
        # A thread started during the load brings its own malloc arena (megabytes at once).
        "threads": sorted(threads),
        "samples": samples,
    }


def refused_in_pairs(head_to_head: dict[str, Any]) -> list[str]:
    """A line for each server that answered anything but 200 in a pair's rounds (runs
    before 2026-12-07 21:00 UTC did not record the answers)."""
    if not any(row.get("statuses") for row in head_to_head.values()):
        return []
    refused = [
        f"- **{name}: {side} answered "
        + ", ".join(f"{n} x {code}" for code, n in counts.items())
        + "**: its ratio is not a verdict."
        for name, row in head_to_head.items()
        for side, counts in row["statuses"].items()
        if set(counts) - {"200"}
    ]
    return ["", *(refused or ["Every round of every pair answered 200 only."])]


def memory_detail(memory: dict[str, Any]) -> str:
    """Halfway RSS, answers and thread counts, where the run recorded them (runs before
    2026-12-07 21:00 UTC did not)."""
    if "statuses" not in memory:
        return ""
    answers = ", ".join(f"{count} x {status}" for status, count in memory["statuses"].items())
    threads = ", ".join(str(count) for count in memory["threads"])
    return (
        f"; {memory['rss_kib_halfway'] / 1024:.1f} MiB halfway between; answers {answers}"
        f" ({memory['errors']} connection errors); broker threads seen: {threads}"
    )


def measure_layer(plan: Plan) -> dict[str, Any]:
    """What the connection bounds cost a request by CPU clock, without sockets or a load
    generator (``bench.layer``): the head-to-head rounds of two servers spread more than
    the microseconds in question. Run with every server stopped."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.layer",
            "--rounds",
            str(plan.layer_rounds),
            "--requests",
            str(plan.layer_requests),
            "--app",
            "minimal",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=HERE.parent,
        timeout=600,
    )
    measured: dict[str, Any] = json.loads(result.stdout)
    return measured


def machine() -> dict[str, Any]:
    model = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "server": f"uvicorn {version('uvicorn')} (httptools {version('httptools')}, "
        f"uvloop {version('uvloop')}), 1 worker",
        "litestar": version("litestar"),
        "msgspec": version("msgspec"),
        "load_generator": "bench/load.py: keep-alive raw asyncio streams in its own process",
    }


def plan_seconds(results: dict[str, Any]) -> str:
    return f"{results['plan']['sustained_seconds']:g}"


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    head_to_head = results["head_to_head"]
    miss = results["misses"]["c1"]
    memory = results["memory"]
    sustained = results["sustained"]
    checks = [
        # Issue 12's bar: a cache hit, with every check, an access line and a durable audit
        # record, serves as many requests as the framework's bare endpoint that only decodes.
        (
            "cache-hit throughput >= 1.0 x minimal endpoint (head to head)",
            head_to_head["hit_vs_minimal"]["median_ratio"],
            ">=",
            1.0,
        ),
        (
            "cache-hit p99 <= 1.0 x minimal endpoint's p99 (head to head)",
            head_to_head["hit_vs_minimal"]["median_p99_ratio"],
            "<=",
            1.0,
        ),
        (
            f"cache-hit throughput over {plan_seconds(results)} s, past the store's lag bound, "
            ">= 0.9 x minimal endpoint",
            sustained["broker_hit"]["throughput_rps"] / sustained["baseline"]["throughput_rps"],
            ">=",
            0.9,
        ),
        (
            "added latency of a miss at p50, 1 connection (ms) <= 1.5",
            miss["added_p50_ms"],
            "<=",
            1.5,
        ),
        (
            f"{results['burst']['requests']} identical concurrent misses -> upstream calls == 1",
            results["burst"]["upstream_calls"],
            "==",
            1,
        ),
        (
            "group-commit durable throughput >= 0.85 x no-fsync (head to head)",
            head_to_head["durable_vs_no_fsync"]["median_ratio"],
            ">=",
            0.85,
        ),
        ("RSS growth after the cache fills <= 10%", memory["growth_after_full"], "<=", 0.10),
        (
            "cache-hit throughput with 5000 clients configured >= 0.9 x with 1 (head to head)",
            head_to_head["5000_clients"]["median_ratio"],
            ">=",
            0.9,
        ),
        (
            "cache-hit throughput for a JWT caller >= 0.9 x for a client-key caller (head to head)",
            head_to_head["jwt_caller"]["median_ratio"],
            ">=",
            0.9,
        ),
        (
            "cache-hit throughput with the shared store configured >= 0.8 x without (head to head)",
            head_to_head["shared_state"]["median_ratio"],
            ">=",
            0.8,
        ),
        (
            "minimal endpoint on the bounded connection layer >= 0.95 x on uvicorn's own "
            "(head to head)",
            head_to_head["bounded_layer"]["median_ratio"],
            ">=",
            0.95,
        ),
    ]
    out = []
    for name, value, op, target in checks:
        met = {"<=": value <= target, ">=": value >= target, "==": value == target}[op]
        out.append({"target": name, "value": value, "op": op, "goal": target, "met": met})
    return out


def plots(results: dict[str, Any], directory: Path) -> list[str]:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hits = results["hits"]
    names = ["baseline", "broker_hit", "broker_hit_no_fsync"]
    labels = [
        "minimal Litestar\nPOST (baseline)",
        "broker cache hit\n(fsync audit)",
        "broker cache hit\n(no fsync)",
    ]
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.bar(
        labels, [hits[n]["throughput_rps"] for n in names], color=["#888888", "#2b6cb0", "#90cdf4"]
    )
    axis.set_ylabel("requests / second (median of rounds)")
    axis.set_title("POST /tokens throughput beside the framework's ceiling")
    figure.tight_layout()
    throughput = directory / "throughput.png"
    figure.savefig(throughput, dpi=110)
    plt.close(figure)

    figure, axis = plt.subplots(figsize=(7, 4))
    for name, label in zip(names, labels, strict=True):
        values = sorted(hits["latency_samples_ms"][name])
        if values:
            axis.plot(
                values,
                [i / len(values) for i in range(len(values))],
                label=label.replace("\n", " "),
            )
    axis.set_xscale("log")
    axis.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axis.set_xlabel("latency (ms, log scale)")
    axis.set_ylabel("share of requests")
    axis.set_title("Latency distribution (last round)")
    axis.legend()
    figure.tight_layout()
    latency = directory / "latency.png"
    figure.savefig(latency, dpi=110)
    plt.close(figure)
    return [throughput.name, latency.name]


_ENDPOINTS = (
    "baseline",
    "baseline_unbounded",
    "broker_hit",
    "broker_hit_no_fsync",
    "broker_hit_granian_1_worker",
    "broker_hit_granian_2_workers",
    "broker_hit_5000_clients",
    "broker_hit_jwt_caller",
    "broker_hit_shared_state",
    "broker_hit_no_audit_store",
)


def report(results: dict[str, Any]) -> str:
    m = results["machine"]
    hits = results["hits"]
    lines = [
        "# Benchmark results",
        "",
        f"Measured {results['when']} with `python -m bench.run` on {m['cores']} cores "
        f"({m['cpu']}), Python {m['python']}, {m['server']}, Litestar {m['litestar']}, "
        f"msgspec {m['msgspec']}. Load: {m['load_generator']}, "
        f"{results['plan']['connections']} connections, {results['plan']['rounds']} "
        f"interleaved rounds of {results['plan']['seconds']} s, each round starting one "
        "target further on; medians. The load generator "
        "shares the 2 cores with the servers, so absolute numbers are low; ratios hold.",
        "",
        "| target | value | goal | met |",
        "| --- | --- | --- | --- |",
    ]
    for verdict in results["verdicts"]:
        value = verdict["value"]
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        if isinstance(value, float) and float(shown) == verdict["goal"]:
            # Rounded onto its goal (0.8496 as "0.850 >= 0.85: no"): the digit that decided.
            shown = f"{value:.4f}"
        lines.append(
            f"| {verdict['target']} | {shown} | {verdict['op']} {verdict['goal']} | "
            f"{'yes' if verdict['met'] else '**no**'} |"
        )
    lines += [
        "",
        "| endpoint | req/s | p50 ms | p99 ms | server CPU us/request | store catch-up s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    rows = [(name, hits[name]) for name in _ENDPOINTS]
    rows += [
        (f"{name} ({plan_seconds(results)} s)", row)
        for name, row in results.get("sustained", {}).items()
    ]
    for name, row in rows:
        cpu = row.get("cpu_us_per_request")
        waited = row.get("store_catch_up_s")
        lines.append(
            f"| {name} | {row['throughput_rps']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
            f"| {f'{cpu:.0f}' if cpu is not None else '-'} "
            f"| {f'{waited:.2f}' if waited is not None else '-'} |"
        )
    lines += [
        "",
        "| cache miss | direct p50 ms | broker p50 ms | added ms | ratio |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, row in results["misses"].items():
        lines.append(
            f"| {key} | {row['direct']['p50_ms']:.2f} | {row['broker']['p50_ms']:.2f} | "
            f"{row['added_p50_ms']:.2f} | {row['p50_ratio']:.2f} |"
        )
    lines += [
        "",
        f"Head to head, two servers that differ in one thing: "
        f"{results['plan']['pair_rounds']} pairs of adjacent {results['plan']['pair_seconds']}"
        " s rounds (which goes first alternating); the ratio of each pair, then their median.",
        "",
        "| verdict | ratio | throughput ratios of the pairs | median | median p99 ratio |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, row in results.get("head_to_head", {}).items():
        # Runs before the pairs were named measured each broker against the durable one.
        ratio = f"{row.get('numerator', name)} / {row.get('denominator', 'durable')}"
        shown = ", ".join(f"{value:.2f}" for value in row["ratios"])
        p99 = f"{row['median_p99_ratio']:.3f}" if "median_p99_ratio" in row else ""
        lines.append(f"| {name} | {ratio} | {shown} | {row['median_ratio']:.3f} | {p99} |")
    lines += refused_in_pairs(results.get("head_to_head", {}))
    if (openloop := results.get("openloop")) is not None:
        from bench.openloop import pair_ratios

        [(fraction, row)] = openloop["fractions"].items()
        achieved = {name: m["achieved"] for name, m in row["medians"].items()}
        ratios = pair_ratios(row["rounds"]["durable"], row["rounds"]["no-fsync"])
        lines += [
            "",
            "Durable / no-fsync with open-loop arrivals (`bench.openloop`; informational, not "
            "a verdict: issue 7's bar is measured closed-loop, above, until the team decides): "
            f"offered {fraction} x the no-fsync broker's closed-loop throughput "
            f"({row['offered']:.0f}/s) over {openloop['connections']} connections, "
            f"{openloop['pairs']} pairs of {openloop['seconds']} s rounds: the pairs "
            f"{', '.join(f'{ratio:.2f}' for ratio in ratios)}, median "
            f"**{statistics.median(ratios):.3f}** (achieved, medians: "
            f"{achieved['durable']:.0f} and {achieved['no-fsync']:.0f} req/s; closed-loop in "
            f"the same step: {openloop['closed_ratio']:.3f}).",
        ]
    if (layer := results.get("layer")) is not None:
        lines += [
            "",
            "The connection layer alone, in-process (`python -m bench.layer`: "
            f"{len(layer['us_a_request']['bounded'])} interleaved rounds of "
            f"{layer['requests_a_round']} requests on one connection to the minimal endpoint, "
            f"by CPU clock, no syscalls): {layer['median_us']['bounded']:.2f} us a request on "
            f"the bounded layer, {layer['median_us']['uvicorn']:.2f} us on uvicorn's own; the "
            f"bounds add {layer['layer_adds_us']:.2f} us "
            f"(CPU ratio {layer['cpu_ratio_bounded_over_uvicorn']:.3f}).",
        ]
    memory = results["memory"]
    lines += [
        "",
        f"Burst: {results['burst']['requests']} identical concurrent requests on a cold cache "
        f"made {results['burst']['upstream_calls']} upstream call(s).",
        "",
        f"Memory: {memory['requests']} requests for ever-new end users over "
        f"{results['plan']['memory_seconds']} s, cache bounded at {memory['cache_max_entries']}"
        f" entries: RSS {memory['rss_kib_when_cache_full'] / 1024:.1f} MiB when the cache was "
        f"full, {memory['rss_kib_at_end'] / 1024:.1f} MiB at the end "
        f"(peak {memory['rss_kib_peak'] / 1024:.1f} MiB)" + memory_detail(memory) + ".",
        "",
        "![throughput](results/throughput.png)",
        "![latency](results/latency.png)",
        "",
        (HERE / "notes.md").read_text(),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    parser.add_argument("--out", type=Path, default=None, help="results directory")
    parser.add_argument(
        "--report-only", action="store_true", help="redraw plots and RESULTS.md from results.json"
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    out = args.out or (Path(tempfile.mkdtemp(prefix="bench-")) if args.quick else HERE / "results")
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        recorded: dict[str, Any] = json.loads((out / "results.json").read_text())
        plots(recorded, out)
        (HERE / "RESULTS.md").write_text(report(recorded))
        return 0
    results: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "plan": asdict(plan),
        "machine": machine(),
    }
    with stack(plan) as servers, ProcessPoolExecutor(max_workers=1) as pool:
        results["hits"] = measure_hits(pool, servers, plan)
        results["sustained"] = measure_sustained(pool, servers, plan)
        results["head_to_head"] = measure_head_to_head(pool, servers, plan)
        results["openloop"] = measure_openloop(pool, servers, plan)
        results["misses"] = measure_misses(pool, servers, plan)
        results["burst"] = measure_burst(servers, plan)
        results["memory"] = measure_memory(pool, servers, plan)
    results["layer"] = measure_layer(plan)
    results["verdicts"] = verdicts(results)
    results["plots"] = plots(results, out)
    # results.json is the raw record of a run (not committed); RESULTS.md is the one report.
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = report(results)
    (HERE / "RESULTS.md" if not args.quick else out / "RESULTS.md").write_text(text)
    print(text)
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
