"""The guard of the privileged routes (``GET /audit/events``, ``/admin/revocations``): the
caller must hold the route's role and stay within its ``per_caller`` rate, and a request
refused here is on the audit trail (who tried, how, from where, why) as a ``RouteDecision``.

A flood cannot push the trail past bounds, as on the token route: an unknown caller's
refusals are recorded within the deployment's ``unauthenticated_records`` budget (the token
route's budget, whose count of what it held back goes into the next record written), a
throttled address's not at all (one log line a minute says it), and a known caller's once
a second per route, with the repeats in between counted into its next record. A record that
cannot be written does not change the answer: nothing is at stake but the refusal itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Any

import structlog
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException

from broker.api.auth import CALLER_STATE, Credentials, authenticate, check_origin
from broker.api.errors import ProblemError, from_refusal
from broker.api.routes import PRIVILEGED
from broker.audit.records import RouteDecision
from broker.audit.writer import AuditUnavailable
from broker.callers import Caller
from broker.clock import now_rfc3339_millis
from broker.models import STORE_BEHIND
from broker.refusals import STATUS_OF, Refusal, bars_unread, internal_error, revoked
from broker.runtime import Runtime

log = structlog.get_logger("broker.privileged")

# How long a privileged answer waits for this replica's records to reach the audit store.
CATCH_UP_SECONDS = 1.0


async def store_caught_up(runtime: Runtime) -> dict[str, str]:
    """Wait, at most ``CATCH_UP_SECONDS``, for the audit store to hold every record this
    replica has written so far; the header that says how many it still lacked (none
    without a store). Read-your-writes for an auditor's page, and for an admin's change,
    whose record is what brings a bar back if the shared store loses it: a store that lags
    or is away costs this wait at most, and the answer says what it could not wait for."""
    shipper = runtime.shipper
    if shipper is None:
        return {}
    written = runtime.audit.seq
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(CATCH_UP_SECONDS):
            await shipper.shipped(written)
    return {STORE_BEHIND: str(max(0, written - shipper.own_shipped))}


async def record_refusal(
    runtime: Runtime,
    route: str,
    request_id: str,
    source: str | None,
    caller: Caller | None,
    refusal: Refusal,
) -> None:
    """Put a refused request to ``route`` ("GET /audit/events") on the trail, within the
    bounds above; return once it is durable, or once it is known lost."""
    if refusal.quiet:
        # A throttled address: no record of its own, but counted on the trail.
        runtime.anonymous_records.count()
        return
    if caller is None:
        budget = runtime.anonymous_records
        if not budget.admit():
            return
        unrecorded = budget.take_unrecorded()
    else:
        # By method and id: a client and a JWT caller may share an id.
        admitted, unrecorded = runtime.route_refusals.admit(
            (caller.method, caller.id, route), request_id
        )
        if not admitted:
            return
    decision = RouteDecision(
        time=now_rfc3339_millis(),
        request_id=request_id,
        outcome=refusal.outcome,
        code=refusal.code,
        status=STATUS_OF[refusal.code],
        caller=caller.id if caller is not None else None,
        auth_method=caller.method if caller is not None else None,
        source_address=source,
        reason=refusal.reason,
        unrecorded_before=unrecorded,
        route=route,
    )
    try:
        await runtime.audit.append(decision)
    except AuditUnavailable:
        log.error("audit_record_lost", outcome=decision.outcome, code=decision.code, route=route)


def _spend(runtime: Runtime, caller: Caller, route: str) -> None:
    """Every request a role lets through spends from the caller's ``per_caller`` bucket (on
    this replica; a key of its own, apart from the caller's token requests): each read of
    the trail and each bar writes a durable record, and a leaked auditor key must not be
    able to grow the trail without bound."""
    buckets = runtime.caller_limits
    if buckets is None:
        return
    wait = buckets.take(f"privileged\x00{caller.method}:{caller.id}")
    if wait is not None:
        raise Refusal(
            "rate_limited",
            f"too many requests to {route} for this caller; retry later",
            outcome="denied",
            retry_after=max(1, math.ceil(wait)),
            reason="per_caller",
        )


def _check_bars(runtime: Runtime, caller: Caller) -> None:
    """A barred caller is refused here too: a leaked auditor key went on reading the trail
    (every end user's id in it) after its bar, and a leaked admin key lifted its own."""
    revocations = runtime.revocations
    if not revocations.known:
        raise bars_unread()
    if (bar := revocations.barred_caller(caller.id)) is not None:
        raise revoked("this caller is barred", bar.by, bar.reason)


async def record_fault(exc: Exception, scope: Any) -> None:
    """Litestar's ``after_exception`` hook: a fault of the broker's own (a 500) on a
    privileged route that its guard let through is on the trail, as one on the token route
    is, so that the trail accounts for every request to them. The answers the routes mean
    to give (problem documents, Litestar's own 4xx) are not faults."""
    if isinstance(exc, ProblemError | HTTPException) or scope.get("path") not in PRIVILEGED:
        return
    state = scope.get("state", {})
    caller: Caller | None = state.get(CALLER_STATE)
    if caller is None:
        # Refused by the guard (and recorded there), or failed before it ran.
        return
    runtime: Runtime = scope["app"].state.runtime
    fault = internal_error(exc)
    client = scope.get("client")
    route = f"{scope.get('method', '?')} {scope['path']}"
    try:
        await record_refusal(
            runtime,
            route,
            state.get("request_id", ""),
            client[0] if client else None,
            caller,
            fault,
        )
    except Exception as failed:
        # The 500 is still answered as a problem document; only its record is lost.
        log.error(
            "audit_record_lost", code="internal_error", route=route, error=type(failed).__name__
        )


def privileged(path: str, role: str, code: str, detail: str) -> Any:
    """The guard of a route at ``path`` that needs ``role``; ``code`` and ``detail`` say so
    to a caller without it. The caller is then the ``caller`` dependency."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: Any) -> None:
        runtime: Runtime = connection.app.state.runtime
        state = connection.scope.setdefault("state", {})
        # HTTP routes only: a scope without a method is none of these.
        route = f"{connection.scope.get('method', '?')} {path}"
        credentials = Credentials.of(connection)
        caller: Caller | None = None
        try:
            caller = await authenticate(credentials, runtime, runtime.snapshot)
            check_origin(connection.headers, caller, state)
            if role not in caller.roles:
                raise Refusal(code, detail, outcome="denied", reason=f"no {role} role")
            _check_bars(runtime, caller)
            _spend(runtime, caller, route)
        except Refusal as refusal:
            request_id = state.get("request_id", "")
            await record_refusal(runtime, route, request_id, credentials.source, caller, refusal)
            raise from_refusal(refusal) from None
        state[CALLER_STATE] = caller

    return guard
