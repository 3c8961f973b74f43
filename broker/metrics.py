"""Prometheus metrics, one registry per app (so tests and dev can run several in a process)."""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _Tally:
    """The series counted on every request (token outcomes, cache lookups, request times),
    kept as plain numbers and made into samples when scraped. prometheus_client's own take
    a lock on every increment (a few per cache hit, about 5% of one); these are only ever
    counted on the event loop's thread, so they need none. The exposition is the same."""

    def __init__(self) -> None:
        # Per label values: [count, created].
        self.tokens: dict[tuple[str, str, str], list[float]] = {}
        self.lookups: dict[tuple[str], list[float]] = {}
        # Per (route, status): counts per bucket (the last: above every bound), sum, created.
        self.requests: dict[tuple[str, str], tuple[list[int], list[float]]] = {}

    @staticmethod
    def count(series: dict[Any, list[float]], key: Any) -> None:
        found = series.get(key)
        if found is None:
            series[key] = [1, time.time()]
        else:
            found[0] += 1

    def observe(self, key: tuple[str, str], seconds: float) -> None:
        found = self.requests.get(key)
        if found is None:
            found = self.requests[key] = ([0] * (len(_LATENCY_BUCKETS) + 1), [0.0, time.time()])
        found[0][bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        found[1][0] += seconds

    def describe(self) -> Iterator[Metric]:
        yield CounterMetricFamily("broker_tokens", "POST /tokens outcomes")
        yield CounterMetricFamily("broker_cache_lookups", _LOOKUPS_HELP)
        yield HistogramMetricFamily("broker_request_duration_seconds", _REQUESTS_HELP)

    def collect(self) -> Iterator[Metric]:
        tokens = CounterMetricFamily(
            "broker_tokens", "POST /tokens outcomes", labels=["outcome", "code", "cache"]
        )
        for outcome_code_cache, (count, created) in list(self.tokens.items()):
            tokens.add_metric(outcome_code_cache, count, created=created)
        yield tokens
        lookups = CounterMetricFamily("broker_cache_lookups", _LOOKUPS_HELP, labels=["result"])
        for result, (count, created) in list(self.lookups.items()):
            lookups.add_metric(result, count, created=created)
        yield lookups
        requests = HistogramMetricFamily(
            "broker_request_duration_seconds", _REQUESTS_HELP, labels=["route", "status"]
        )
        for route_status, (counts, (total, created)) in list(self.requests.items()):
            cumulative, buckets = 0, []
            for bound, in_bucket in zip(_BOUNDS, counts, strict=True):
                cumulative += in_bucket
                buckets.append((bound, float(cumulative)))
            requests.add_metric(list(route_status), buckets, total)
            # As prometheus_client's own Histogram exposes it.
            requests.add_sample(
                "broker_request_duration_seconds_created",
                dict(zip(("route", "status"), route_status, strict=True)),
                created,
            )
        yield requests


# The "le" labels, written as prometheus_client writes them.
_BOUNDS = tuple(floatToGoString(b) for b in (*_LATENCY_BUCKETS, float("inf")))  # type: ignore[no-untyped-call]
_LOOKUPS_HELP = "Cache lookups by result (hit, miss, joined, bypass)"
_REQUESTS_HELP = "Time to answer a request"


class Metrics:
    """The broker's series. ``child`` hands out a labelled child once per label values:
    ``labels()`` on every request was a measurable share of a cache hit."""

    def child(self, family: Any, *values: str) -> Any:
        key = (id(family), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = family.labels(*values)
        return found

    def __init__(self) -> None:
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._tally = _Tally()
        r.register(self._tally)
        self.exposition = Exposition(r)
        self.upstream_seconds = Histogram(
            "broker_upstream_duration_seconds",
            "Time of each MKA1 exchange attempt",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "broker_upstream_errors", "Failed exchange attempts by kind", ["kind"], registry=r
        )
        self.upstream_retries = Counter(
            "broker_upstream_retries", "Exchange attempts retried", registry=r
        )
        self.cache_entries = Gauge("broker_cache_entries", "Tokens in the cache", registry=r)
        self.singleflight_joins = Counter(
            "broker_singleflight_joins",
            "Requests that shared another request's upstream call",
            registry=r,
        )
        self.circuit_state = Gauge(
            "broker_circuit_state", "Upstream circuit: 0 closed, 1 half-open, 2 open", registry=r
        )
        self.circuit_opened = Counter(
            "broker_circuit_opened", "Times the upstream circuit opened", registry=r
        )
        self.audit_write_seconds = Histogram(
            "broker_audit_write_seconds",
            "Time to write and fsync one audit batch",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.audit_failures = Counter(
            "broker_audit_write_failures", "Audit batches that could not be written", registry=r
        )
        self.audit_store_up = Gauge(
            "broker_audit_store_up",
            "1 while the last shipping pass reached the audit store, 0 while it cannot",
            registry=r,
        )
        self.audit_ship_lag_records = Gauge(
            "broker_audit_ship_lag_records",
            "Records of this replica's chain durable in its files but not yet in the store",
            registry=r,
        )
        self.audit_ship_lag_seconds = Gauge(
            "broker_audit_ship_lag_seconds",
            "How far the store is behind this replica's chain in time: in async mode the age "
            "of its oldest record not yet stored, in sync mode the seconds since the store "
            "last held every record",
            registry=r,
        )
        self.audit_shipped_records = Counter(
            "broker_audit_shipped_records", "Records copied into the audit store", registry=r
        )
        self.shared_state_up = Gauge(
            "broker_shared_state_up",
            "1 while the shared store (Valkey/Redis) answers, 0 while this replica runs on "
            "local state",
            registry=r,
        )
        self.shared_state_fallbacks = Counter(
            "broker_shared_state_fallbacks",
            "Checks answered from local state because the shared store was away, by kind",
            ["kind"],
            registry=r,
        )
        self.revocations_in_force = Gauge(
            "broker_revocations_in_force",
            "Bars (kill switch) this replica applies: callers, end users and audiences",
            registry=r,
        )
        self.revocations_written_back = Counter(
            "broker_revocations_written_back",
            "Bars the shared store lost without a lift, which this replica wrote back (from "
            "what it held, or from the audit trail at start)",
            registry=r,
        )
        self.upstream_clock_ahead = Gauge(
            "broker_upstream_clock_ahead_seconds",
            "How far the MKA1 exchange's clock is ahead of this host's, as the last minted "
            "token says (its iat, else its exp less the lifetime asked for, minus now); past "
            "60 s either way every token is refused",
            registry=r,
        )
        self.config_reloads = Counter(
            "broker_config_reloads", "Config reloads by result", ["result"], registry=r
        )
        self.jwks_fetches = Counter(
            "broker_jwks_fetches", "JWKS fetches by issuer", ["issuer"], registry=r
        )
        self.jwks_fetch_failures = Counter(
            "broker_jwks_fetch_failures", "Failed JWKS fetches by issuer", ["issuer"], registry=r
        )
        self.rate_limited = Counter(
            "broker_rate_limited", "Requests refused by a rate limit", ["limit"], registry=r
        )
        self.connections_refused = Counter(
            "broker_connections_refused",
            "Connections refused or closed by a bound (head size, timeouts, connection cap)",
            ["reason"],
            registry=r,
        )
        self.api_key_reloads = Counter(
            "broker_api_key_reloads", "API key file re-reads by result", ["result"], registry=r
        )

    def count_token(self, outcome: str, code: str, cache: str) -> None:
        _Tally.count(self._tally.tokens, (outcome, code, cache))

    def count_limited(self, limit: str) -> None:
        self.child(self.rate_limited, limit).inc()

    def count_lookup(self, result: str) -> None:
        _Tally.count(self._tally.lookups, (result,))

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self._tally.observe((route, str(status)), seconds)


# The share of the time scrapes may spend rendering the exposition, and the most they may
# spend at once (see ``Exposition``).
RENDER_SHARE = 0.1
RENDER_BURST_SECONDS = 1.0


class Exposition:
    """The registry's Prometheus text, rendered afresh for every scrape as long as rendering
    has taken at most ``share`` of the time (with up to ``burst`` seconds of it at once);
    past that, the last rendering is served again until the share is earned back. A
    rendering costs milliseconds (about 5 ms for 35 KB here, 25 times a ``/healthz``), and
    without a telemetry port ``/metrics`` is open to anyone on the API's port: one
    connection asking back to back kept the event loop busy rendering. A scraper at a
    scraper's pace is always served fresh."""

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        share: float = RENDER_SHARE,
        burst: float = RENDER_BURST_SECONDS,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._registry = registry
        self._share = share
        self._burst = burst
        self._clock = clock
        self._budget = burst
        self._at = clock()
        self._last: bytes | None = None

    def _render(self) -> bytes:
        return generate_latest(self._registry)

    def render(self) -> tuple[bytes, bool]:
        """The exposition, and whether it was rendered now (False: the last one again)."""
        now = self._clock()
        self._budget = min(self._burst, self._budget + (now - self._at) * self._share)
        self._at = now
        if self._budget <= 0 and self._last is not None:
            return self._last, False
        self._last = self._render()
        self._budget -= self._clock() - now
        return self._last, True
