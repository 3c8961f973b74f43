"""Authentication for the HTTP routes: credentials, the caller's web origins, and throttling
of repeated failures from one address (whose log and audit volume stays bounded)."""

from __future__ import annotations

from typing import Any

import structlog
from cachetools import TTLCache
from litestar import Request

from broker.api.errors import ProblemError
from broker.api.middleware import QUIET
from broker.callers import Caller, Unauthenticated
from broker.models import FieldError
from broker.runtime import Runtime, Snapshot

log = structlog.get_logger("broker.auth")
_UNAUTHENTICATED_DETAIL = "a valid client key or caller JWT is required as a Bearer credential"
# Sources already logged as throttled in the last minute: one line each, not one per request.
_logged_throttles: TTLCache[str, bool] = TTLCache(maxsize=10_000, ttl=60)


class AuthRefused(Exception):
    """The request cannot go on; ``audit`` says whether it deserves its own record."""

    def __init__(
        self, problem: ProblemError, reason: str, *, audit: bool, caller: Caller | None = None
    ) -> None:
        super().__init__(problem.code)
        self.problem = problem
        self.reason = reason
        self.audit = audit
        self.caller = caller


def source_address(request: Request[Any, Any, Any]) -> str | None:
    return request.client.host if request.client else None


def _repeated_header(request: Request[Any, Any, Any], names: frozenset[bytes]) -> str | None:
    """The first of ``names`` sent more than once. Which copy a library picks is an accident
    (Litestar keeps the first, a proxy may read the last): refuse the ambiguity instead."""
    seen: set[bytes] = set()
    for name, _ in request.scope["headers"]:
        if name in names:
            if name in seen:
                return name.decode("latin-1")
            seen.add(name)
    return None


async def authenticate(
    request: Request[Any, Any, Any], runtime: Runtime, snapshot: Snapshot
) -> Caller:
    source = source_address(request)
    throttle_key = source or "unknown"
    if (wait := runtime.auth_failures.exhausted(throttle_key)) is not None:
        runtime.metrics.rate_limited.labels(limit="auth_failures").inc()
        # Neither an audit record nor an access line per throttled request: one log line a
        # minute per address says it all, so a flood costs no disk.
        request.scope.setdefault("state", {})[QUIET] = True
        if throttle_key not in _logged_throttles:
            _logged_throttles[throttle_key] = True
            log.warning("auth_failures_throttled", source_address=source)
        raise AuthRefused(
            ProblemError(
                429,
                "too_many_auth_failures",
                "too many failed authentications from this address; retry later",
                headers={"Retry-After": str(max(1, round(wait)))},
            ),
            "throttled",
            audit=False,
        )
    if (repeated := _repeated_header(request, snapshot.single_headers)) is not None:
        runtime.auth_failures.take(throttle_key)
        raise AuthRefused(
            ProblemError(
                400,
                "ambiguous_header",
                "a header that decides who is calling, for whom or how was sent more than once",
                errors=[FieldError(repeated, "must be sent at most once")],
            ),
            "ambiguous_header",
            audit=True,
        )
    try:
        caller = await snapshot.authenticator.authenticate(request.headers, source)
    except Unauthenticated as exc:
        runtime.auth_failures.take(throttle_key)
        raise AuthRefused(
            ProblemError(
                401,
                "unauthenticated",
                _UNAUTHENTICATED_DETAIL,
                headers={"WWW-Authenticate": 'Bearer realm="mka1-token-broker"'},
            ),
            exc.reason,
            audit=True,
        ) from None
    origin = request.headers.get("origin")
    if origin is not None and origin not in caller.origins:
        # The browser would hide the answer, but the request would still have run: refuse it.
        request.scope.setdefault("state", {})["cors_denied"] = True
        raise AuthRefused(
            ProblemError(
                403,
                "origin_not_allowed",
                "this caller may not be used from this web origin",
            ),
            "origin_not_allowed",
            audit=True,
            caller=caller,
        )
    return caller


async def require_caller(request: Request[Any, Any, Any]) -> tuple[Runtime, Caller]:
    """For routes that need the caller and audit nothing themselves: refusals become the
    problem response as they are."""
    runtime: Runtime = request.app.state.runtime
    try:
        return runtime, await authenticate(request, runtime, runtime.snapshot)
    except AuthRefused as refused:
        raise refused.problem from None
