"""Obtaining a token for a Grant (cache, single-flight, exchange), and making sure it is the
token we asked for.

The upstream publishes no key to verify its tokens with, so the broker reads the claims
unverified and checks them against the grant: a token for another audience, another user
or a longer life than granted is discarded, never handed out.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Literal, NamedTuple

import jwt
import msgspec

from broker.audit.records import fingerprint
from broker.cache import CacheKey, SingleFlight, TokenCache
from broker.clock import LAST_NUMERIC_DATE
from broker.metrics import Metrics
from broker.policy import Grant
from broker.shared import CachedToken, SharedState
from broker.upstream import UpstreamClient

CacheResult = Literal["hit", "miss", "joined", "refresh", "bypass", "shared"]

# The upstream's clock and ours may differ a little; beyond this the token is wrong.
CLOCK_SKEW_SECONDS = 60


class _ClaimsRefused(ValueError):
    """A token's claims do not fit its grant; with how far the exchange's clock is ahead of
    this host's, when its exp says."""

    def __init__(self, reason: str, clock_ahead: float | None = None) -> None:
        super().__init__(reason)
        self.clock_ahead = clock_ahead


class TokenMismatch(Exception):
    """The upstream returned a token that is malformed or not what the grant asked for."""

    def __init__(self, reason: str, *, status: int, latency_ms: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.latency_ms = latency_ms


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    sha256: str
    jti: str | None
    issued_at: int | None
    expires_at: int
    permissions: tuple[str, ...] | None
    upstream_status: int
    upstream_latency_ms: float
    # When the exchange that minted it was called (this host's clock): a bar or a lift makes
    # every cache forget the tokens begun before it.
    begun_at: float


# The token id goes on the trail (tokenId) and in the answer. A uuid is 36 characters.
MAX_JTI = 256


def _usable_jti(jti: str) -> bool:
    """Whether the trail can hold ``jti`` as the token's id. JSON's escapes can spell a lone
    surrogate, which no UTF-8 encoder takes: the record failed to encode, and the request
    ended in a 500 without one. A surrogate is not printable, nor is a control character."""
    return 1 <= len(jti) <= MAX_JTI and jti.isprintable()


class _Checked(NamedTuple):
    jti: str | None
    issued_at: int | None
    expires_at: int
    # How far the exchange's clock is ahead of this host's, as the token says (the
    # answer's way back included).
    clock_ahead: float


def _check_claims(grant: Grant, token: str, now: float) -> _Checked:
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        raise _ClaimsRefused("not a JWS compact token") from None
    audience = claims.get("aud")
    if isinstance(audience, list) and len(audience) == 1:
        audience = audience[0]
    if audience != grant.audience:
        raise _ClaimsRefused("aud does not match the grant")
    if claims.get("sub") != grant.external_user_id:
        raise _ClaimsRefused("sub does not match the grant")
    expires_at = claims.get("exp")
    if (
        not isinstance(expires_at, int)
        or isinstance(expires_at, bool)
        or not 0 <= expires_at <= LAST_NUMERIC_DATE
    ):
        raise _ClaimsRefused("exp is missing or not an integer time")
    issued_at = claims.get("iat")
    # Kept only if it can be a time: an iat of 10**30 failed the shared cache's msgpack (a
    # 500), and True is an int to isinstance.
    if type(issued_at) is not int or not 0 <= issued_at <= LAST_NUMERIC_DATE:
        issued_at = None
    # The exchange's time when it issued the token: its iat, else its exp less the lifetime
    # asked for (not as good: an exchange that shortens lifetimes would read as a clock).
    ahead = (expires_at - grant.expires_in if issued_at is None else issued_at) - now
    if expires_at <= now:
        raise _ClaimsRefused("already expired" + _clock_hint(ahead), ahead)
    if expires_at > now + grant.expires_in + CLOCK_SKEW_SECONDS:
        raise _ClaimsRefused("lives longer than granted" + _clock_hint(ahead), ahead)
    if grant.permissions is not None:
        embedded = claims.get("permissions")
        if embedded is None:
            # Per the upstream contract an omitted claim means all of the key's scopes.
            raise _ClaimsRefused("has no permissions claim, so it carries all of the key's scopes")
        if not isinstance(embedded, list) or not all(isinstance(p, str) for p in embedded):
            raise _ClaimsRefused("permissions is not a list of strings")
        if not set(embedded) <= set(grant.permissions):
            raise _ClaimsRefused("carries permissions beyond the grant")
    jti = claims.get("jti")
    if isinstance(jti, str) and not _usable_jti(jti):
        raise _ClaimsRefused(f"jti is not a token id of 1 to {MAX_JTI} printable characters")
    return _Checked(jti if isinstance(jti, str) else None, issued_at, expires_at, ahead)


def _clock_hint(ahead: float) -> str:
    """What the operator most likely has to fix when a token's exp is out of bounds by more
    than the clocks may differ: this host's clock (every mint fails alike until then)."""
    if abs(ahead) <= CLOCK_SKEW_SECONDS:
        return ""
    side = "ahead of" if ahead > 0 else "behind"
    return (
        f": going by the token, the exchange's clock is {abs(ahead):.0f} s {side} this "
        "host's (is this host's clock right?)"
    )


class Minter:
    """Obtain a token for a grant: from the cache, from an identical call already in flight,
    from the shared store (another replica's token), or from the upstream exchange."""

    def __init__(
        self,
        upstream: UpstreamClient,
        cache: TokenCache | None,
        metrics: Metrics,
        shared: SharedState | None = None,
        holder: str = "",
        min_remaining_ratio: float = 0.5,
    ) -> None:
        self._upstream = upstream
        self._cache = cache
        self._metrics = metrics
        self._shared = shared
        self._holder = holder
        self._ratio = min_remaining_ratio
        # By grant and whether the call mints anew (Cache-Control: no-cache).
        self._flight: SingleFlight[tuple[CacheKey, bool], tuple[IssuedToken, CacheResult]] = (
            SingleFlight()
        )

    async def obtain(
        self, grant: Grant, *, use_cache: bool = True, fresh: bool = False
    ) -> tuple[IssuedToken, CacheResult]:
        """The token, and where it came from: ``hit`` (the cache), ``joined`` (another
        request's upstream call), ``shared`` (another replica's token, from the shared
        store), ``miss`` or ``refresh`` (a new mint, kept for others), or ``bypass`` (a new
        mint for a caller whose tokens are not cached)."""
        result: CacheResult
        if self._cache is None or not use_cache:
            result = "bypass"
            token = await self._mint(grant)
        else:
            if (cached := self.cached(grant, use_cache=use_cache, fresh=fresh)) is not None:
                self._metrics.count_lookup("hit")
                return cached, "hit"
            key = CacheKey.for_grant(grant)
            # A request that asks for a new token joins only a call that mints one: a call
            # for any token may end in another replica's from the shared store, the very one
            # the caller may be replacing. Any other request joins either.
            minting = fresh or self._flight.running((key, True))
            (token, source), joined = await self._flight.run(
                (key, minting), lambda: self._fetch_or_mint(grant, key, fresh)
            )
            if joined:
                self._metrics.singleflight_joins.inc()
            result = "joined" if joined else source
        self._metrics.count_lookup(result)
        return token, result

    def cached(
        self, grant: Grant, *, use_cache: bool = True, fresh: bool = False
    ) -> IssuedToken | None:
        """The cached token ``obtain`` would return as a hit, if any; counts nothing."""
        if self._cache is None or not use_cache or fresh:
            return None
        return self._cache.get(CacheKey.for_grant(grant))

    async def _fetch_or_mint(
        self, grant: Grant, key: CacheKey, fresh: bool
    ) -> tuple[IssuedToken, CacheResult]:
        """A local miss: the shared store's token if another replica has one; else a mint,
        by this replica if it takes the lease, or by the leaseholder, waited for (bounded)."""
        assert self._cache is not None
        shared = self._shared
        minted: CacheResult = "refresh" if fresh else "miss"
        if shared is None:
            token = await self._mint(grant)
            self._cache.put(key, token)
            return token, minted
        if not fresh and (found := await self._shared_token(key)) is not None:
            return found, "shared"
        lease = await shared.lease(_shared_key(key), self._holder)
        try:
            if lease is True and not fresh:
                # Taken just as another replica let it go: its token is in the store by then
                # (it stores before it releases), so look once more before minting again.
                if (found := await self._shared_token(key)) is not None:
                    return found, "shared"
            elif lease is False and not fresh:
                # Another replica is minting this very token: wait for it to appear.
                deadline = time.monotonic() + shared.settings.follower_wait_ms / 1000
                while time.monotonic() < deadline and shared.up:
                    await asyncio.sleep(0.01)
                    if (found := await self._shared_token(key)) is not None:
                        return found, "shared"
            token = await self._mint(grant)
            self._cache.put(key, token)
            servable = token.expires_at - key.expires_in * self._ratio - time.time()
            # In the store before the lease goes: a replica that then asks finds the token.
            await shared.keep(_shared_key(key), _to_shared(token), servable)
        finally:
            if lease is True:
                await shared.release(_shared_key(key), self._holder)
        return token, minted

    async def _shared_token(self, key: CacheKey) -> IssuedToken | None:
        assert self._shared is not None
        assert self._cache is not None
        found = await self._shared.cached(_shared_key(key))
        if not isinstance(found, CachedToken):
            return None
        token = IssuedToken(
            token=found.token,
            sha256=found.sha256,
            jti=found.jti,
            issued_at=found.issued_at,
            expires_at=found.expires_at,
            permissions=found.permissions,
            upstream_status=200,
            upstream_latency_ms=0.0,
            begun_at=found.begun_at,
        )
        # Decrypted and authenticated, but checked like any token before it is served, and
        # not served if a bar or a lift since its mint made the caches forget it.
        if token.expires_at - time.time() < key.expires_in * self._ratio or (
            self._cache.forgotten(key, token.begun_at)
        ):
            return None
        self._cache.put(key, token)
        return token

    async def _mint(self, grant: Grant) -> IssuedToken:
        begun_at = time.time()
        exchanged = await self._upstream.exchange(grant)
        try:
            checked = _check_claims(grant, exchanged.token, time.time())
        except _ClaimsRefused as exc:
            if exc.clock_ahead is not None:
                self._metrics.upstream_clock_ahead.set(exc.clock_ahead)
            raise TokenMismatch(
                str(exc), status=exchanged.status, latency_ms=exchanged.latency_ms
            ) from None
        self._metrics.upstream_clock_ahead.set(checked.clock_ahead)
        return IssuedToken(
            token=exchanged.token,
            sha256=fingerprint(exchanged.token),
            jti=checked.jti,
            issued_at=checked.issued_at,
            expires_at=checked.expires_at,
            permissions=grant.permissions,
            upstream_status=exchanged.status,
            upstream_latency_ms=exchanged.latency_ms,
            begun_at=begun_at,
        )


def _shared_key(key: CacheKey) -> tuple[str, ...]:
    # As JSON, the one spelling no other list (or no list: the key's full scope) shares. A
    # permission may hold any printable character but a space: joined with commas, ["a", "b"]
    # and ["a,b"] named one token in the store, and the full scope's "*" was ["*"]'s.
    permissions = _PERMISSIONS_ENCODER.encode(key.permissions).decode()
    return (key.audience, key.external_user_id, permissions, str(key.expires_in))


_PERMISSIONS_ENCODER = msgspec.json.Encoder()


def _to_shared(token: IssuedToken) -> CachedToken:
    return CachedToken(
        token=token.token,
        sha256=token.sha256,
        jti=token.jti,
        issued_at=token.issued_at,
        expires_at=token.expires_at,
        permissions=token.permissions,
        begun_at=token.begun_at,
    )
