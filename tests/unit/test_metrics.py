"""The series counted per request are exposed exactly as prometheus_client's own Counter and
Histogram would expose them (the same samples, labels and values)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from broker.metrics import _LATENCY_BUCKETS, Exposition, Metrics

Key = tuple[str, tuple[tuple[str, str], ...]]


def _samples(exposition: bytes) -> dict[Key, float]:
    """Every sample by name and labels; a ``_created`` one (a time) as 0."""
    found = {}
    for family in text_string_to_metric_families(exposition.decode()):
        for sample in family.samples:
            created = sample.name.endswith("_created")
            found[(sample.name, tuple(sorted(sample.labels.items())))] = (
                0.0 if created else sample.value
            )
    return found


def test_the_exposition_is_the_libraries_own() -> None:
    ours = Metrics()
    reference = CollectorRegistry()
    tokens = Counter(
        "broker_tokens", "POST /tokens outcomes", ["outcome", "code", "cache"], registry=reference
    )
    lookups = Counter(
        "broker_cache_lookups",
        "Cache lookups by result (hit, miss, joined, bypass)",
        ["result"],
        registry=reference,
    )
    requests = Histogram(
        "broker_request_duration_seconds",
        "Time to answer a request",
        ["route", "status"],
        buckets=_LATENCY_BUCKETS,
        registry=reference,
    )
    for outcome, code, cache in [("issued", "issued", "hit")] * 3 + [("denied", "x", "none")]:
        ours.count_token(outcome, code, cache)
        tokens.labels(outcome, code, cache).inc()
    for result in ("hit", "hit", "miss"):
        ours.count_lookup(result)
        lookups.labels(result).inc()
    for route, status, seconds in [
        ("/tokens", 200, 0.0004),
        ("/tokens", 200, 0.001),  # on a bound: counted in that bucket
        ("/tokens", 200, 0.003),
        ("/tokens", 401, 0.02),
        ("other", 404, 30.0),  # above every bound
    ]:
        ours.observe_request(route, status, seconds)
        requests.labels(route, str(status)).observe(seconds)

    expected = _samples(generate_latest(reference))
    names = {name for name, _ in expected}
    exposed = {k: v for k, v in _samples(generate_latest(ours.registry)).items() if k[0] in names}
    assert exposed == expected
    assert any(name == "broker_request_duration_seconds_created" for name, _ in exposed)


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_scrapes_are_rendered_fresh_within_their_share_of_time_and_served_again_past_it() -> None:
    metrics = Metrics()
    clock = _Clock()
    # Each rendering "takes" 0.1 s of the clock: a share of 0.1 a second, in a bucket of
    # 0.25 s, allows three renderings at once and one a second after that.
    exposition = Exposition(metrics.registry, share=0.1, burst=0.25, clock=clock)
    real_render = exposition._render

    def slow_render() -> bytes:
        clock.now += 0.1
        return real_render()

    exposition._render = slow_render  # type: ignore[method-assign]
    counted = metrics.connections_refused.labels(reason="evicted")

    def scrape() -> tuple[float, bool]:
        text, fresh = exposition.render()
        value = _samples(text)[("broker_connections_refused_total", (("reason", "evicted"),))]
        return value, fresh

    seen = []
    for _ in range(5):
        counted.inc()
        seen.append(scrape())
    # Three fresh, then the last rendering again: the count it had then, not the count now.
    assert seen == [(1.0, True), (2.0, True), (3.0, True), (3.0, False), (3.0, False)]
    clock.now += 1.0  # a tenth of a second's rendering earned back
    counted.inc()
    assert scrape() == (6.0, True)
    assert scrape() == (6.0, False)
    # A scraper at a scraper's pace (every 15 s) is always served fresh.
    for step in range(3):
        clock.now += 15
        counted.inc()
        assert scrape() == (7.0 + step, True)
