"""Authentication for the HTTP routes: credentials, the caller's web origins, and throttling
of repeated failures from one address (whose log and audit volume stays bounded).

Refusals are ``Refusal``s: the token route records them through the token service, the
privileged routes through their guard (``api/privileged.py``); ``GET /tokens/policy``
answers them as they are.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import msgspec
import structlog
from cachetools import TTLCache
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.di import Provide

from broker import refusals
from broker.api.errors import from_refusal
from broker.callers import Caller, Unauthenticated
from broker.forwarded import peer_of
from broker.ratelimit import address_key
from broker.refusals import Refusal
from broker.runtime import Runtime, Snapshot

log = structlog.get_logger("broker.auth")
_UNAUTHENTICATED_DETAIL = "a valid client key or caller JWT is required as a Bearer credential"
# RFC 6750 section 3: no error code when no credential came, invalid_token when one did. The
# same for every reason a presented one failed: which check refused it is not the caller's
# to learn.
_INVALID_TOKEN = {"WWW-Authenticate": 'Bearer realm="mka1-token-broker", error="invalid_token"'}
# Sources already logged as throttled in the last minute: one line each, not one per request.
_logged_throttles: TTLCache[str, bool] = TTLCache(maxsize=10_000, ttl=60)
CORS_DENIED = "cors_denied"


def source_address(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    return connection.client.host if connection.client else None


class Credentials(msgspec.Struct, frozen=True):
    """What authentication reads from a request: its headers (lower-case names; the first
    of each), the raw header list (to find repeats), the client's address (a trusted
    proxy's word for it: what failures are throttled by) and the connection's own peer (what
    a proxy caller's network is checked against)."""

    headers: Mapping[str, str]
    raw_headers: Sequence[tuple[bytes, bytes]]
    source: str | None
    peer: str | None

    @classmethod
    def of(cls, connection: ASGIConnection[Any, Any, Any, Any]) -> Credentials:
        return cls(
            connection.headers,
            list(connection.scope["headers"]),
            source_address(connection),
            peer_of(connection.scope),
        )


def repeated_header(
    raw_headers: Iterable[tuple[bytes, bytes]], names: frozenset[bytes]
) -> str | None:
    """The first of ``names`` sent more than once. Which copy a library picks is an accident
    (Litestar keeps the first, a proxy may read the last): refuse the ambiguity instead."""
    seen: set[bytes] = set()
    for name, _ in raw_headers:
        if name in names:
            if name in seen:
                return name.decode("latin-1")
            seen.add(name)
    return None


async def authenticate(credentials: Credentials, runtime: Runtime, snapshot: Snapshot) -> Caller:
    """The caller, or a Refusal. A throttled address's refusal is ``quiet``: no record, no
    access line, one log line a minute."""
    source = credentials.source
    throttle_key = address_key(source)
    if (wait := runtime.auth_failures.exhausted(throttle_key)) is not None:
        # A credential that is known at no cost (a client key's digest, a caller JWT already
        # verified, a trusted proxy's user) still gets in: the throttle bounds what guessing
        # costs, and must not let one guesser lock out everyone who shares its address (a
        # NAT, a load balancer not configured as a trusted proxy). Everything else, the
        # signature checks a throttled address would cost included, is refused unread.
        if repeated_header(credentials.raw_headers, snapshot.single_headers) is None:
            known = snapshot.authenticator.authenticate_now(credentials.headers, credentials.peer)
            if known is not None:
                return known
        runtime.metrics.count_limited("auth_failures")
        if throttle_key not in _logged_throttles:
            _logged_throttles[throttle_key] = True
            log.warning("auth_failures_throttled", source_address=source)
        refusal = Refusal(
            "too_many_auth_failures",
            "too many failed authentications from this address; retry later",
            outcome="denied",
            retry_after=max(1, round(wait)),
            reason="throttled",
        )
        refusal.quiet = True
        raise refusal
    repeated = repeated_header(credentials.raw_headers, snapshot.single_headers)
    if repeated is not None:
        runtime.auth_failures.take(throttle_key)
        raise refusals.ambiguous_header(repeated)
    try:
        return await snapshot.authenticator.authenticate(credentials.headers, credentials.peer)
    except Unauthenticated as exc:
        runtime.auth_failures.take(throttle_key)
        raise Refusal(
            "unauthenticated",
            _UNAUTHENTICATED_DETAIL,
            outcome="denied",
            reason=exc.reason,
            headers=dict(_INVALID_TOKEN) if exc.bearer_rejected else None,
        ) from None


def check_origin(headers: Mapping[str, str], caller: Caller, state: dict[str, Any]) -> None:
    """A request from a web origin not on the caller's list is refused: the browser would
    hide the answer, but the request would still have run."""
    origin = headers.get("origin")
    if origin is not None and origin not in caller.origins:
        state[CORS_DENIED] = True
        raise Refusal(
            "origin_not_allowed",
            "this caller may not be used from this web origin",
            outcome="denied",
            reason="origin_not_allowed",
        )


CALLER_STATE = "authenticated_caller"


async def requires_caller(connection: ASGIConnection[Any, Any, Any, Any], _: Any) -> None:
    """A guard for routes that need the caller and audit nothing themselves: refusals become
    the problem response as they are; the caller is then a dependency (``provide_caller``)."""
    runtime: Runtime = connection.app.state.runtime
    try:
        caller = await authenticate(Credentials.of(connection), runtime, runtime.snapshot)
        check_origin(connection.headers, caller, connection.scope.setdefault("state", {}))
    except Refusal as refusal:
        raise from_refusal(refusal) from None
    connection.scope["state"][CALLER_STATE] = caller


def provide_caller(request: Request[Any, Any, Any]) -> Caller:
    caller: Caller = request.scope["state"][CALLER_STATE]
    return caller


def provide_runtime(request: Request[Any, Any, Any]) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


# The dependencies every route may declare: the runtime and the authenticated caller.
DEPENDENCIES = {
    "runtime": Provide(provide_runtime, sync_to_thread=False),
    "caller": Provide(provide_caller, sync_to_thread=False),
}
