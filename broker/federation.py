"""Caller JWTs from identity providers the operator trusts (browsers' IdPs, Kubernetes).

Keys come only from the issuer's configured JWKS URL (or its OpenID discovery document),
never from a token's own ``jku``, ``x5u`` or ``jwk`` headers. The key set is cached; an
unknown ``kid`` refreshes it at most once per ``jwks_min_refresh_seconds``, so a flood of
random ``kid``s cannot turn into a flood of fetches; while the JWKS endpoint is down, the
keys already fetched keep working. Fetches are asynchronous and never block the loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
import msgspec
import structlog

from broker.bodies import BodyTooLarge, read_bounded
from broker.clock import LAST_NUMERIC_DATE
from broker.config import ConfigError, IssuerSettings
from broker.decoding import decode_untrusted
from broker.metrics import Metrics
from broker.regular_files import SECRET_MAX_BYTES, read_small_file
from broker.rules import external_user_id_problem

log = structlog.get_logger("broker.federation")

_FETCH_TIMEOUT = aiohttp.ClientTimeout(total=5)
_MAX_DOCUMENT = 1024 * 1024
# A key set larger than this is not a key set; only the first entries are considered.
_MAX_KEYS = 100
_MIN_RSA_BITS, _MAX_RSA_BITS = 2048, 8192
_MAX_RSA_EXPONENT = 2**256
_JWKS_DECODER = msgspec.json.Decoder(dict[str, Any])


class KeysNotFetched(ValueError):
    """Why an issuer's keys were not fetched, or not used: text of the broker's own, safe to
    log (never a document's, nor a token)."""


class InvalidCallerToken(Exception):
    """The caller JWT is not acceptable; the reason is for logs and audit, not the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}


@dataclass(frozen=True, slots=True)
class _Key:
    """A published key and the only algorithms it may verify: a token whose ``alg`` does not
    fit the key its ``kid`` names is refused before any library sees the pair (RFC 8725
    section 3.1: the key, not the token, decides the algorithm)."""

    jwk: jwt.PyJWK
    algorithms: frozenset[str]
    # The entry as published: a refetch that publishes it unchanged keeps this very _Key, so
    # that what it verified stays verified (VerifiedTokens).
    published: bytes = b""


def _algorithms_for(entry: dict[str, Any]) -> frozenset[str]:
    kty, alg = entry.get("kty"), entry.get("alg")
    if kty == "RSA":
        family = _RSA_ALGORITHMS
    elif kty == "EC" and isinstance(entry.get("crv"), str) and entry["crv"] in _EC_ALGORITHMS:
        family = frozenset({_EC_ALGORITHMS[entry["crv"]]})
    elif kty == "OKP" and entry.get("crv") == "Ed25519":
        family = frozenset({"EdDSA"})
    else:
        # Symmetric ("oct") keys and anything unknown: never a caller-token key.
        return frozenset()
    if alg is None:
        return family
    return frozenset({alg}) & family if isinstance(alg, str) else frozenset()


@dataclass(frozen=True, slots=True)
class VerifiedCaller:
    issuer: IssuerSettings
    subject: str
    claims: dict[str, Any]
    # The token's exp: it is not used after this (no leeway), however it was verified.
    expires_at: float = 0.0
    # The issuer's key that verified it, and where it was published: remembered only while
    # the issuer still publishes that key.
    source: JwksSource | None = None
    key: _Key | None = None


class JwksSource:
    """The signing keys of one issuer."""

    def __init__(
        self,
        settings: IssuerSettings,
        session: Callable[[], aiohttp.ClientSession],
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self._session = session
        self._metrics = metrics
        self._ssl = trust(settings)
        # The origin a bearer token may go to: the configured JWKS URL's, or the issuer's.
        self._token_origin = _origin(settings.jwks_url or settings.issuer)
        self._keys: dict[str, _Key] = {}
        # Until when the last successful fetch is young enough (time.monotonic).
        self._fresh_until = float("-inf")
        # id() of each key held: what publishes() asks on every remembered token, in ~50 ns.
        self._held: frozenset[int] = frozenset()
        self._last_attempt = float("-inf")
        self._refreshing: asyncio.Task[None] | None = None
        self.fetches = 0

    async def key_for(self, kid: str | None) -> _Key | None:
        if time.monotonic() >= self._fresh_until:
            # Stale or never fetched: try, but a failure keeps the keys we have.
            await self._refresh_throttled()
        key = self._pick(kid)
        if key is None:
            # Perhaps the issuer rotated its keys; ask again, but not more than allowed.
            await self._refresh_throttled()
            key = self._pick(kid)
        return key

    def publishes(self, key: _Key) -> bool:
        """Whether ``key`` is among the keys this issuer publishes now. Asked on every use of
        a remembered verification: once the issuer withdraws a key (a rotation after a
        compromise), what it verified is verified again, and refused. A set older than
        ``jwks_cache_seconds`` is fetched again in the background, as ``key_for`` would: a
        broker whose callers all send remembered tokens would otherwise never look."""
        if time.monotonic() >= self._fresh_until:
            self._refresh_in_background()
        # While the key is referenced (by the verification asking), no other object has
        # its id.
        return id(key) in self._held

    def _refresh_in_background(self) -> None:
        if (
            self._refreshing is not None
            or time.monotonic() - self._last_attempt < self.settings.jwks_min_refresh_seconds
        ):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop running: nothing to refresh on
            return
        self._last_attempt = time.monotonic()
        task = self._refreshing = loop.create_task(self._refresh(), name="jwks-refresh")

        def done(finished: asyncio.Task[None]) -> None:
            if self._refreshing is finished:
                self._refreshing = None

        task.add_done_callback(done)

    def _pick(self, kid: str | None) -> _Key | None:
        if kid is not None:
            return self._keys.get(kid)
        # A token without kid is accepted only when the issuer has exactly one key.
        return next(iter(self._keys.values())) if len(self._keys) == 1 else None

    async def _refresh_throttled(self) -> None:
        if self._refreshing is None:
            if time.monotonic() - self._last_attempt < self.settings.jwks_min_refresh_seconds:
                return
            self._last_attempt = time.monotonic()
            self._refreshing = asyncio.create_task(self._refresh())
        task = self._refreshing
        try:
            await asyncio.shield(task)
        finally:
            if task.done():
                self._refreshing = None

    def _headers(self, url: str) -> dict[str, str]:
        path = self.settings.jwks_bearer_token_file
        if path is None or _origin(url) != self._token_origin or not url.startswith("https://"):
            return {}
        try:
            # Re-read each time: projected service account tokens are rotated by the kubelet.
            # Bounded, and never a FIFO: this runs on the event loop.
            token = read_small_file(path, SECRET_MAX_BYTES).decode("ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise KeysNotFetched(
                f"jwks_bearer_token_file unreadable: {type(exc).__name__}"
            ) from None
        return {"Authorization": f"Bearer {token}"} if token else {}

    async def _get_json(self, url: str) -> dict[str, Any]:
        session = self._session()
        async with session.get(
            url,
            timeout=_FETCH_TIMEOUT,
            allow_redirects=False,
            headers=self._headers(url),
            ssl=self._ssl,
        ) as reply:
            if reply.status != 200:
                raise KeysNotFetched(f"HTTP {reply.status}")
            try:
                body = await read_bounded(reply, _MAX_DOCUMENT)
            except BodyTooLarge:
                raise KeysNotFetched("document too large") from None
        # Malformed, not UTF-8 or nested too deeply: msgspec.DecodeError, a ValueError.
        return decode_untrusted(_JWKS_DECODER, body)

    async def _jwks_url(self) -> str:
        if self.settings.jwks_url is not None:
            return self.settings.jwks_url
        discovery = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = await self._get_json(discovery)
        if document.get("issuer") != self.settings.issuer:
            raise KeysNotFetched("discovery document names another issuer")
        url = document.get("jwks_uri")
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise KeysNotFetched("discovery document has no jwks_uri")
        if self.settings.issuer.startswith("https://") and not url.startswith("https://"):
            # The keys that verify every caller token, fetched in clear: whoever is on the
            # way could replace them and sign any caller. An https issuer's own document
            # cannot ask for that.
            raise KeysNotFetched("discovery document's jwks_uri is not https, for an https issuer")
        return url

    async def _refresh(self) -> None:
        self.fetches += 1
        self._metrics.jwks_fetches.labels(issuer=self.settings.id).inc()
        try:
            document = await self._get_json(await self._jwks_url())
            keys = self._parse(document)
        except (aiohttp.ClientError, TimeoutError, ValueError, msgspec.DecodeError) as exc:
            self._metrics.jwks_fetch_failures.labels(issuer=self.settings.id).inc()
            log.warning(
                "jwks_fetch_failed",
                issuer=self.settings.id,
                error=type(exc).__name__,
                reason=str(exc) if isinstance(exc, KeysNotFetched) else None,
                kept_keys=len(self._keys),
            )
            return
        held = self._keys
        self._keys = {
            kid: old
            if (old := held.get(kid)) is not None and old.published == key.published
            else key
            for kid, key in keys.items()
        }
        self._held = frozenset(map(id, self._keys.values()))
        self._fresh_until = time.monotonic() + self.settings.jwks_cache_seconds

    def _parse(self, document: dict[str, Any]) -> dict[str, _Key]:
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise KeysNotFetched("no keys array")
        keys: dict[str, _Key] = {}
        for entry in entries[:_MAX_KEYS]:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            algorithms = _algorithms_for(entry) & frozenset(self.settings.algorithms)
            if not algorithms:
                continue
            try:
                key = jwt.PyJWK(entry)
            except Exception:  # noqa: S112 - a hostile JWKS entry is skipped, whatever it raises
                continue
            if entry.get("kty") == "RSA" and not _rsa_bounded(key.key):
                # Too weak to trust, or so large that each verification is a CPU sink.
                continue
            kid = entry.get("kid")
            published = msgspec.json.encode(entry) + b"|" + ",".join(sorted(algorithms)).encode()
            keys[kid if isinstance(kid, str) else f"#{len(keys)}"] = _Key(
                key, algorithms, published
            )
        return keys


def _rsa_bounded(key: object) -> bool:
    """A modulus of 2048 to 8192 bits, and a public exponent below 2**256 (NIST SP 800-56B's
    bound): a 2048-bit exponent made each verification of a forged token cost 1.7 ms, 20
    times that of 65537, for whoever sends one with the key's kid."""
    size = getattr(key, "key_size", None)
    if not isinstance(size, int) or not _MIN_RSA_BITS <= size <= _MAX_RSA_BITS:
        return False
    numbers = getattr(key, "public_numbers", None)
    return numbers is not None and numbers().e < _MAX_RSA_EXPONENT


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def trust(settings: IssuerSettings) -> ssl.SSLContext | bool:
    """The TLS trust for this issuer's fetches: its own CA bundle, or the system's."""
    if settings.jwks_ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=settings.jwks_ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"issuers[{settings.id}].jwks_ca_file: cannot load {settings.jwks_ca_file}: "
            f"{getattr(exc, 'strerror', None) or type(exc).__name__}"
        ) from None


# Verified caller tokens remembered (a browser sends the same one on every request).
VERIFIED_CACHE_SIZE = 10_000


class VerifiedTokens:
    """Caller tokens that verified, by their SHA-256, each until its own ``exp``; at most
    ``max_entries``, the oldest forgotten first (it is verified again if it comes back).

    A dict in insertion order rather than cachetools' TLRUCache: its lookup cost 1.5-2 us
    (a timer context and the bookkeeping of an expiry order), half of what a cached JWT
    caller's authentication cost beyond a client key's (bench/notes.md). An expired entry is
    dropped when it is looked up or when it is the oldest, so memory stays bounded either
    way."""

    def __init__(self, max_entries: int) -> None:
        self._max_entries = max_entries
        self._entries: dict[bytes, VerifiedCaller] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, digest: bytes) -> VerifiedCaller | None:
        found = self._entries.get(digest)
        if found is None:
            return None
        if found.expires_at <= time.time() or (
            found.source is not None
            and found.key is not None
            and not found.source.publishes(found.key)
        ):
            # No leeway: not used after its exp; and not once its key is withdrawn.
            del self._entries[digest]
            return None
        return found

    def keep(self, digest: bytes, verified: VerifiedCaller) -> None:
        entries = self._entries
        entries.pop(digest, None)
        while len(entries) >= self._max_entries:
            del entries[next(iter(entries))]
        entries[digest] = verified


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class CallerTokenVerifier:
    """Verify a caller JWT against the trusted issuer its ``iss`` names.

    A token that verified is remembered by its SHA-256 until its own ``exp``, so repeated
    requests with it skip the signature (a bounded cache: a flood of distinct tokens can
    only evict, never grow memory; only tokens that verified get in). A new verifier, with
    an empty cache, is built at every config reload."""

    def __init__(self, sources: dict[str, JwksSource]) -> None:
        # Keyed by the exact iss value.
        self._sources = sources
        self._verified = VerifiedTokens(VERIFIED_CACHE_SIZE)

    def __bool__(self) -> bool:
        return bool(self._sources)

    def known(self, token: str) -> VerifiedCaller | None:
        """The token's verification, if it verified before and has not expired since."""
        return self._verified.get(_digest(token))

    async def verify(self, token: str) -> VerifiedCaller:
        digest = _digest(token)
        if (known := self._verified.get(digest)) is not None:
            return known
        verified = await self._verify(token)
        self._verified.keep(digest, verified)
        return verified

    async def _verify(self, token: str) -> VerifiedCaller:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except Exception:  # whatever a hostile token makes the parser raise
            raise InvalidCallerToken("malformed_jwt") from None
        issuer = unverified.get("iss")
        source = self._sources.get(issuer) if isinstance(issuer, str) else None
        if source is None:
            raise InvalidCallerToken("untrusted_issuer")
        settings = source.settings
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in settings.algorithms:
            raise InvalidCallerToken("algorithm_not_allowed")
        if "crit" in header:
            raise InvalidCallerToken("critical_header_unsupported")
        kid = header.get("kid")
        key = await source.key_for(kid if isinstance(kid, str) else None)
        if key is None:
            raise InvalidCallerToken("unknown_kid")
        if algorithm not in key.algorithms:
            raise InvalidCallerToken("algorithm_does_not_fit_key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.jwk.key,
                algorithms=[algorithm],
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway_seconds,
                options={"require": ["exp", "iat", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidCallerToken("expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidCallerToken("not_yet_valid") from None
        except jwt.InvalidAudienceError:
            raise InvalidCallerToken("wrong_audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidCallerToken("wrong_issuer") from None
        except jwt.InvalidSignatureError:
            raise InvalidCallerToken("bad_signature") from None
        except (jwt.InvalidTokenError, jwt.PyJWKError):
            raise InvalidCallerToken("invalid_jwt") from None
        except Exception:  # a library error on hostile input is a refusal, not a 500
            raise InvalidCallerToken("invalid_jwt") from None
        for name in _TIME_CLAIMS:
            if name in claims and not _is_numeric_date(claims[name]):
                raise InvalidCallerToken("invalid_time_claim")
        subject = claims.get(settings.subject_claim)
        if not isinstance(subject, str) or external_user_id_problem(subject) is not None:
            raise InvalidCallerToken("unusable_subject")
        return VerifiedCaller(
            settings, subject, claims, expires_at=float(claims["exp"]), source=source, key=key
        )


# RFC 7519 4.1.4-6: JSON numbers of seconds. PyJWT takes whatever int() takes ("1796229276"
# as a string), and an exp of 10**400 verified, then failed float() as an OverflowError.
_TIME_CLAIMS = ("exp", "nbf", "iat")


def _is_numeric_date(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and 0 <= value <= LAST_NUMERIC_DATE
    )
