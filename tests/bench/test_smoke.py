"""A few-second run of the benchmark, so that it cannot rot. It reports; it asserts nothing
about speed (timings depend on the machine), only that every figure was produced."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

import bench.run


def _bench(*args: str, timeout: float) -> str:
    """Run a benchmark module from the repository; its standard output."""
    result = subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=Path(__file__).parents[2],
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _assert_measured(figure: object) -> None:
    """A figure that was produced: a number, not None, not NaN, not negative."""
    assert isinstance(figure, int | float), figure
    assert not isinstance(figure, bool), figure
    assert figure >= 0, figure


@pytest.mark.timeout(300)
def test_the_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    _bench("bench.run", "--quick", "--out", str(tmp_path), timeout=280)
    results = json.loads((tmp_path / "results.json").read_text())
    hits = results["hits"]
    for name in (
        "baseline",
        "baseline_unbounded",
        "broker_hit",
        "broker_hit_no_fsync",
        "broker_hit_5000_clients",
        "broker_hit_jwt_caller",
        "broker_hit_shared_state",
        "broker_hit_no_audit_store",
    ):
        assert hits[name]["throughput_rps"] > 0
        # Measured (None when it is not), but in clock ticks of 10 ms: a server's CPU in a
        # quick round of 0.25 s on a busy host can read 0 (it did, in one run of make test),
        # so what is asserted is that it was measured at all.
        _assert_measured(hits[name]["cpu_us_per_request"])
        assert set(hits[name]["statuses"]) == {"200"}, hits[name]["statuses"]
    for key in ("c1", "c8"):
        assert results["misses"][key]["broker"]["statuses"] == {
            "200": results["misses"][key]["broker"]["statuses"]["200"]
        }
    # Single-flight is behaviour, not timing: a cold burst makes exactly one upstream call.
    assert results["burst"]["ok"] == results["burst"]["requests"]
    assert results["burst"]["upstream_calls"] == 1
    memory = results["memory"]
    assert memory["requests"] > 0
    # Every answer a token (ever-new end users, limits out of reach), so a growth in RSS is
    # the broker's serving, and the threads it ran with are on record beside it.
    assert memory["statuses"] == {"200": memory["requests"]}
    assert memory["errors"] == 0
    assert memory["threads"]
    assert all(count > 0 for count in memory["threads"])
    assert memory["rss_kib_when_cache_full"] > 0
    assert memory["rss_kib_halfway"] > 0
    assert "MiB halfway between; answers " in (tmp_path / "RESULTS.md").read_text()
    assert "Every round of every pair answered 200 only." in (tmp_path / "RESULTS.md").read_text()
    for name in ("baseline", "broker_hit"):
        assert results["sustained"][name]["throughput_rps"] > 0
        assert set(results["sustained"][name]["statuses"]) == {"200"}
    assert set(results["head_to_head"]) == {
        "hit_vs_minimal",
        "5000_clients",
        "jwt_caller",
        "durable_vs_no_fsync",
        "bounded_layer",
        "shared_state",
    }
    for pairs in results["head_to_head"].values():
        assert len(pairs["ratios"]) == results["plan"]["pair_rounds"]
        assert all(ratio > 0 for ratio in pairs["ratios"])
        assert pairs["median_ratio"] > 0
        assert len(pairs["p99_ratios"]) == len(pairs["ratios"])
        assert pairs["median_p99_ratio"] > 0
        # Every round's answers are on record, and each was a token (or the baseline's 200).
        assert set(pairs["statuses"]) == {pairs["numerator"], pairs["denominator"]}
        assert all(set(counts) == {"200"} for counts in pairs["statuses"].values())
    # Every broker round ends with its store caught up (a number, not a timeout).
    _assert_measured(results["hits"]["broker_hit"]["store_catch_up_s"])
    assert len(results["verdicts"]) == 11
    # Open-loop beside the closed-loop verdict: informational, but measured every run.
    openloop = results["openloop"]
    [row] = openloop["fractions"].values()
    assert set(row["medians"]) == {"durable", "no-fsync"}
    assert len(row["pair_ratios"]) == openloop["pairs"]
    assert row["durable_over_no_fsync"] == statistics.median(row["pair_ratios"])
    _assert_measured(openloop["closed_ratio"])
    assert "with open-loop arrivals (`bench.openloop`; informational" in (
        (tmp_path / "RESULTS.md").read_text()
    )
    assert results["layer"]["median_us"]["bounded"] > 0
    assert "The connection layer alone, in-process" in (tmp_path / "RESULTS.md").read_text()
    for plot in ("throughput.png", "latency.png"):
        assert (tmp_path / plot).read_bytes().startswith(b"\x89PNG")
    assert "| target | value | goal | met |" in (tmp_path / "RESULTS.md").read_text()


def test_the_store_benchmark_measures_files_and_both_stores(tmp_path: Path) -> None:
    from bench.store import measure
    from tests.support.postgres import PostgresServer

    # Its cluster is removed afterwards (63 MB a run were left in /tmp before).
    with PostgresServer.running() as server:
        results = measure(3000, server.create_database(), tmp_path)
    assert set(results) == {"files", "sqlite", "postgresql"}
    for figures in results.values():
        assert figures["find_token_s"] > 0
        assert figures["query_subject_s"] > 0
    assert results["sqlite"]["ship_records_per_s"] > 0
    assert results["sqlite"]["cli_find_token_s"] > 0
    assert results["postgresql"]["cli_query_subject_s"] > 0
    assert results["postgresql"]["ship_records_per_s"] > 0


@pytest.mark.timeout(120)
def test_the_pair_benchmark_reports_cpu_per_request_by_thread() -> None:
    output = _bench("bench.pair", "--rounds", "1", "--seconds", "0.3", timeout=100)
    rounds = dict(line.split(" ", 1) for line in output.splitlines()[:2])
    for name in ("baseline", "broker_hit"):
        measured = json.loads(rounds[name])
        assert measured["rps"] > 0
        assert measured["cpu_us_per_request"] > 0
    # The broker's own threads show: the loop, the audit writer, the store's shipping (a
    # short round may leave some at 0.0: /proc counts in 10 ms ticks).
    threads = json.loads(rounds["broker_hit"])["threads_us_per_request"]
    assert len(threads) >= 3
    assert max(threads.values()) > 0
    assert output.splitlines()[-1].startswith("hit / baseline: ")


@pytest.mark.timeout(120)
def test_the_durability_benchmark_reports_what_fsync_adds() -> None:
    output = _bench("bench.durability", "--rounds", "1", "--batches", "5", timeout=100)
    lines = output.splitlines()
    measured = {}
    for line in lines[1:6]:
        name, ms, unit = line.strip().rsplit(maxsplit=2)
        assert unit == "ms"
        measured[name.strip()] = ms
    assert set(measured) == {
        "writer, fsync",
        "writer, no fsync",
        "append + fsync",
        "append",
        "zeroed + fdatasync",
    }
    assert all(float(ms) > 0 for ms in measured.values())
    assert lines[6].startswith("fsync adds ")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("app", ["minimal", "raw"])
def test_the_layer_benchmark_serves_every_request_on_both_layers(app: str) -> None:
    # It raises unless each layer answered every request it was fed, one by one.
    output = _bench("bench.layer", "--rounds", "2", "--requests", "200", "--app", app, timeout=100)
    result = json.loads(output)
    assert result["app"] == app
    assert {name: len(rounds) for name, rounds in result["us_a_request"].items()} == {
        "bounded": 2,
        "uvicorn": 2,
    }
    assert all(us > 0 for us in result["median_us"].values())
    assert result["layer_adds_us"] == pytest.approx(
        result["median_us"]["bounded"] - result["median_us"]["uvicorn"], abs=0.011
    )


@pytest.mark.timeout(120)
def test_the_open_loop_benchmark_offers_each_rate_to_both_brokers() -> None:
    output = _bench(
        "bench.openloop",
        *("--pairs", "1", "--seconds", "0.3", "--connections", "8", "--fractions", "0.2"),
        timeout=100,
    )
    lines = output.splitlines()
    assert lines[0].startswith("closed loop, 32 connections: ")
    assert lines[1].startswith("offered 0.20 x no-fsync's closed loop (")
    medians = json.loads(lines[1].split(": ", 1)[1])
    for name in ("durable", "no-fsync"):
        # A fifth of what the no-fsync broker serves is within either's reach: every
        # request scheduled is answered, each timed from when it was due.
        assert medians[name]["achieved"] > 0
        assert medians[name]["errors"] == 0
        assert 0 < medians[name]["p50_ms"] <= medians[name]["p99_ms"]
        (result,) = json.loads(lines[2 if name == "durable" else 3].split(": ", 1)[1])
        assert result["offered"] > 0
    assert lines[-1].startswith("achieved at the highest rate, durable / no-fsync: ")


def test_a_pair_whose_rounds_were_refused_is_flagged_in_the_report() -> None:
    pair = {"numerator": "jwt-callers", "denominator": "durable", "ratios": [1.0]}
    answered = {
        "jwt_caller": {
            **pair,
            "statuses": {"jwt-callers": {"200": 10, "401": 5}, "durable": {"200": 15}},
        },
        "shared_state": {**pair, "statuses": {"jwt-callers": {"200": 3}, "durable": {"200": 3}}},
    }
    assert bench.run.refused_in_pairs(answered) == [
        "",
        "- **jwt_caller: jwt-callers answered 10 x 200, 5 x 401**: its ratio is not a verdict.",
    ]
    del answered["jwt_caller"]
    assert bench.run.refused_in_pairs(answered) == [
        "",
        "Every round of every pair answered 200 only.",
    ]
    # A run from before the answers were recorded is reported as it was.
    assert bench.run.refused_in_pairs({"jwt_caller": pair}) == []
    assert bench.run.memory_detail({"requests": 1}) == ""
