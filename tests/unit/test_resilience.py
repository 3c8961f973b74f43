"""Retry timing and the circuit breaker, in-process, on a clock the test moves."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from broker.resilience import CircuitBreaker, full_jitter, parse_retry_after
from tests.support.clock import ManualClock

NOW = 1_000_000.0


def _state(breaker: CircuitBreaker) -> str:
    """Read afresh each time (mypy would narrow the property after one comparison)."""
    return breaker.state


def _http_date(offset: float) -> str:
    return format_datetime(datetime.fromtimestamp(NOW + offset, UTC), usegmt=True)


def test_parse_retry_after() -> None:
    assert parse_retry_after("7", cap=30, now=NOW) == 7
    assert parse_retry_after(" 7 ", cap=30, now=NOW) == 7
    assert parse_retry_after("0", cap=30, now=NOW) == 0
    assert parse_retry_after("700", cap=30, now=NOW) == 30
    assert parse_retry_after("9" * 5000, cap=30, now=NOW) == 30
    assert parse_retry_after(_http_date(12), cap=30, now=NOW) == pytest.approx(12)
    assert parse_retry_after(_http_date(3600), cap=30, now=NOW) == 30
    assert parse_retry_after(_http_date(-12), cap=30, now=NOW) == 0


@pytest.mark.parametrize(
    "junk",
    [
        None,
        "",
        "soon",
        "-1",
        "+5",
        "1.5",
        "1e3",
        "\u0663",  # ARABIC-INDIC DIGIT THREE: a digit to str.isdigit, not to RFC 9110
        "Mon, 32 Dec 2026 00:00:00 GMT",
        "Fri, 31 Dec 99999 23:59:59 GMT",
        "Tue, 08 Dec 2026 00:00:00",  # no zone: not an HTTP date
    ],
)
def test_a_retry_after_that_is_neither_seconds_nor_an_http_date_is_none(junk: str | None) -> None:
    assert parse_retry_after(junk, cap=30, now=NOW) is None


def test_full_jitter_stays_within_its_cap_and_its_doubling_bound() -> None:
    delays = [full_jitter(attempt, 0.1, 1.0) for attempt in range(10) for _ in range(50)]
    assert all(0 <= delay <= 1.0 for delay in delays)
    assert len(set(delays)) > 100
    assert all(0 <= full_jitter(0, 0.1, 1.0) <= 0.1 for _ in range(200))
    assert all(0 <= full_jitter(2, 0.1, 1.0) <= 0.4 for _ in range(200))
    # An attempt count past any float's exponent stays at the cap.
    assert 0 <= full_jitter(2000, 0.1, 1.0) <= 1.0


def test_the_circuit_opens_only_after_consecutive_failures() -> None:
    breaker = CircuitBreaker(threshold=3, cooldown=10, clock=ManualClock())
    for _ in range(2):
        breaker.record_failure()
    breaker.record_success()
    for _ in range(2):
        breaker.record_failure()
    assert _state(breaker) == "closed"
    assert breaker.allow()
    breaker.record_failure()
    assert _state(breaker) == "open"
    assert not breaker.allow()
    assert breaker.opened_count == 1


def test_an_open_circuit_says_when_to_come_back_and_half_opens_then() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(threshold=1, cooldown=10, clock=clock)
    breaker.record_failure()
    assert breaker.retry_after() == 10
    clock.now += 4
    assert breaker.retry_after() == 6
    assert _state(breaker) == "open"
    clock.now += 6
    assert breaker.retry_after() == 0
    assert _state(breaker) == "half_open"


def test_half_open_lets_one_probe_through_and_its_verdict_decides() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(threshold=2, cooldown=5, clock=clock)
    breaker.record_failure()
    assert breaker.allow()
    breaker.record_failure()
    assert _state(breaker) == "open"
    assert not breaker.allow()
    clock.now += 5
    assert breaker.allow()
    assert not breaker.allow(), "one probe at a time"
    breaker.record_success()
    assert _state(breaker) == "closed"
    assert breaker.allow()


def test_a_failed_probe_opens_the_circuit_again_at_once() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(threshold=3, cooldown=5, clock=clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 5
    assert breaker.allow()
    breaker.record_failure()  # one failure, below the threshold: a probe's is enough
    assert _state(breaker) == "open"
    assert breaker.retry_after() == 5
    assert breaker.opened_count == 2


def test_a_probe_without_a_verdict_lets_the_next_one_through() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(threshold=1, cooldown=5, clock=clock)
    breaker.record_failure()
    clock.now += 5
    assert breaker.allow()
    assert not breaker.allow()
    breaker.release_probe()
    assert _state(breaker) == "half_open"
    assert breaker.allow()
    # Released while closed, it changes nothing.
    breaker.record_success()
    breaker.release_probe()
    assert _state(breaker) == "closed"
    assert breaker.allow()
