"""A few-second run of the benchmark, so that it cannot rot. It reports; it asserts nothing
about speed (timings depend on the machine), only that every figure was produced."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(300)
def test_the_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
        cwd=Path(__file__).parents[2],
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    hits = results["hits"]
    for name in (
        "baseline",
        "baseline_unbounded",
        "broker_hit",
        "broker_hit_no_fsync",
        "broker_hit_5000_clients",
        "broker_hit_jwt_caller",
    ):
        assert hits[name]["throughput_rps"] > 0
        assert set(hits[name]["statuses"]) == {"200"}, hits[name]["statuses"]
    for key in ("c1", "c8"):
        assert results["misses"][key]["broker"]["statuses"] == {
            "200": results["misses"][key]["broker"]["statuses"]["200"]
        }
    # Single-flight is behaviour, not timing: a cold burst makes exactly one upstream call.
    assert results["burst"]["ok"] == results["burst"]["requests"]
    assert results["burst"]["upstream_calls"] == 1
    assert results["memory"]["requests"] > 0
    assert len(results["verdicts"]) == 9
    for plot in ("throughput.png", "latency.png"):
        assert (tmp_path / plot).read_bytes().startswith(b"\x89PNG")
    assert "| target | value | goal | met |" in (tmp_path / "RESULTS.md").read_text()
