"""Token buckets in-process: spending, refilling, and bounded memory."""

from __future__ import annotations

import time

import pytest

from broker.config import BucketSettings
from broker.ratelimit import RecordBudget, RepeatBudget, TokenBuckets, address_key
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


def test_a_record_budgets_count_is_due_a_second_after_its_last_record() -> None:
    clock = ManualClock()
    budget = RecordBudget(BucketSettings(rate_per_second=0.001, burst=1), clock=clock)
    assert [budget.admit() for _ in range(3)] == [True, False, False]
    clock.now += 0.9
    # A record may still come to take it.
    assert budget.take_due() is None
    clock.now += 0.1
    assert budget.take_due() == 2
    assert budget.take_due() is None
    assert budget.take_unrecorded() is None


def test_a_repeated_refusal_is_recorded_once_an_interval_and_the_rest_counted() -> None:
    clock = ManualClock()
    budget = RepeatBudget(interval_seconds=1.0, clock=clock)
    assert budget.admit("svc GET /audit/events", "r0") == (True, None)
    for n in range(5):
        clock.now += 0.1
        assert budget.admit("svc GET /audit/events", f"r{n + 1}") == (False, None)
    # Another key is its own.
    assert budget.admit("other GET /audit/events", "o0") == (True, None)
    # After the interval, the next one is recorded with the five before it counted.
    clock.now = 101.0
    assert budget.admit("svc GET /audit/events", "r6") == (True, 5)
    clock.now = 102.5
    assert budget.admit("svc GET /audit/events", "r7") == (True, None)


def test_the_repeats_of_a_key_forgotten_for_room_go_to_the_next_record() -> None:
    clock = ManualClock()
    budget = RepeatBudget(interval_seconds=10.0, max_keys=2, clock=clock)
    assert budget.admit("a", "a0") == (True, None)
    assert budget.admit("a", "a1") == (False, None)
    assert budget.admit("a", "a2") == (False, None)
    assert budget.admit("b", "b0") == (True, None)
    # A third key pushes "a" out: its two repeats are not lost...
    assert budget.admit("c", "c0") == (True, None)
    # ...but counted into the next record written, whichever key it is for.
    assert budget.admit("d", "d0") == (True, 2)
    assert budget.admit("e", "e0") == (True, None)


def test_counts_no_record_took_are_due_once_their_keys_interval_has_passed() -> None:
    clock = ManualClock()
    budget = RepeatBudget(interval_seconds=1.0, clock=clock)
    budget.admit("a", "a0")
    budget.admit("a", "a1")
    budget.admit("a", "a2")
    clock.now += 0.5
    budget.admit("b", "b0")
    budget.admit("b", "b1")
    budget.admit("quiet", "q0")
    # Within a's interval nothing is due: its next record may still take the count.
    assert budget.take_due() == []
    clock.now += 0.6
    # a's interval has passed: its two repeats, named by the record they repeated.
    assert budget.take_due() == [("a0", 2)]
    assert budget.take_due() == []
    # a was forgotten with its count: its next refusal is recorded, with nothing before it.
    assert budget.admit("a", "a3") == (True, None)
    clock.now += 0.5
    # b's repeat; the quiet key had none, and is simply forgotten.
    assert budget.take_due() == [("b0", 1)]
    assert budget.admit("quiet", "q1") == (True, None)


def test_a_count_is_taken_once_whichever_takes_it() -> None:
    clock = ManualClock()
    budget = RepeatBudget(interval_seconds=1.0, max_keys=1, clock=clock)
    budget.admit("a", "a0")
    budget.admit("a", "a1")
    budget.admit("b", "b0")  # "a" forgotten for room: its repeat is orphaned
    budget.admit("b", "b1")
    budget.admit("b", "b2")
    # At shutdown every count is taken, due or not; the orphaned one unnamed.
    assert budget.take_all() == [("b0", 2), (None, 1)]
    assert budget.take_all() == []
    assert budget.take_due() == []
    # And none of them goes into a later record as well.
    clock.now += 5
    assert budget.admit("b", "b3") == (True, None)


@pytest.mark.parametrize(
    ("source", "key"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:db8:1:2::9", "2001:db8:1:2::/64"),
        ("2001:db8:1:3::9", "2001:db8:1:3::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),  # an IPv4 client on a dual-stack socket
        ("64:ff9b::203.0.113.7", "203.0.113.7"),  # an IPv4 client through a NAT64 translator
        ("64:ff9b::1:203.0.113.7", "64:ff9b::/64"),  # outside the /96: an IPv6 /64 as any
        ("fe80::1%eth0", "fe80::/64"),
        (None, "unknown"),
        ("not:an:address", "not:an:address"),
    ],
)
def test_a_source_address_is_keyed_alone_or_by_its_ipv6_64(source: str | None, key: str) -> None:
    assert address_key(source) == key


def test_the_addresses_of_one_ipv6_64_share_one_bucket() -> None:
    # One host is given a /64: a guesser rotating its addresses got a fresh bucket each time.
    buckets = TokenBuckets(BucketSettings(rate_per_second=0.001, burst=3))
    spent = [buckets.take(address_key(f"2001:db8:7:7::{n:x}")) for n in range(4)]
    assert spent[:3] == [None, None, None]
    assert spent[3] is not None
    assert buckets.take(address_key("2001:db8:7:8::1")) is None  # the next /64 is another host
