"""Shared state in Valkey or Redis: what makes replicas act as one.

- **Rate limits**: token buckets held in the store, each check one Lua script (atomic, the
  store's own clock).
- **Token cache**: a replica that misses locally looks in the store before minting.
  Values are AES-GCM encrypted and bound to their name; names are HMACs, so neither users
  nor audiences nor tokens are readable in the store.
- **Single-flight across replicas**: a lease (SET NX PX) lets one replica mint while the
  others wait for its token to appear in the store (bounded), then mint themselves.
- **Revocations**: bars on a caller, an end user or an audience, read by every replica.

The store is never waited on for longer than ``timeout_ms`` per call, and never silently
trusted to be there: a failed or slow call marks it down, every call then answers
``UNAVAILABLE`` at once (the caller falls back to local state, loudly), and a prober brings
it back when it answers again.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import msgspec
import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.config import SharedStateSettings
from broker.metrics import Metrics
from broker.observability import EveryInterval
from broker.rules import MAX_EXPIRES_IN
from broker.secrets import Secret

log = structlog.get_logger("broker.shared")

T = TypeVar("T")


class _Unavailable:
    """The store did not answer (the type of UNAVAILABLE)."""

    def __repr__(self) -> str:
        return "UNAVAILABLE"


UNAVAILABLE: Final = _Unavailable()


class _Full:
    """The store holds as many cutoffs as it may (the type of FULL)."""

    def __repr__(self) -> str:
        return "FULL"


FULL = _Full()
# Values with a cutoff at once (each barred or lifted in the last 30 days): every replica
# reads them all, on the event loop, whenever the bars change (about 1 us each), so a
# change that would add one past this is refused.
MAX_CUTOFFS = 20_000
# Rows sealed again under a new key in one transaction (a key being changed).
_RESEAL_ROWS = 500


class _Turn:
    """Told to a request waiting in line for a bucket: the tokens fetched ran out before it,
    so it fetches next."""


YOUR_TURN: Final = _Turn()
# What a request waiting in line is told, once.
_Told = asyncio.Future[float | _Unavailable | _Turn | None]


def _tell(told: _Told, what: float | _Unavailable | _Turn | None) -> bool:
    """Tell a waiter, unless it stopped waiting (cancelled): whether it was told."""
    if told.done():
        return False
    told.set_result(what)
    return True


# A token bucket: the store's clock, fractional tokens kept as strings (Lua numbers that go
# back to the store as integers would lose the fraction). Takes up to ARGV[3] tokens at once
# (a replica's reserve) and returns how many it got and, when none, the wait in seconds.
# A lease is released only by its holder: a mint that outlived its lease must not free the
# lease another replica has taken since.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# A bar written back from the audit trail, unless its value has a cutoff in the store: then a
# bar or a lift was made since the store lost its data (or another replica wrote it back).
# ARGV[4] on: the value's fields under the other encryption keys a replica reads (a key being
# changed), looked at and cleared as its own.
_RESTORE_UNMARKED = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  return 0
end
for i = 4, #ARGV do
  if redis.call('HEXISTS', KEYS[2], ARGV[i]) == 1 then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
for i = 4, #ARGV do
  redis.call('HDEL', KEYS[1], ARGV[i])
end
redis.call('INCR', KEYS[3])
return 1
"""

_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local granted = math.min(want, math.floor(tokens))
local wait = 0
if granted < 1 then
  granted = 0
  wait = (1 - tokens) / rate
else
  tokens = tokens - granted
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),
  'at', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {granted, string.format('%.6f', wait)}
"""
# A replica spends its reserve for at most this long; what is left then is given up (the
# bucket refills anyway), so a reserve never outlives the moment it was taken for.
RESERVE_SECONDS = 1.0
# Each replica reserves at most this share of a limit at once: the pair's error is bounded
# by it (and at low rates a reserve is one token, one call per request, exact).
RESERVE_SHARE = 0.05
_MAX_RESERVES = 100_000


def _cancelled_meanwhile() -> None:
    """Raise CancelledError if this task was cancelled during a call to the store. redis-py
    (8.1) returns the answer of a command whose task was cancelled meanwhile about one time
    in four, swallowing the cancellation: the loop that follows the bars, stopped by
    cancelling it, read on for ever, and the broker's shutdown hung until it was killed."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("latin-1")


def _derive(key: bytes, purpose: bytes) -> bytes:
    return hmac.new(key, b"mka1-token-broker/shared-state/" + purpose, hashlib.sha256).digest()


class _Key:
    """What one encryption key makes: the HMAC key of the store's names and the AEAD of its
    values."""

    def __init__(self, key: bytes) -> None:
        self.names = _derive(key, b"names")
        self.aead = AESGCM(_derive(key, b"values"))

    def digest(self, *parts: str) -> str:
        """An HMAC of ``parts``: what a store name says of what it is about."""
        return hmac.new(self.names, "\x00".join(parts).encode(), hashlib.sha256).hexdigest()[:40]

    def open(self, name: str, sealed: bytes) -> bytes | None:
        if len(sealed) < 28:
            return None
        try:
            return self.aead.decrypt(sealed[:12], sealed[12:], name.encode())
        except InvalidTag:
            return None


class _Revocation(msgspec.Struct, frozen=True):
    kind: str
    value: str
    since: float
    reason: str
    by: str


class _Cutoff(msgspec.Struct, frozen=True, array_like=True):
    kind: str
    value: str
    at: float


SealedRow = TypeVar("SealedRow", _Revocation, _Cutoff)


class CachedToken(msgspec.Struct, frozen=True, array_like=True):
    token: str
    sha256: str
    jti: str | None
    issued_at: int | None
    expires_at: int
    permissions: tuple[str, ...] | None
    # Absent from a token an older broker kept: read as begun before any bar or lift.
    begun_at: float = 0.0


@dataclass(frozen=True)
class Cutoff:
    """Tokens for ``value`` (an end user or an audience) begun before ``at`` are forgotten."""

    kind: str
    value: str
    at: float


@dataclass(frozen=True)
class Bar:
    """A revocation as replicas apply it."""

    kind: str
    value: str
    since: float
    reason: str
    by: str


class SharedState:
    def __init__(
        self,
        settings: SharedStateSettings,
        url: Secret,
        encryption_key: bytes,
        metrics: Metrics,
        *,
        previous_key: bytes | None = None,
        next_key: bytes | None = None,
    ) -> None:
        self.settings = settings
        self._timeout = settings.timeout_ms / 1000
        self._prefix = settings.key_prefix
        self._revocations = f"{settings.key_prefix}revocations"
        self._cutoffs = f"{settings.key_prefix}revocations:cutoffs"
        self._key = _Key(encryption_key)
        # A key being changed (README): the bars and cutoffs sealed under the previous key or
        # the next are read too, and each change to a value's clears its fields under them.
        # Those under the previous key are sealed again under this one (_reseal_previous);
        # those under the next never are: the replicas that already write with it do that.
        self._previous = _Key(previous_key) if previous_key is not None else None
        self._previous_unused = False
        self._others = [
            key for key in (self._previous, _Key(next_key) if next_key else None) if key
        ]
        self._metrics = metrics
        # Imported here: redis costs every broker start ~60 ms, and only a broker with
        # [shared_state] uses it.
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError, ResponseError

        # What a call to the store may raise when the store is away or slow.
        self._failures: tuple[type[BaseException], ...] = (RedisError, TimeoutError, OSError)
        self._refused: type[BaseException] = ResponseError
        pool = aioredis.BlockingConnectionPool.from_url(
            url.reveal(),
            max_connections=settings.pool_size,
            timeout=self._timeout,
            socket_timeout=self._timeout,
            socket_connect_timeout=max(self._timeout, 0.05),
        )
        self._redis = aioredis.Redis(connection_pool=pool)
        self._take = self._redis.register_script(_TAKE)
        self._release = self._redis.register_script(_RELEASE)
        self._restore_unmarked = self._redis.register_script(_RESTORE_UNMARKED)
        # Rate-limit reserves: store name -> (tokens left, monotonic time they lapse).
        self._reserves: dict[str, tuple[int, float]] = {}
        # The requests waiting in line for a bucket while one of theirs fetches from the
        # store: the name is here from the first fetch until the line is empty.
        self._waiting: dict[str, collections.deque[_Told]] = {}
        self.max_cutoffs = MAX_CUTOFFS
        self.up = True
        self.last_error: str | None = None
        self._prober: asyncio.Task[None] | None = None
        self._warn = EveryInterval(60.0)
        metrics.shared_state_up.set(1)

    # --- calls, bounded -------------------------------------------------------------------

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T | _Unavailable:
        """One call to the store, or UNAVAILABLE: at once while the store is down, else
        within ``timeout_ms``."""
        if not self.up:
            return UNAVAILABLE
        answer: T | _Unavailable
        try:
            async with asyncio.timeout(self._timeout):
                answer = await call()
        except self._failures as exc:
            # The store's own words (never a key's value: names are HMACs), first line only.
            said = str(exc).splitlines()[0][:200] if str(exc) else ""
            if isinstance(exc, self._refused) and "WRONGTYPE" in str(exc):
                # One key of another type (another deployment or version on this prefix,
                # or someone with the store's password): this call cannot be answered, the
                # store can. Marked down for it, the replica fell back to local state for
                # every key and came back 0.2 s later, again and again, at each touch.
                if (count := self._warn.due("wrong_type")) is not None:
                    # Not the store's words: in a pipeline they quote the call's values.
                    log.error(
                        "shared_state_wrong_type",
                        error="WRONGTYPE: a key under key_prefix holds another type of value",
                        events=count,
                    )
            else:
                self._down(f"{type(exc).__name__}: {said}" if said else type(exc).__name__)
            answer = UNAVAILABLE
        _cancelled_meanwhile()
        return answer

    def _malformed(self, what: str) -> _Unavailable:
        """An answer no broker's store gives: said, and taken as the store being away."""
        self._down(f"a malformed answer for {what}")
        return UNAVAILABLE

    def _down(self, error: str) -> None:
        if self.up:
            self.up = False
            self._metrics.shared_state_up.set(0)
            self._prober = asyncio.get_running_loop().create_task(
                self._probe(), name="shared-state-prober"
            )
        self.last_error = error
        if (count := self._warn.due("down")) is not None:
            log.warning(
                "shared_state_unreachable",
                error=error,
                fallback=f"local state, limits / {self.settings.replicas}",
                events=count,
            )

    async def _probe(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            try:
                async with asyncio.timeout(max(self._timeout, 0.2)):
                    await self._redis.ping()
            except self._failures:
                _cancelled_meanwhile()
                continue
            except Exception as exc:
                # Not one of the store's failures: a fault, said (once a minute). It ended
                # the prober, and the replica stayed on local state for good, its bars no
                # longer read.
                _cancelled_meanwhile()
                self._warn.fault("probe_fault", log, "shared_state_probe_failed", exc)
                continue
            _cancelled_meanwhile()
            self.up = True
            self.last_error = None
            self._metrics.shared_state_up.set(1)
            log.info("shared_state_recovered")
            return

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        await self._redis.aclose()

    # --- names ----------------------------------------------------------------------------

    def name(self, kind: str, *parts: str) -> str:
        """A store key: the kind, then an HMAC of what it is about (nothing readable)."""
        return f"{self._prefix}{kind}:{self._key.digest(*parts)}"

    def _seal(self, name: str, plaintext: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._key.aead.encrypt(nonce, plaintext, name.encode())

    def _open(self, name: str, sealed: bytes) -> bytes | None:
        return self._key.open(name, sealed)

    # --- rate limits ----------------------------------------------------------------------

    async def take(
        self, limit: str, key: str, rate: float, burst: int
    ) -> float | _Unavailable | None:
        """Spend one token of the deployment-wide bucket: None if allowed, else the wait in
        seconds; UNAVAILABLE if the store cannot say.

        High limits would cost a store call per request; instead a replica takes a reserve
        of up to ``RESERVE_SHARE`` of the limit / replicas at once and spends it locally for
        up to ``RESERVE_SECONDS``."""
        name = self.name("rl", limit, key)
        if self._has_reserve(name, time.monotonic()):
            self.spend_reserve(name)
            return None
        queue = self._waiting.get(name)
        if queue is None:
            queue = self._waiting[name] = collections.deque()
        else:
            # Another request here is fetching this bucket: one fetch a replica at a time.
            # Each concurrent fetch used to take its own reserve and overwrite the last: 25
            # cold requests drained 25 reserves from the store and kept one, so a burst of
            # identical requests was refused far below its limit (seen in a test: 429 at
            # request 490 of 500, the limit 100,000/s).
            told = await self._wait_turn(name, queue)
            if not isinstance(told, _Turn):
                return told
        try:
            answer, granted = await self._fetch_reserve(name, rate, burst, waiting=len(queue))
        except BaseException:
            self._pass_turn(name, queue)
            raise
        self._hand_out(name, queue, answer, granted)
        return answer

    async def _wait_turn(
        self, name: str, queue: collections.deque[_Told]
    ) -> float | _Unavailable | _Turn | None:
        """Wait in line behind the fetch under way, to be told once: a token of it (None),
        its refusal or the store's absence, or the turn to fetch."""
        told: _Told = asyncio.get_running_loop().create_future()
        queue.append(told)
        try:
            return await told
        except asyncio.CancelledError:
            if told.done() and not told.cancelled() and isinstance(told.result(), _Turn):
                self._pass_turn(name, queue)  # or the rest of the line would wait for ever
            raise

    def _hand_out(
        self,
        name: str,
        queue: collections.deque[_Told],
        answer: float | _Unavailable | None,
        granted: int,
    ) -> None:
        """Tell the line what a fetch brought. A refusal, or the store away, is every
        waiter's answer as it was the fetcher's. Tokens go one each, in arrival order (the
        fetcher kept one); what is left over is this replica's reserve, and whoever is left
        without a token takes the next turn. Each waiter is woken once: the line used to
        wake whole after every fetch, so a burst of N cost about N * N / reserve wake-ups
        (1,000 requests at a reserve of one token: 2.4 s of the loop, bench/notes.md)."""
        if answer is not None:
            while queue:
                _tell(queue.popleft(), answer)
            del self._waiting[name]
            return
        spare = granted - 1
        while queue and spare:
            if _tell(queue.popleft(), None):
                spare -= 1
        if spare:
            now = time.monotonic()
            if len(self._reserves) >= _MAX_RESERVES:
                self._reserves = {n: r for n, r in self._reserves.items() if r[1] > now}
            self._reserves[name] = (spare, now + RESERVE_SECONDS)
        self._pass_turn(name, queue)

    def _pass_turn(self, name: str, queue: collections.deque[_Told]) -> None:
        """Give the turn to fetch to the first waiter still waiting, or end the line."""
        while queue:
            if _tell(queue.popleft(), YOUR_TURN):
                return
        del self._waiting[name]

    async def _fetch_reserve(
        self, name: str, rate: float, burst: int, *, waiting: int
    ) -> tuple[float | _Unavailable | None, int]:
        """One store call: a token for this request, one for each request ``waiting`` in
        line behind it, and up to a reserve's worth more (see ``take``). Returns the answer
        and how many tokens the store granted. The waiters' tokens are spent at once, so
        asking for them adds nothing to the error that a reserve held here may cause."""
        reserve = max(1, int(min(burst, rate) * RESERVE_SHARE / self.settings.replicas))
        want = reserve + waiting
        answer = await self._call(lambda: self._take(keys=[name], args=[rate, burst, want]))
        if isinstance(answer, _Unavailable):
            return answer, 0
        try:
            granted, wait = int(answer[0]), float(_as_bytes(answer[1]))
        except (TypeError, ValueError, IndexError, KeyError, AttributeError):
            granted, wait = 0, math.nan
        if not math.isfinite(wait) or wait < 0:
            # Not the script's answer (it returns a count and a wait in seconds): the store
            # is not to be trusted with this limit now, and the limit falls back to local.
            return self._malformed("a rate limit"), 0
        if granted < 1:
            return max(wait, 0.001), 0
        return None, granted

    def reserve_name(self, limit: str, key: str) -> str | None:
        """The reserve ``take`` would spend from right now, without a store call: its name
        (for ``spend_reserve``), or None if ``take`` would have to ask the store."""
        name = self.name("rl", limit, key)
        return name if self._has_reserve(name, time.monotonic()) else None

    def spend_reserve(self, name: str) -> None:
        """Spend one token of a reserve that ``_has_reserve`` just found."""
        tokens, until = self._reserves[name]
        self._reserves[name] = (tokens - 1, until)

    def _has_reserve(self, name: str, now: float) -> bool:
        """Whether this replica holds a token of ``name``'s reserve that has not lapsed."""
        reserve = self._reserves.get(name)
        return reserve is not None and reserve[0] >= 1 and reserve[1] > now

    # --- token cache and single-flight ----------------------------------------------------

    async def cached(self, key: tuple[Any, ...]) -> CachedToken | _Unavailable | None:
        name = self.name("tc", *map(str, key))
        sealed = await self._call(lambda: self._redis.get(name))
        if isinstance(sealed, _Unavailable) or sealed is None:
            return sealed
        opened = self._open(name, _as_bytes(sealed))
        if opened is None:
            return None
        try:
            return msgspec.msgpack.decode(opened, type=CachedToken)
        except msgspec.DecodeError:
            return None

    async def keep(self, key: tuple[Any, ...], token: CachedToken, ttl_seconds: float) -> None:
        if ttl_seconds < 1:
            return
        name = self.name("tc", *map(str, key))
        sealed = self._seal(name, msgspec.msgpack.encode(token))
        await self._call(lambda: self._redis.set(name, sealed, px=int(ttl_seconds * 1000)))

    async def lease(self, key: tuple[Any, ...], holder: str) -> bool | _Unavailable:
        """True if this replica may mint for ``key`` now (no other holds the lease)."""
        name = self.name("lease", *map(str, key))
        answer = await self._call(
            lambda: self._redis.set(name, holder, nx=True, px=self.settings.lease_ms)
        )
        return answer if isinstance(answer, _Unavailable) else bool(answer)

    async def release(self, key: tuple[Any, ...], holder: str) -> None:
        """Give the lease up, if ``holder`` still has it."""
        name = self.name("lease", *map(str, key))
        await self._call(lambda: self._release(keys=[name], args=[holder]))

    # --- revocations ----------------------------------------------------------------------

    def _revocation_field(self, kind: str, value: str, key: _Key | None = None) -> str:
        return (key or self._key).digest(kind, value)

    def _other_fields(self, kind: str, value: str) -> list[str]:
        """The value's fields under the other keys read while a key is changed."""
        return [self._revocation_field(kind, value, key) for key in self._others]

    def _sealed_bar(self, field: str, bar: Bar) -> bytes:
        body = _Revocation(bar.kind, bar.value, bar.since, bar.reason, bar.by)
        return self._seal(f"{self._revocations}/{field}", msgspec.msgpack.encode(body))

    def _sealed_cutoff(self, field: str, cutoff: Cutoff) -> bytes:
        body = _Cutoff(cutoff.kind, cutoff.value, cutoff.at)
        return self._seal(f"{self._cutoffs}/{field}", msgspec.msgpack.encode(body))

    async def bar(self, bar: Bar, cutoff: float) -> float | _Full | None:
        """Store a bar (or replace it), and make every replica forget the tokens for its
        value begun before the cutoff; the cutoff stored, FULL (``max_cutoffs``), or None
        if the store is away."""
        field = self._revocation_field(bar.kind, bar.value)
        sealed = self._sealed_bar(field, bar)

        def change(pipe: Any) -> None:
            pipe.hset(self._revocations, field, sealed)
            if others := self._other_fields(bar.kind, bar.value):
                pipe.hdel(self._revocations, *others)

        return await self._change_revocations(change, bar.kind, bar.value, cutoff)

    async def lift(
        self, kind: str, value: str, cutoff: float, *, standing: bool = False
    ) -> float | _Full | None:
        """Remove a bar, and make every replica forget the tokens for its value begun before
        the cutoff (those cached while it stood, a mint in flight across it); the cutoff
        stored, FULL (``max_cutoffs``, unless the caller knows the bar is ``standing``: a
        mistaken bar can always be lifted), or None if the store is away."""
        fields = [self._revocation_field(kind, value), *self._other_fields(kind, value)]
        return await self._change_revocations(
            lambda pipe: pipe.hdel(self._revocations, *fields),
            kind,
            value,
            cutoff,
            bounded=not standing,
        )

    async def restore_unmarked(self, bar: Bar, cutoff: float) -> bool | None:
        """Write ``bar`` back, with ``cutoff``, unless its value has a cutoff in the store (a
        bar or a lift made since the store lost its data, or another replica's write-back):
        whether it was written, or None if the store is away."""
        field = self._revocation_field(bar.kind, bar.value)
        sealed_bar = self._sealed_bar(field, bar)
        sealed_cutoff = self._sealed_cutoff(field, Cutoff(bar.kind, bar.value, cutoff))
        answer = await self._call(
            lambda: self._restore_unmarked(
                keys=[self._revocations, self._cutoffs, f"{self._revocations}:version"],
                args=[field, sealed_bar, sealed_cutoff, *self._other_fields(bar.kind, bar.value)],
            )
        )
        if isinstance(answer, _Unavailable):
            return None
        return bool(answer == 1)

    async def _change_revocations(
        self,
        change: Callable[[Any], object],
        kind: str,
        value: str,
        cutoff: float,
        *,
        bounded: bool = True,
    ) -> float | _Full | None:
        """One change to the bars, its cutoff and a new version, atomically (replicas re-read
        the bars and cutoffs when the version moves); the cutoff stored, FULL if it would be
        a new value's past ``max_cutoffs``, or None if the store is away.

        A value's cutoff only ever moves forward, even from a replica whose clock is behind
        the one that wrote the last: a bar that is gone from the store with its cutoff where
        it was when the bar was read was not lifted (``Revocations`` puts it back). A cutoff
        outlives its bar (replicas that never saw the bar still forget), until no token it
        could hold back can still be served; those older go in the same change."""
        held = await self.cutoffs()
        if isinstance(held, _Unavailable):
            return None
        before = [old.at for old in held if (old.kind, old.value) == (kind, value)]
        cutoff = max([cutoff] + [at + 0.001 for at in before])
        field = self._revocation_field(kind, value)
        sealed = self._sealed_cutoff(field, Cutoff(kind, value, cutoff))
        outlived = [old for old in held if old.at < cutoff - MAX_EXPIRES_IN]
        if bounded and not before and len(held) - len(outlived) >= self.max_cutoffs:
            return FULL
        stale = [
            stale_field
            for old in outlived
            for stale_field in (
                self._revocation_field(old.kind, old.value),
                *self._other_fields(old.kind, old.value),
            )
        ]

        async def write() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                change(pipe)
                if stale:
                    pipe.hdel(self._cutoffs, *stale)
                pipe.hset(self._cutoffs, field, sealed)
                if others := self._other_fields(kind, value):
                    pipe.hdel(self._cutoffs, *others)
                pipe.incr(f"{self._revocations}:version")
                await pipe.execute()

        return None if isinstance(await self._call(write), _Unavailable) else cutoff

    async def revocations_version(self) -> int | _Unavailable | None:
        answer = await self._call(lambda: self._redis.get(f"{self._revocations}:version"))
        if isinstance(answer, _Unavailable) or answer is None:
            return answer
        try:
            return int(answer)
        except (TypeError, ValueError):
            return self._malformed("the revocations' version")

    async def revocation_state(self) -> tuple[list[Bar], list[Cutoff]] | _Unavailable:
        """The bars and the cutoffs as one moment left them (one transaction). Read one
        after the other, a lift made elsewhere in between left the bar read and its lift's
        cutoff beside it, and the reader then took the bar's absence for a loss and put the
        lifted bar back."""

        async def read() -> list[Any]:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hgetall(self._revocations)
                pipe.hgetall(self._cutoffs)
                answers: list[Any] = await pipe.execute()
                return answers

        answer = await self._call(read)
        if isinstance(answer, _Unavailable):
            return answer
        bars = self._opened(self._revocations, _Revocation, answer[0])
        if (unopened := len(answer[0]) - len(bars)) and self._warn.due("unreadable") is not None:
            # A bar this replica cannot open is one it cannot apply: say so, loudly. Written
            # with another encryption_key (changed without an audit store to write the bars
            # back from, or without previous_key: README), or not by a broker at all.
            log.error(
                "revocations_unreadable",
                bars=unopened,
                detail="bars in the shared store that this replica's encryption key does not "
                "open are not applied",
            )
        cutoffs = self._opened(self._cutoffs, _Cutoff, answer[1])
        if self._previous is not None:
            if any(key is self._previous for _, key, _ in (*bars, *cutoffs)):
                await self._reseal_previous(bars, cutoffs, answer[0], answer[1])
            elif not self._previous_unused:
                # What the operator waits for before the last step of a key change: once
                # every replica has said it, nothing is sealed under the previous key.
                self._previous_unused = True
                log.info("revocations_previous_key_unused")
        # One bar a value: under two keys (written by replicas a key change had not reached
        # yet) both bar it.
        by_value = {
            (bar.kind, bar.value): bar
            for bar, key, _ in sorted(bars, key=lambda found: found[1] is self._key)
        }
        return (
            [Bar(bar.kind, bar.value, bar.since, bar.reason, bar.by) for bar in by_value.values()],
            self._latest(cutoffs),
        )

    async def cutoffs(self) -> list[Cutoff] | _Unavailable:
        """Every cutoff in the store: (kind, value, time) tokens begun before are forgotten."""
        answer = await self._call(lambda: self._redis.hgetall(self._cutoffs))
        if isinstance(answer, _Unavailable):
            return answer
        return self._latest(self._opened(self._cutoffs, _Cutoff, answer))

    @staticmethod
    def _latest(cutoffs: list[tuple[_Cutoff, _Key, str]]) -> list[Cutoff]:
        """A cutoff a value, the latest of those it has under each key; none that is not a
        time."""
        latest: dict[tuple[str, str], float] = {}
        for cutoff, _, _ in cutoffs:
            if math.isfinite(cutoff.at):
                key = (cutoff.kind, cutoff.value)
                latest[key] = max(cutoff.at, latest.get(key, cutoff.at))
        return [Cutoff(kind, value, at) for (kind, value), at in latest.items()]

    async def _reseal_previous(
        self,
        bars: list[tuple[_Revocation, _Key, str]],
        cutoffs: list[tuple[_Cutoff, _Key, str]],
        sealed_bars: dict[Any, Any],
        sealed_cutoffs: dict[Any, Any],
    ) -> None:
        """Seal what this read found under the previous key again under this one, at most
        ``_RESEAL_ROWS`` rows at a time (the rest at the next read: each reseal moves the
        version, so every replica reads again). One transaction, which stands only if every
        row it moves, and every other cutoff of their values, is still as read (WATCH, then
        each compared): a lift made meanwhile by another replica is never undone by putting
        its bar back. Bounded by the read: the tables are not read again whole."""
        from redis.exceptions import WatchError

        previous = self._previous
        moves: list[tuple[str, str, str, bytes, bool]] = []  # table, old field, new, sealed, nx
        for bar, key, field in bars:
            if key is previous and len(moves) < _RESEAL_ROWS:
                own = self._revocation_field(bar.kind, bar.value)
                row = Bar(bar.kind, bar.value, bar.since, bar.reason, bar.by)
                # A bar the value has under this key already is the later one.
                moves.append((self._revocations, field, own, self._sealed_bar(own, row), True))
        fields_of: dict[tuple[str, str], list[str]] = {}
        for cutoff, _, field in cutoffs:
            fields_of.setdefault((cutoff.kind, cutoff.value), []).append(field)
        latest = {(c.kind, c.value): c for c in self._latest(cutoffs)}
        # What each field the transaction depends on held when read (None: absent).
        checked = {(self._revocations, old): sealed_bars.get(old.encode()) for _, old, *_ in moves}
        for cutoff, key, field in cutoffs:
            value = (cutoff.kind, cutoff.value)
            if key is not previous or len(moves) >= _RESEAL_ROWS:
                continue
            own = self._revocation_field(*value)
            kept = latest.get(value)
            # One that is no time is dropped: sealed again, it would be passed over again.
            sealed = self._sealed_cutoff(own, kept) if kept is not None else b""
            moves.append((self._cutoffs, field, own, sealed, False))
            checked.update(
                {
                    (self._cutoffs, other): sealed_cutoffs.get(other.encode())
                    for other in fields_of[value]
                }
            )
        if not moves:
            return
        version = f"{self._revocations}:version"

        async def reseal() -> int:
            async with self._redis.pipeline(transaction=True) as pipe:
                await pipe.watch(self._revocations, self._cutoffs)
                for table in (self._revocations, self._cutoffs):
                    names = [field for (where, field) in checked if where == table]
                    if not names:
                        continue
                    now = await pipe.hmget(table, names)
                    read = [checked[(table, field)] for field in names]
                    if [_as_bytes(v) if v is not None else None for v in now] != read:
                        return 0  # changed since the read: the next read tries again
                pipe.multi()  # type: ignore[no-untyped-call]
                for table, old, own, sealed, only_if_none in moves:
                    if sealed and only_if_none:
                        pipe.hsetnx(table, own, sealed)
                    elif sealed:
                        pipe.hset(table, own, sealed)
                    pipe.hdel(table, old)
                pipe.incr(version)
                try:
                    await pipe.execute()
                except WatchError:
                    # Changed meanwhile: not a store that is away (_call would say so).
                    return 0
                return len(moves)

        moved = await self._call(reseal)
        if isinstance(moved, int) and moved:
            log.info("revocations_resealed", rows=moved)

    def _opened(
        self, table: str, kind: type[SealedRow], answer: Any
    ) -> list[tuple[SealedRow, _Key, str]]:
        """Every row of a hash of sealed values that opens under a key this replica reads
        and decodes as ``kind``, with that key and its field; the rest were not written by a
        broker with these keys, and are passed over."""
        rows = []
        keys = (self._key, *self._others)
        for field, sealed in answer.items():
            # A field that is not UTF-8 was not written by a broker; its seal cannot open.
            name = field.decode(errors="replace") if isinstance(field, bytes) else str(field)
            for key in keys:
                opened = key.open(f"{table}/{name}", _as_bytes(sealed))
                if opened is None:
                    continue
                with contextlib.suppress(msgspec.DecodeError):
                    rows.append((msgspec.msgpack.decode(opened, type=kind), key, name))
                break
        return rows
