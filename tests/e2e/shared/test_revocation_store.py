"""Bars and their cutoffs on a real Redis, in-process: a lift leaves its cutoff behind for
the replicas that never saw the bar, cutoffs no token could still be held back by go, and a
bar the store lost without a lift is written back by the replicas that held it."""

from __future__ import annotations

import asyncio
import base64
import secrets
import threading
import time
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from broker.cache import CacheKey, TokenCache
from broker.config import SharedStateSettings
from broker.metrics import Metrics
from broker.policy import Grant
from broker.revocations import Revocations
from broker.secrets import Secret
from broker.shared import FULL, Bar, SharedState
from tests.support.privileged import Guarded
from tests.support.redis import RedisServer
from tests.support.tokens import issued_token

AUDIENCE = "https://api.example.com"


def _store(
    redis_server: RedisServer,
    prefix: str,
    key: bytes,
    *,
    previous: bytes | None = None,
    following: bytes | None = None,
    kind: type[SharedState] = SharedState,
) -> SharedState:
    settings = SharedStateSettings(
        url_env="UNUSED", encryption_key_env="UNUSED", key_prefix=prefix, timeout_ms=2000
    )
    return kind(
        settings,
        Secret(redis_server.url),
        key,
        Metrics(),
        previous_key=previous,
        next_key=following,
    )


def test_a_replica_that_reads_after_a_bar_and_its_lift_forgets_what_it_held(
    redis_server: RedisServer,
) -> None:
    prefix, key = f"t{secrets.token_hex(4)}:", secrets.token_bytes(32)
    grant = CacheKey.for_grant(Grant(AUDIENCE, "blink", 900, None))

    async def scenario() -> tuple[int, int, bool]:
        told, late = _store(redis_server, prefix, key), _store(redis_server, prefix, key)
        late_cache = TokenCache(10, 0.5)
        told_revocations = Revocations(told, TokenCache(10, 0.5))
        late_revocations = Revocations(late, late_cache)
        try:
            await late_revocations.refresh()
            late_cache.put(grant, issued_token(begun_at=time.time() - 1))
            held = len(late_cache)
            await told_revocations.bar(Bar("end_user", "blink", time.time(), "x", "op"))
            await told_revocations.lift("end_user", "blink")
            await late_revocations.refresh()  # the bar is gone by now; its cutoff is not
            return held, len(late_cache), late_cache.forgotten(grant, time.time() - 0.5)
        finally:
            await told.close()
            await late.close()

    assert asyncio.run(scenario()) == (1, 0, True)


def test_a_cutoff_no_token_can_outlive_goes_with_the_next_change(
    redis_server: RedisServer,
) -> None:
    store = _store(redis_server, f"t{secrets.token_hex(4)}:", secrets.token_bytes(32))
    now = time.time()
    month_ago = now - 2_600_000  # past the longest lifetime, 2592000 s

    async def scenario() -> list[set[tuple[str, str]]]:
        seen = []
        try:
            for value, cutoff in (("old", month_ago), ("new", now)):
                await store.bar(Bar("end_user", value, cutoff, "x", "op"), cutoff)
                found = await store.cutoffs()
                assert isinstance(found, list)
                seen.append({(c.kind, c.value) for c in found})
            assert await store.lift("end_user", "new", now + 1)
            found = await store.cutoffs()
            assert isinstance(found, list)
            seen.append({(c.kind, c.value) for c in found if c.at == now + 1})
            return seen
        finally:
            await store.close()

    assert asyncio.run(scenario()) == [
        {("end_user", "old")},
        {("end_user", "new")},
        {("end_user", "new")},
    ]


def _wipe(redis_server: RedisServer, prefix: str) -> None:
    """What a store restarted without persistence, or flushed, leaves of this prefix."""
    client = redis_server.client()
    if found := client.keys(f"{prefix}revocations*"):
        client.delete(*found)


def test_a_bar_the_store_lost_is_written_back_and_only_a_lift_ends_it(
    redis_server: RedisServer,
) -> None:
    prefix, key = f"t{secrets.token_hex(4)}:", secrets.token_bytes(32)
    kept = Bar("end_user", "kept", time.time(), "compromised", "op")

    async def bars_read_by_a_new_replica() -> list[tuple[str, str]]:
        store = _store(redis_server, prefix, key)
        try:
            fresh = Revocations(store, None)
            await fresh.refresh()
            assert fresh.known
            return [(bar.kind, bar.value) for bar in fresh.current()]
        finally:
            await store.close()

    async def scenario() -> list[object]:
        told, held = _store(redis_server, prefix, key), _store(redis_server, prefix, key)
        told_lost: list[Bar] = []
        held_lost: list[Bar] = []
        told_revocations = Revocations(told, None, told_lost.append)
        held_revocations = Revocations(held, None, held_lost.append)
        seen: list[object] = []
        try:
            await told_revocations.bar(kept)
            await held_revocations.refresh()
            _wipe(redis_server, prefix)
            seen.append(await bars_read_by_a_new_replica())  # lost: a new replica sees none
            await held_revocations.refresh()  # the holder finds it gone without a lift
            seen.append(held_revocations.barred("svc", "kept", "https://a.example") is not None)
            seen.append(await bars_read_by_a_new_replica())  # written back
            # Deleted again, cutoffs and all: written back again.
            _wipe(redis_server, prefix)
            await told_revocations.refresh()
            seen.append(await bars_read_by_a_new_replica())
            # A lift, even from a replica whose clock is far behind, ends it for good.
            assert await told.lift("end_user", "kept", time.time() - 3600) is not None
            await held_revocations.refresh()
            await told_revocations.refresh()
            seen.append(held_revocations.barred("svc", "kept", "https://a.example") is not None)
            seen.append(await bars_read_by_a_new_replica())
            # Each loss told once, by the replica that wrote the bar back, as it was.
            seen.append([(bar.value, bar.reason, bar.by) for bar in held_lost + told_lost])
            return seen
        finally:
            await told.close()
            await held.close()

    assert asyncio.run(scenario()) == [
        [],
        True,
        [("end_user", "kept")],
        [("end_user", "kept")],
        False,
        [],
        [("kept", "compromised", "op"), ("kept", "compromised", "op")],
    ]


def test_a_bar_made_after_the_store_lost_its_data_reaches_a_replica_whatever_the_version(
    redis_server: RedisServer,
) -> None:
    # A store that lost its data counts its version from 1 again: a replica that had read
    # version 1 before took the new version 1 for the one it knew.
    prefix, key = f"t{secrets.token_hex(4)}:", secrets.token_bytes(32)

    async def scenario() -> bool:
        told, reader = _store(redis_server, prefix, key), _store(redis_server, prefix, key)
        told_revocations, reader_revocations = Revocations(told, None), Revocations(reader, None)
        try:
            await told_revocations.lift("end_user", "nobody")  # version 1, no bar
            await reader_revocations.refresh()
            _wipe(redis_server, prefix)
            await told_revocations.bar(Bar("end_user", "later", time.time(), "x", "op"))
            for _ in range(60):  # a minute's refreshes at the default period
                await reader_revocations.refresh()
            return reader_revocations.barred("svc", "later", "https://a.example") is not None
        finally:
            await told.close()
            await reader.close()

    assert asyncio.run(scenario())


def test_a_read_that_overlaps_a_bar_made_here_neither_undoes_it_nor_takes_it_for_lost(
    redis_server: RedisServer,
) -> None:
    prefix, key = f"t{secrets.token_hex(4)}:", secrets.token_bytes(32)

    async def scenario() -> tuple[bool, list[Bar], bool]:
        store = _store(redis_server, prefix, key)
        lost: list[Bar] = []
        revocations = Revocations(store, None, lost.append)
        read, go_on = asyncio.Event(), asyncio.Event()
        original = store.revocation_state

        async def paused() -> object:
            found = await original()
            read.set()
            await go_on.wait()
            return found

        try:
            await revocations.refresh()
            store.revocation_state = paused  # type: ignore[method-assign, assignment]
            refreshing = asyncio.create_task(revocations.refresh())
            await read.wait()  # the bars read, before this bar
            await revocations.bar(Bar("end_user", "racing", time.time(), "x", "op"))
            go_on.set()
            await refreshing
            barred_now = revocations.barred("svc", "racing", "https://a.example") is not None
            store.revocation_state = original  # type: ignore[method-assign]
            await revocations.refresh()  # the next read sees it
            barred_later = revocations.barred("svc", "racing", "https://a.example") is not None
            return barred_now, lost, barred_later
        finally:
            await store.close()

    assert asyncio.run(scenario()) == (True, [], True)


def test_a_write_back_from_the_trail_is_made_only_where_the_store_has_no_cutoff(
    redis_server: RedisServer,
) -> None:
    """The condition and the write are one step in the store: a replica that starts while
    an admin lifts the bar elsewhere does not put it back over the lift."""
    prefix, key = f"t{secrets.token_hex(4)}:", secrets.token_bytes(32)
    lost = Bar("end_user", "lost", time.time(), "compromised", "op")
    lifted = Bar("end_user", "lifted-since", time.time(), "compromised", "op")

    async def scenario() -> list[object]:
        store = _store(redis_server, prefix, key)
        try:
            assert await store.lift("end_user", "lifted-since", time.time()) is not None
            written = [
                await store.restore_unmarked(bar, time.time()) for bar in (lost, lifted, lost)
            ]
            fresh = Revocations(store, None)
            await fresh.refresh()
            return [written, [bar.value for bar in fresh.current()]]
        finally:
            await store.close()

    assert asyncio.run(scenario()) == [[True, False, False], ["lost"]]


def test_cutoffs_for_values_past_the_most_are_refused_and_the_trail_says_not_applied(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every replica reads every cutoff (each a value barred or lifted in the last 30 days)
    whenever the bars change: lifts of values without end, say, would have grown that read
    without bound. A bar in force can still be lifted, cutoff or not."""
    monkeypatch.setenv("GUARDED_REDIS_URL", redis_server.url)
    monkeypatch.setenv("GUARDED_SHARED_KEY", base64.b64encode(secrets.token_bytes(32)).decode())
    guarded = Guarded(
        tmp_path / "audit",
        extra=f"""
[shared_state]
url_env = "GUARDED_REDIS_URL"
encryption_key_env = "GUARDED_SHARED_KEY"
key_prefix = "t{secrets.token_hex(4)}:"
""",
    )
    guarded.driver.start()
    try:
        assert guarded.runtime.shared is not None
        guarded.runtime.shared.max_cutoffs = 2
        assert guarded.revoke({"kind": "end_user", "value": "u1"})[0] == 200
        assert guarded.revoke({"kind": "end_user", "value": "u2", "action": "lift"})[0] == 200
        status, problem = guarded.revoke({"kind": "end_user", "value": "u3"})
        assert status == 409
        assert problem["code"] == "too_many_revocation_changes"
        assert problem["detail"].startswith("the shared store holds cutoffs for 2 values")
        assert problem["errors"] == [{"field": "value", "message": "would be value 3; at most 2"}]
        assert guarded.revoke({"kind": "end_user", "value": "u4", "action": "lift"})[0] == 409
        # Values with a cutoff already take changes.
        assert guarded.revoke({"kind": "end_user", "value": "u2"})[0] == 200
        assert guarded.revoke({"kind": "end_user", "value": "u1", "action": "lift"})[0] == 200
        records = [
            (r["action"], r["value"], r.get("applied", True)) for r in guarded.records("revocation")
        ]
        assert records == [
            ("bar", "u1", True),
            ("lift", "u2", True),
            ("bar", "u3", True),
            ("bar", "u3", False),
            ("lift", "u4", True),
            ("lift", "u4", False),
            ("bar", "u2", True),
            ("lift", "u1", True),
        ]
        assert [bar.value for bar in guarded.runtime.revocations.current()] == ["u2"]
    finally:
        guarded.driver.stop()


def test_a_bar_in_force_without_a_cutoff_is_lifted_whatever_the_cutoffs_held(
    redis_server: RedisServer,
) -> None:
    """A bar older than any cutoff kept (30 days), or stored by a broker that wrote none."""
    prefix, key = f"t{secrets.token_hex(4)}:", secrets.token_bytes(32)

    async def scenario() -> list[object]:
        store = _store(redis_server, prefix, key)
        store.max_cutoffs = 1
        revocations = Revocations(store, None)
        try:
            await revocations.bar(Bar("end_user", "old", time.time(), "x", "op"))
            redis_server.client().delete(f"{prefix}revocations:cutoffs")
            await store.lift("end_user", "filler", time.time())
            await revocations.refresh()
            refused = await store.lift("end_user", "other", time.time())
            lifted = await revocations.lift("end_user", "old")
            return [refused is FULL, lifted, revocations.current()]
        finally:
            await store.close()

    assert asyncio.run(scenario()) == [True, "deployment", []]


def test_a_replica_stopped_while_it_reads_the_bars_stops(redis_server: RedisServer) -> None:
    """redis-py returns the answer of a command whose task was cancelled meanwhile about
    one time in four, swallowing the cancellation: the loop that follows the bars, stopped
    by cancelling it, read on for ever, and a broker's shutdown hung until it was killed."""
    prefix, key = f"t{secrets.token_hex(4)}:", secrets.token_bytes(32)

    async def scenario() -> int:
        store = _store(redis_server, prefix, key)
        stopped = 0
        try:
            for turn in range(40):
                revocations = Revocations(store, None)
                await revocations.start(0)  # reads without a pause: a stop lands in a read
                await asyncio.sleep(0.001 * (turn % 5))
                await revocations.close()
                stopped += 1
        finally:
            await store.close()
        return stopped

    # On a thread of its own: a close that never returns cannot be timed out from inside
    # (the task it awaits is the one that swallowed the cancellation).
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(asyncio.run(scenario())), daemon=True)
    runner.start()
    runner.join(timeout=60)
    assert result == [40]


def test_bars_another_key_wrote_are_said_to_be_unread(redis_server: RedisServer) -> None:
    """A replica whose encryption key does not open a bar cannot apply it: after a change of
    key without an audit store to write the bars back from, every bar was gone, unsaid."""
    prefix = f"t{secrets.token_hex(4)}:"

    async def scenario() -> list[Bar]:
        before = _store(redis_server, prefix, secrets.token_bytes(32))
        after = _store(redis_server, prefix, secrets.token_bytes(32))
        try:
            await Revocations(before, None).bar(Bar("end_user", "u", time.time(), "x", "op"))
            reader = Revocations(after, None)
            await reader.refresh()
            return reader.current()
        finally:
            await before.close()
            await after.close()

    with capture_logs() as logs:
        assert asyncio.run(scenario()) == []
    assert [(line["event"], line["bars"]) for line in logs if "bars" in line][:1] == [
        ("revocations_unreadable", 1)
    ]


def test_a_key_changed_in_three_rollouts_keeps_every_bar_applied_throughout(
    redis_server: RedisServer,
) -> None:
    """The README's three steps: the new key as next, then as the key with the old one as
    previous (which seals what the old key sealed again), then alone. Every replica of every
    step reads every bar; a lift from any step ends a bar wherever it was sealed. A change
    all at once lost every bar to the replicas with the other key (see the test above)."""
    prefix = f"t{secrets.token_hex(4)}:"
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)

    async def barred(store: SharedState) -> set[str]:
        state = await store.revocation_state()
        assert isinstance(state, tuple)
        bars, cutoffs = state
        assert {c.value for c in cutoffs} >= {b.value for b in bars}
        return {bar.value for bar in bars}

    async def scenario() -> list[object]:
        before = _store(redis_server, prefix, old)
        first = _store(redis_server, prefix, old, following=new)
        second = _store(redis_server, prefix, new, previous=old)
        after = _store(redis_server, prefix, new)
        seen: list[object] = []
        try:
            now = time.time()
            await Revocations(before, None).bar(Bar("end_user", "u1", now, "x", "op"))
            seen.append(await barred(first))  # step 1 reads the old key's bar
            await Revocations(second, None).bar(Bar("end_user", "u2", now, "x", "op"))
            seen.append(await barred(first))  # and the new key's, written by step 2
            await Revocations(first, None).bar(Bar("end_user", "u3", now, "x", "op"))
            seen.append(await barred(second))  # step 2 reads all, and seals u1, u3 again
            seen.append(await barred(after))  # so step 3, the new key alone, reads all
            assert await first.lift("end_user", "u2", time.time()) is not None
            seen.append(await barred(after))  # a lift from step 1 of a bar under the new key
            # u1's cutoff moved with it: forgotten at the time it was barred, not later.
            cutoffs = await after.cutoffs()
            assert isinstance(cutoffs, list)
            seen.append({c.value: c.at for c in cutoffs}["u1"] <= now + 1)
            client = redis_server.client()
            seen.append(len(client.hgetall(f"{prefix}revocations")))
        finally:
            for store in (before, first, second, after):
                await store.close()
        return seen

    with capture_logs() as logs:
        seen = asyncio.run(scenario())
    assert seen == [
        {"u1"},
        {"u1", "u2"},
        {"u1", "u2", "u3"},
        {"u1", "u2", "u3"},
        {"u1", "u3"},
        True,
        2,
    ]
    assert [line for line in logs if line["event"] == "revocations_unreadable"] == []
    assert sum(line["rows"] for line in logs if line["event"] == "revocations_resealed") == 4


def test_sealing_again_never_puts_back_a_bar_lifted_meanwhile(
    redis_server: RedisServer,
) -> None:
    """The seal under the new key is one transaction on what it read (WATCH): a lift by
    another replica between its read and its write leaves the bar lifted."""
    prefix = f"t{secrets.token_hex(4)}:"
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)

    class LiftedMeanwhile(SharedState):
        def _sealed_bar(self, field: str, bar: Bar) -> bytes:
            sealed = super()._sealed_bar(field, bar)
            # Another replica's lift, at the worst moment: after the read, before the write.
            client = redis_server.client()
            client.delete(f"{prefix}revocations")
            return sealed

    async def scenario() -> tuple[set[str], set[str]]:
        before = _store(redis_server, prefix, old)
        sealing = _store(redis_server, prefix, new, previous=old, kind=LiftedMeanwhile)
        after = _store(redis_server, prefix, new)
        try:
            await before.bar(Bar("end_user", "u1", time.time(), "x", "op"), time.time())
            read = await sealing.revocation_state()
            assert isinstance(read, tuple)
            left = await after.revocation_state()
            assert isinstance(left, tuple)
            return {bar.value for bar in read[0]}, {bar.value for bar in left[0]}
        finally:
            for store in (before, sealing, after):
                await store.close()

    with capture_logs() as logs:
        read, left = asyncio.run(scenario())
    assert read == {"u1"}  # what the read found, before the lift
    assert left == set()  # not put back under the new key
    # A transaction that found its tables changed is not a store that is away.
    events = {line["event"] for line in logs}
    assert not events & {"shared_state_unreachable", "revocations_resealed"}, events


def test_a_key_of_another_type_fails_its_own_calls_and_leaves_the_store_up(
    redis_server: RedisServer,
) -> None:
    """WRONGTYPE is one key's problem (another deployment or version on the prefix, or
    someone with the store's password), not the store's: marked down for it, the replica
    fell back to local state for every key, came back 0.2 s later, and went down again at
    the next touch of that key."""
    prefix = f"t{secrets.token_hex(4)}:"
    store = _store(redis_server, prefix, secrets.token_bytes(32))
    client = redis_server.client()
    client.set(store.name("rl", "per_caller", "billing"), "not a bucket")
    client.hset(store.name("tc", "a", "b"), "not", "a sealed token")
    client.hset(f"{prefix}revocations:version", "not", "a number")

    async def scenario() -> list[object]:
        try:
            return [
                await store.take("per_caller", "billing", 10.0, 10),
                await store.take("per_caller", "other", 10.0, 10),
                await store.cached(("a", "b")),
                await store.revocations_version(),
                await store.revocation_state(),
                store.up,
            ]
        finally:
            await store.close()

    with capture_logs() as logs:
        seen = asyncio.run(scenario())
    unavailable = seen[0]
    assert repr(unavailable) == "UNAVAILABLE"
    assert seen[1:] == [None, unavailable, unavailable, ([], []), True]
    events = [line["event"] for line in logs]
    assert "shared_state_unreachable" not in events
    assert events.count("shared_state_wrong_type") == 1  # once a minute, counted


def test_many_bars_are_sealed_again_a_bounded_number_at_a_time(
    redis_server: RedisServer,
) -> None:
    """A reseal moves at most 500 rows in one transaction (its reads and writes stay within
    the store's timeout, which marked the whole store down when a call outlived it); each
    moves the version, so the reads that follow move the rest."""
    prefix = f"t{secrets.token_hex(4)}:"
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)

    async def scenario() -> tuple[list[int], set[str], bool, int]:
        before = _store(redis_server, prefix, old)
        second = _store(redis_server, prefix, new, previous=old)
        after = _store(redis_server, prefix, new)
        try:
            now = time.time()
            for n in range(600):
                await before.bar(Bar("end_user", f"u{n}", now, "x", "op"), now)
            moved = []
            with capture_logs() as logs:
                for _ in range(4):
                    await second.revocation_state()
            moved = [line["rows"] for line in logs if line["event"] == "revocations_resealed"]
            unused = sum(line["event"] == "revocations_previous_key_unused" for line in logs)
            state = await after.revocation_state()
            assert isinstance(state, tuple)
            return moved, {bar.value for bar in state[0]}, second.up, unused
        finally:
            for store in (before, second, after):
                await store.close()

    moved, seen, up, unused = asyncio.run(scenario())
    assert moved == [500, 500, 200]  # 600 bars and their 600 cutoffs
    assert unused == 1  # said once, after the last reseal: step 3 may start
    assert seen == {f"u{n}" for n in range(600)}
    assert up


def test_a_write_back_while_the_key_is_changed_sees_a_lift_made_under_the_other_key(
    redis_server: RedisServer,
) -> None:
    """The write-back's condition looks at the value's cutoff under every key the replica
    reads: a lift made by a replica still on the old key is not written over, and a bar
    written back leaves no other key's row of it behind."""
    prefix = f"t{secrets.token_hex(4)}:"
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    lifted = Bar("end_user", "lifted", time.time(), "compromised", "op")
    lost = Bar("end_user", "lost", time.time(), "compromised", "op")

    async def scenario() -> list[object]:
        before = _store(redis_server, prefix, old)
        second = _store(redis_server, prefix, new, previous=old)
        try:
            assert await before.lift("end_user", "lifted", time.time()) is not None
            written = [await second.restore_unmarked(bar, time.time()) for bar in (lifted, lost)]
            rows = len(redis_server.client().hgetall(f"{prefix}revocations"))
            state = await before.revocation_state()  # a replica on the old key alone
            assert isinstance(state, tuple)
            return [written, rows, [bar.value for bar in state[0]]]
        finally:
            await before.close()
            await second.close()

    # Written under the new key: one row, which the old key cannot open (step 1 reads both).
    assert asyncio.run(scenario()) == [[False, True], 1, []]
