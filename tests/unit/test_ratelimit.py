"""Token buckets in-process: spending, refilling, and bounded memory."""

from __future__ import annotations

import time

from broker.config import BucketSettings
from broker.ratelimit import RecordBudget, RepeatBudget, TokenBuckets
from tests.support.clock import ManualClock


def test_a_bucket_spends_its_burst_then_says_how_long_to_wait() -> None:
    buckets = TokenBuckets(BucketSettings(rate_per_second=2, burst=3))
    assert [buckets.take("a") for _ in range(3)] == [None, None, None]
    wait = buckets.take("a")
    assert wait is not None
    assert 0 < wait <= 0.5
    assert buckets.exhausted("a") is not None
    # Another key has its own bucket.
    assert buckets.take("b") is None


def test_a_bucket_refills_at_its_rate() -> None:
    buckets = TokenBuckets(BucketSettings(rate_per_second=20, burst=1))
    assert buckets.take("a") is None
    assert buckets.take("a") is not None
    time.sleep(0.06)
    assert buckets.take("a") is None


def test_buckets_full_again_are_forgotten() -> None:
    buckets = TokenBuckets(BucketSettings(rate_per_second=100, burst=1))
    for n in range(50):
        buckets.take(f"user-{n}")
    assert len(buckets) == 50
    time.sleep(0.03)  # refilled: each bucket is full again, and need not be kept
    buckets.take("fresh")
    assert len(buckets) == 1


def test_memory_never_exceeds_max_keys_and_the_oldest_go_first() -> None:
    buckets = TokenBuckets(BucketSettings(rate_per_second=0.001, burst=1), max_keys=100)
    for n in range(1000):
        buckets.take(f"user-{n}")
    assert len(buckets) == 100
    # The newest are kept: user-999 is still empty, user-0 was forgotten (so full again).
    assert buckets.take("user-999") is not None
    assert buckets.take("user-0") is None


def test_a_record_budget_counts_what_it_refuses() -> None:
    budget = RecordBudget(BucketSettings(rate_per_second=0.001, burst=2))
    assert [budget.admit() for _ in range(5)] == [True, True, False, False, False]
    assert budget.take_unrecorded() == 3
    assert budget.take_unrecorded() is None


def test_a_repeated_refusal_is_recorded_once_an_interval_and_the_rest_counted() -> None:
    clock = ManualClock()
    budget = RepeatBudget(interval_seconds=1.0, clock=clock)
    assert budget.admit("svc GET /audit/events") == (True, None)
    for _ in range(5):
        clock.now += 0.1
        assert budget.admit("svc GET /audit/events") == (False, None)
    # Another key is its own.
    assert budget.admit("other GET /audit/events") == (True, None)
    # After the interval, the next one is recorded with the five before it counted.
    clock.now = 101.0
    assert budget.admit("svc GET /audit/events") == (True, 5)
    clock.now = 102.5
    assert budget.admit("svc GET /audit/events") == (True, None)


def test_the_repeats_of_a_key_forgotten_for_room_go_to_the_next_record() -> None:
    clock = ManualClock()
    budget = RepeatBudget(interval_seconds=10.0, max_keys=2, clock=clock)
    assert budget.admit("a") == (True, None)
    assert budget.admit("a") == (False, None)
    assert budget.admit("a") == (False, None)
    assert budget.admit("b") == (True, None)
    # A third key pushes "a" out: its two repeats are not lost...
    assert budget.admit("c") == (True, None)
    # ...but counted into the next record written, whichever key it is for.
    assert budget.admit("d") == (True, 2)
    assert budget.admit("e") == (True, None)
