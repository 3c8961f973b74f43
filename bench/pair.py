"""A broker cache hit beside the minimal Litestar endpoint, in interleaved rounds, with what
each request costs each server in CPU, thread by thread: the focused measurement behind the
hit path's work (a run takes ~30 s; ``make bench`` measures everything).

    python -m bench.pair [--rounds 3] [--connections 32] [--seconds 4] [--no-store]

Thread CPU comes from /proc/<pid>/task/*/stat (user and system). With the load generator on
the same cores, a server's throughput is about the CPU it gets divided by its CPU per
request, so the threads' shares say where a hit's time goes: the event loop, the audit
writer's thread (write and fsync), the audit store's thread (shipping into SQLite).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import statistics
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx

from bench.load import LoadSpec, run
from bench.run import (
    AUDIENCE,
    Server,
    _broker_config,
    _start,
    free_port,
    proc_stat,
    start_simulator,
    stop_servers,
    wait_shipped,
)


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of a process and of its child processes (the audit
    shipping process), by thread id and name."""
    found = {}
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for process in pids:
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{process}/task"):
                if (stat := proc_stat(Path(f"/proc/{process}/task/{tid}/stat"))) is not None:
                    found[f"{tid}:{stat[0]}"] = stat[2]
    return found


def _round(pool: ProcessPoolExecutor, server: Server, spec: LoadSpec) -> dict[str, object]:
    before = thread_cpu(server.process.pid)
    result = pool.submit(run, spec).result()
    # The store's rows too: shipped at idle priority, some after the round (and never into
    # the next server's round).
    wait_shipped(server.url)
    after = thread_cpu(server.process.pid)
    served = max(result.requests, 1)
    # Every thread alive after the round, idle ones too: /proc counts in clock ticks (10 ms),
    # so a thread that did little in a short round shows 0.0 rather than vanishing.
    threads = {
        name: round((spent - before.get(name, 0.0)) / served * 1e6, 1)
        for name, spent in after.items()
    }
    return {
        "rps": round(result.throughput),
        "p99_ms": round(result.percentile(0.99) * 1000, 2),
        "cpu_us_per_request": round(sum(threads.values()), 1),
        "threads_us_per_request": dict(sorted(threads.items(), key=lambda kv: -kv[1])),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument(
        "--no-store", action="store_true", help="the broker without its embedded audit store"
    )
    args = parser.parse_args(argv)
    api_key = "mka1_bench_" + secrets.token_urlsafe(16)
    client_key = "bk_" + secrets.token_urlsafe(32)
    servers: list[Server] = []
    with tempfile.TemporaryDirectory(prefix="broker-pair-") as temporary:
        directory = Path(temporary)
        try:
            simulator = start_simulator(api_key)
            sim_port = simulator.port
            servers.append(simulator)
            port = free_port()
            extra = '\n[audit.store]\nbackend = "none"\n' if args.no_store else ""
            config = _broker_config(
                directory,
                "pair",
                sim_port,
                port,
                hashlib.sha256(client_key.encode()).hexdigest(),
                fsync=True,
                max_entries=10_000,
                extra=extra,
            )
            broker = _start(
                ["-m", "broker", "serve", "--config", str(config)],
                port,
                "/healthz",
                {"BENCH_MKA1_API_KEY": api_key},
            )
            servers.append(broker)
            base_port = free_port()
            baseline = _start(
                ["-m", "bench.baseline", "--port", str(base_port)], base_port, "/openapi"
            )
            servers.append(baseline)
            body = json.dumps(
                {"audience": AUDIENCE, "externalUserId": "hit", "expiresIn": 900}
            ).encode()
            auth = {"Authorization": f"Bearer {client_key}", "Content-Type": "application/json"}
            assert httpx.post(broker.url + "/tokens", content=body, headers=auth).is_success
            rounds: dict[str, list[dict[str, object]]] = {"baseline": [], "broker_hit": []}
            with ProcessPoolExecutor(max_workers=1) as pool:
                for _ in range(args.rounds):
                    for name, server, headers in (
                        ("baseline", baseline, {"Content-Type": "application/json"}),
                        ("broker_hit", broker, auth),
                    ):
                        spec = LoadSpec(
                            "127.0.0.1",
                            server.port,
                            "/tokens",
                            body,
                            headers,
                            args.connections,
                            args.seconds,
                        )
                        rounds[name].append(measured := _round(pool, server, spec))
                        print(name, json.dumps(measured), flush=True)
        finally:
            stop_servers(servers)
    rps = {name: statistics.median(float(r["rps"]) for r in rs) for name, rs in rounds.items()}  # type: ignore[arg-type]
    cpu = {
        name: statistics.median(float(r["cpu_us_per_request"]) for r in rs)  # type: ignore[arg-type]
        for name, rs in rounds.items()
    }
    print(
        f"hit / baseline: {rps['broker_hit'] / rps['baseline']:.3f} "
        f"({rps['broker_hit']:.0f} vs {rps['baseline']:.0f} req/s); CPU per request: "
        f"{cpu['broker_hit']:.0f} vs {cpu['baseline']:.0f} us"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
