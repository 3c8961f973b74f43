"""The token service: what ``POST /tokens`` does, without HTTP.

Given an authenticated caller, the request body and the request's facts, it decides, rate
limits, obtains (cache, single-flight, exchange, claim check) and records, and returns the
issued token or raises one ``Refusal``. It owns the audit record of every outcome and the
fail-closed rule: a token is returned only once its record is durable. The HTTP layer reads
the request, authenticates, calls in, and translates the answer; nothing here imports
Litestar, so the whole use case runs in-process in unit tests with a real writer.

Every ``Attempt`` ends in exactly one audit record, except where a flood is counted instead
(a rate limit refusing the same key again within a second, unauthenticated refusals over
``unauthenticated_records``): a flood must not cost a durable write per request.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
import structlog

from broker.audit.records import WITHHELD_CODE, WITHHELD_REASON, AuditEvent, Outcome
from broker.audit.writer import AuditUnavailable, AuditWriter
from broker.callers import Caller
from broker.clock import now_rfc3339_millis, rfc3339
from broker.metrics import Metrics
from broker.minting import CacheResult, IssuedToken, Minter, TokenMismatch
from broker.models import FieldError, InvalidRequest, TokenRequest, decode_token_request
from broker.policy import Denied, Grant, decide
from broker.ratelimit import RecordBudget, RepeatBudget, TokenBuckets
from broker.refusals import Refusal, bars_unread, internal_error, revoked, shutting_down
from broker.revocations import Revocations
from broker.rules import EXTERNAL_USER_ID_RULE, external_user_id_problem
from broker.shared import Bar, SharedState, _Unavailable
from broker.upstream import UpstreamFailure

log = structlog.get_logger("broker.service")

# Share of a token's life after which a client should come back for a new one.
REFRESH_RATIO = 0.8

_UPSTREAM = {
    "rejected": ("upstream_rejected", "the MKA1 exchange rejected the request"),
    "credentials": (
        "upstream_credentials",
        "the broker's own MKA1 credentials were refused; operators have been told",
    ),
    "ip_denied": (
        "upstream_ip_denied",
        "the MKA1 organisation's inbound IP rules refuse the broker's address; "
        "operators have been told",
    ),
    "refused": (
        "upstream_refused",
        "the MKA1 exchange refused the request; operators have been told",
    ),
    "redirected": (
        "upstream_redirected",
        "the MKA1 exchange answered with a redirect, which the broker never follows; "
        "operators have been told",
    ),
    "rate_limited": (
        "upstream_rate_limited",
        "the MKA1 exchange is rate limiting the broker; retry later",
    ),
    "server_error": ("upstream_error", "the MKA1 exchange failed"),
    "unreachable": ("upstream_unreachable", "the MKA1 exchange could not be reached"),
    "malformed": (
        "upstream_malformed_response",
        "the MKA1 exchange answered with a malformed response",
    ),
    "timeout": ("upstream_timeout", "the MKA1 exchange did not answer in time"),
    "circuit_open": (
        "upstream_circuit_open",
        "the MKA1 exchange keeps failing; the broker is not calling it for a while",
    ),
    "pool_exhausted": (
        "upstream_busy",
        "every connection to the MKA1 exchange is busy; retry shortly",
    ),
}
_RETRY_KINDS = frozenset({"rate_limited", "circuit_open", "pool_exhausted"})


class RequestFacts(msgspec.Struct, frozen=True):
    """What the transport knows about a request that the use case needs."""

    request_id: str
    source: str | None
    # Cache-Control: no-cache: mint anew rather than reuse.
    fresh: bool = False
    # X-On-Behalf-Of, the MKA1 convention for naming the end user.
    on_behalf_of: str | None = None


@dataclass(slots=True)
class Attempt:
    """One request, as far as it got: what its audit record will say."""

    facts: RequestFacts
    caller: Caller | None = None
    body: TokenRequest | None = None
    grant: Grant | None = None
    upstream_status: int | None = None
    upstream_latency_ms: float | None = None


class Issued(msgspec.Struct, frozen=True):
    token: IssuedToken
    grant: Grant
    cache: CacheResult
    # Seconds left, and when to come back, from the token's own exp.
    expires_in: int
    refresh_at: str


@dataclass
class SharedLimit:
    """A limit held for the deployment in the shared store, and the local bucket at
    limit / N that stands in for it while the store is away."""

    name: str
    rate: float
    burst: int
    fallback: TokenBuckets


@dataclass
class Limits:
    caller: TokenBuckets | None
    end_user: TokenBuckets | None
    unauthenticated_records: RecordBudget
    shared: SharedState | None = None
    shared_caller: SharedLimit | None = None
    shared_end_user: SharedLimit | None = None
    # A rate-limited key's refusals: one on the record a second, the rest counted into its
    # next record (``unrecordedBefore``), as the privileged routes' repeats are.
    limited_records: RepeatBudget = field(
        default_factory=lambda: RepeatBudget(interval_seconds=1.0, max_keys=100_000)
    )


def _event(
    attempt: Attempt,
    outcome: Outcome,
    code: str,
    status: int,
    *,
    issued: IssuedToken | None = None,
    cache: str | None = None,
    reason: str | None = None,
    shared_state: str | None = None,
) -> AuditEvent:
    body, grant, caller = attempt.body, attempt.grant, attempt.caller
    requested = body.expires_in if body and body.expires_in is not msgspec.UNSET else None
    subject = grant.external_user_id if grant else None
    if subject is None and body and body.external_user_id is not msgspec.UNSET:
        subject = body.external_user_id
    permissions = None
    if grant and grant.permissions is not None:
        permissions = list(grant.permissions)
    elif body and body.permissions is not msgspec.UNSET:
        permissions = sorted(body.permissions)
    return AuditEvent(
        time=now_rfc3339_millis(),
        request_id=attempt.facts.request_id,
        outcome=outcome,
        code=code,
        status=status,
        caller=caller.id if caller else None,
        auth_method=caller.method if caller else None,
        source_address=attempt.facts.source,
        external_user_id=subject,
        audience=grant.audience if grant else (body.audience if body else None),
        permissions=permissions,
        requested_expires_in=requested,
        granted_expires_in=grant.expires_in if grant and issued else None,
        expires_at=rfc3339(issued.expires_at) if issued else None,
        upstream_status=attempt.upstream_status,
        upstream_latency_ms=attempt.upstream_latency_ms,
        token_sha256=issued.sha256 if issued else None,
        token_id=issued.jti if issued else None,
        cache=cache,
        reason=reason,
        shared_state=shared_state,
    )


def _end_user(body: TokenRequest, header: str | None) -> str | None:
    """Reconcile ``externalUserId`` with ``X-On-Behalf-Of``; both must agree."""
    from_body = body.external_user_id if body.external_user_id is not msgspec.UNSET else None
    if header is None:
        return from_body
    if (problem := external_user_id_problem(header)) is not None:
        raise InvalidRequest([FieldError("X-On-Behalf-Of", f"{EXTERNAL_USER_ID_RULE} ({problem})")])
    if from_body is not None and from_body != header:
        raise InvalidRequest(
            [
                FieldError(
                    "X-On-Behalf-Of",
                    "differs from externalUserId; send one, or the same value in both",
                )
            ],
            code="conflicting_external_user_id",
        )
    return header


def _revoked(bar: Bar) -> Refusal:
    return revoked(
        f"token issuance is barred for this {bar.kind.replace('_', ' ')}", bar.by, bar.reason
    )


def _nothing() -> None:
    pass


def _caller_key(caller: Caller) -> str:
    return f"{caller.method}:{caller.id}"


def _end_user_key(caller: Caller, grant: Grant) -> str:
    return f"{caller.method}:{caller.id}\x00{grant.external_user_id}"


class TokenService:
    def __init__(
        self,
        minting: Minter,
        audit: AuditWriter,
        limits: Limits,
        metrics: Metrics,
        status_of: dict[str, int],
        revocations: Revocations | None = None,
    ) -> None:
        self._revocations = revocations or Revocations(None, None)
        self._minting = minting
        self._audit = audit
        self._limits = limits
        self._metrics = metrics
        # The HTTP status each code will be answered with, for the record (api/errors.py).
        self._status_of = status_of

    def _degraded(self) -> str | None:
        """What the record says of the shared store: "unavailable" while it is away."""
        store = self._limits.shared
        return "unavailable" if store is not None and not store.up else None

    # --- refusals --------------------------------------------------------------------

    async def _record(
        self, attempt: Attempt, refusal: Refusal, unrecorded_before: int | None = None
    ) -> Refusal:
        """Record a refusal. It stands even if the record fails: no token is at stake.
        ``unrecorded_before``: refusals like it that were only counted, since its last."""
        event = _event(
            attempt,
            refusal.outcome,
            refusal.code,
            self._status_of[refusal.code],
            reason=refusal.reason,
            shared_state=self._degraded(),
        )
        if attempt.caller is None:
            event.unrecorded_before = self._limits.unauthenticated_records.take_unrecorded()
        else:
            event.unrecorded_before = unrecorded_before
        try:
            await self._audit.append(event)
        except AuditUnavailable:
            log.error("audit_record_lost", outcome=event.outcome, code=event.code)
        self._metrics.count_token(refusal.outcome, refusal.code, "none")
        return refusal

    async def refuse(self, attempt: Attempt, refusal: Refusal) -> Refusal:
        """The refusal, recorded; for a caller not known at all, within the deployment's
        budget for such records (the rest is counted into the next record written)."""
        if attempt.caller is None and not self._limits.unauthenticated_records.admit():
            refusal.quiet = True
            self._metrics.count_token(refusal.outcome, refusal.code, "none")
            return refusal
        return await self._record(attempt, refusal)

    def refuse_throttled(self, refusal: Refusal) -> Refusal:
        """A throttled address's refusal: no record of its own and one log line a minute,
        but a count on the trail (``unauthenticated``), so that every refusal is accounted."""
        self._limits.unauthenticated_records.count()
        return self.refuse_unrecorded(refusal)

    def refuse_unrecorded(self, refusal: Refusal) -> Refusal:
        """A refusal whose count is kept elsewhere for the trail, not recorded itself."""
        refusal.quiet = True
        self._metrics.count_token(refusal.outcome, refusal.code, "none")
        return refusal

    async def interrupted(self, attempt: Attempt) -> Refusal:
        """The server stopped before this request finished (the shutdown grace ran out)."""
        return await self._record(attempt, shutting_down("shutdown_grace_expired"))

    async def _shared_wait(self, store: SharedState, shared: SharedLimit, key: str) -> float | None:
        """From the deployment-wide bucket, or its local stand-in while the store does not
        answer: None if a token was spent, else how long until one is back."""
        wait = await store.take(shared.name, key, shared.rate, shared.burst)
        if not isinstance(wait, _Unavailable):
            return wait
        self._metrics.child(self._metrics.shared_state_fallbacks, "rate_limit").inc()
        return shared.fallback.take(key)

    async def _limited(
        self,
        attempt: Attempt,
        buckets: TokenBuckets | None,
        key: str,
        name: str,
        whom: str,
        shared: SharedLimit | None = None,
    ) -> None:
        store = self._limits.shared
        # Without a shared store the check stays synchronous: no coroutine on the hot path.
        if store is not None and shared is not None:
            wait = await self._shared_wait(store, shared, key)
        else:
            wait = buckets.take(key) if buckets is not None else None
        if wait is None:
            return
        self._metrics.count_limited(name)
        refusal = Refusal(
            "rate_limited",
            f"too many token requests for {whom}; retry later",
            outcome="denied",
            retry_after=max(1, math.ceil(wait)),
        )
        recorded, unrecorded = self._limits.limited_records.admit(
            (name, key), attempt.facts.request_id
        )
        if not recorded:
            # The first refusal of a key each second is on the record; the rest are counted
            # into its next one.
            raise self.refuse_unrecorded(refusal)
        raise await self._record(attempt, refusal, unrecorded)

    # --- the use case ----------------------------------------------------------------

    async def admit(self, attempt: Attempt, caller: Caller) -> None:
        """Every request of a known caller spends from its bucket, refused ones included,
        so that neither denials nor malformed bodies can flood the audit log."""
        attempt.caller = caller
        await self._limited(
            attempt,
            self._limits.caller,
            _caller_key(caller),
            "per_caller",
            "this caller",
            self._limits.shared_caller,
        )

    def _grant(self, attempt: Attempt, raw: bytes) -> Grant:
        """Decode the body and decide: the grant, or raise the Refusal to record. Nothing is
        spent or recorded here (``issue_now`` relies on that)."""
        caller = attempt.caller
        assert caller is not None, "admit() first"
        try:
            attempt.body = body = decode_token_request(raw)
            end_user = _end_user(body, attempt.facts.on_behalf_of)
        except InvalidRequest as invalid:
            raise Refusal(
                invalid.code, "the request is invalid", outcome="rejected", errors=invalid.errors
            ) from None
        try:
            attempt.grant = grant = decide(
                caller.policy,
                caller.subject,
                audience=body.audience,
                external_user_id=end_user,
                expires_in=body.expires_in if body.expires_in is not msgspec.UNSET else None,
                permissions=body.permissions if body.permissions is not msgspec.UNSET else None,
            )
        except Denied as denied:
            raise Refusal(
                denied.code,
                "the request is outside this caller's policy",
                outcome="denied",
                errors=[FieldError(denied.field, denied.message)],
            ) from None
        revocations = self._revocations
        if not revocations.known:
            raise bars_unread()
        if (
            bar := revocations.barred(caller.id, grant.external_user_id, grant.audience)
        ) is not None:
            raise _revoked(bar)
        return grant

    async def issue(self, attempt: Attempt, raw: bytes) -> Issued:
        """Decode, decide, limit, obtain, record; raise a recorded Refusal on any failure,
        a fault of the broker's own included: no token leaves, and the trail still holds
        the request (``internal_error``), as it holds every other that got none."""
        try:
            issued, grant, cache = await self._issue(attempt, raw)
        except Refusal:
            raise
        except Exception as exc:
            raise await self.fault(attempt, exc) from None
        return self._issued(issued, grant, cache)

    async def fault(self, attempt: Attempt, exc: Exception) -> Refusal:
        """A fault of the broker's own (a bug), wherever the request was: logged with its
        traceback, and on the trail like any other request that got no token
        (``internal_error``; an unknown caller's within the unauthenticated budget)."""
        log.error("unhandled_exception", error_type=type(exc).__name__, exc_info=exc)
        return await self.refuse(attempt, internal_error(exc))

    async def _issue(self, attempt: Attempt, raw: bytes) -> tuple[IssuedToken, Grant, CacheResult]:
        """Up to the issued record, durable: after it, nothing is left that could fail."""
        caller = attempt.caller
        assert caller is not None, "admit() first"
        try:
            grant = self._grant(attempt, raw)
        except Refusal as refusal:
            raise await self._record(attempt, refusal) from None
        # Keyed by caller and end user: one caller exhausting an end user's bucket must not
        # lock that user out of every other caller (their own browser session included).
        await self._limited(
            attempt,
            self._limits.end_user,
            _end_user_key(caller, grant),
            "per_end_user",
            "this end user from this caller",
            self._limits.shared_end_user,
        )
        issued, cache = await self._obtain(attempt, caller, grant)
        if (
            bar := self._revocations.barred(caller.id, grant.external_user_id, grant.audience)
        ) is not None:
            # Made while the token was being obtained (an exchange, a lease to wait out or
            # another request's call to join can take seconds): a stolen key's request in
            # flight got a token after its bar. Not handed out, as if the bar came first.
            raise await self._record(attempt, _revoked(bar)) from None
        try:
            await self._audit.append(self._issued_event(attempt, issued, cache))
        except AuditUnavailable as exc:
            raise self._withheld(attempt, issued, cache, may_land=exc.queued) from None
        return issued, grant, cache

    def issue_now(
        self, attempt: Attempt, raw: bytes, done: Callable[[Issued | Refusal], None]
    ) -> bool:
        """The common case, a cache hit that every check allows, without a coroutine: the
        record is handed to the writer and ``done`` is told the outcome once it is durable
        (an ``Issued``, or the ``Refusal`` of a withheld token). Returns False, having spent
        and recorded nothing, for anything else (a check that would refuse, a miss, a
        shared limit whose reserve is spent): the caller then runs ``admit`` and ``issue``,
        which decide it all again. So this path can only ever agree with them; it just
        skips their awaits (bench/RESULTS.md)."""
        limits = self._limits
        caller = attempt.caller
        if caller is None:
            return False
        spend_caller = self._spender(limits.caller, limits.shared_caller, _caller_key(caller))
        if spend_caller is None:
            return False
        try:
            grant = self._grant(attempt, raw)
        except Refusal:
            return False
        spend_end_user = self._spender(
            limits.end_user, limits.shared_end_user, _end_user_key(caller, grant)
        )
        if spend_end_user is None:
            return False
        token = self._minting.cached(grant, use_cache=caller.cache, fresh=attempt.facts.fresh)
        if token is None:
            return False
        # Allowed, as admit() and issue() would find: spend as they would. Nothing awaits in
        # between, so the buckets and reserves are as they were just read.
        spend_caller()
        spend_end_user()
        self._metrics.count_lookup("hit")

        def durable(ok: bool | None) -> None:
            if ok:
                done(self._issued(token, grant, "hit"))
                return
            # Told from the writer's task: the request's own context is not bound there.
            with structlog.contextvars.bound_contextvars(
                request_id=attempt.facts.request_id, caller=caller.id
            ):
                done(self._withheld(attempt, token, "hit", may_land=ok is False))

        self._audit.submit(self._issued_event(attempt, token, "hit"), durable)
        return True

    def _spender(
        self, buckets: TokenBuckets | None, shared: SharedLimit | None, key: str
    ) -> Callable[[], object] | None:
        """How to spend one token of a limit as ``_limited`` would, if that takes no await
        and would be allowed now (a local bucket, or this replica's reserve of a shared
        one); None otherwise, having spent nothing."""
        store = self._limits.shared
        if store is not None and shared is not None:
            name = store.reserve_name(shared.name, key)
            return None if name is None else functools.partial(store.spend_reserve, name)
        if buckets is None:
            return _nothing
        if buckets.exhausted(key) is not None:
            return None
        return functools.partial(buckets.take, key)

    def _issued_event(
        self, attempt: Attempt, issued: IssuedToken, cache: CacheResult
    ) -> AuditEvent:
        return _event(
            attempt,
            "issued",
            "issued",
            200,
            issued=issued,
            cache=cache,
            shared_state=self._degraded(),
        )

    def _withheld(
        self, attempt: Attempt, issued: IssuedToken, cache: CacheResult, *, may_land: bool
    ) -> Refusal:
        """Fail closed: the token exists, but without its record nobody gets it.

        The issued record may still land (``may_land``: it was queued, and a write that
        outlives its deadline goes on; the chain keeps what it wrote). Then a second record
        of the same request, later in the chain, says that this token was withheld; an
        auditor who finds the first finds this one too (same token fingerprint and jti).
        Not awaited: the answer is already a 503, and a disk that is still failing loses
        this record as it lost the first (the writer says so in its own log line). A record
        never queued (a stalled writer) never lands, and needs nothing after it: one per
        request there would grow the queue for as long as the disk hangs."""
        self._metrics.count_token("failed", "audit_unavailable", cache)
        log.error("token_withheld_audit_unavailable")
        if may_land:
            self._withdraw(attempt, issued, cache)
        return Refusal(
            "audit_unavailable",
            "the audit record could not be written, so no token was issued; retry later",
            outcome="failed",
            retry_after=1,
        )

    def _withdraw(self, attempt: Attempt, issued: IssuedToken, cache: CacheResult) -> None:
        """Queue the record saying that ``attempt``'s token was withheld, after its own."""
        event = _event(
            attempt,
            "failed",
            WITHHELD_CODE,
            self._status_of[WITHHELD_CODE],
            issued=issued,
            cache=cache,
            reason=WITHHELD_REASON,
            shared_state=self._degraded(),
        )
        self._audit.submit_unwaited(event)

    def _issued(self, issued: IssuedToken, grant: Grant, cache: CacheResult) -> Issued:
        self._metrics.count_token("issued", "issued", cache)
        now = time.time()
        remaining = max(0, issued.expires_at - int(now))
        return Issued(
            token=issued,
            grant=grant,
            cache=cache,
            expires_in=remaining,
            refresh_at=rfc3339(now + remaining * REFRESH_RATIO),
        )

    async def _obtain(
        self, attempt: Attempt, caller: Caller, grant: Grant
    ) -> tuple[IssuedToken, CacheResult]:
        try:
            issued, cache = await self._minting.obtain(
                grant, use_cache=caller.cache, fresh=attempt.facts.fresh
            )
        except UpstreamFailure as failure:
            attempt.upstream_status = failure.status
            attempt.upstream_latency_ms = failure.latency_ms
            if failure.kind == "credentials":
                log.error("upstream_credentials_refused", upstream_status=failure.status)
            code, detail = _UPSTREAM[failure.kind]
            if failure.kind == "rejected" and failure.message:
                detail = f"{detail}; fields it named: {failure.message}"
            retry_after = (failure.retry_after or 1) if failure.kind in _RETRY_KINDS else None
            raise await self._record(
                attempt,
                Refusal(
                    code, detail, outcome="failed", retry_after=retry_after, reason=failure.kind
                ),
            ) from None
        except TokenMismatch as mismatch:
            attempt.upstream_status = mismatch.status
            attempt.upstream_latency_ms = mismatch.latency_ms
            log.error("upstream_token_mismatch", reason=mismatch.reason)
            raise await self._record(
                attempt,
                Refusal(
                    "upstream_token_mismatch",
                    "the MKA1 exchange returned a token that does not match the request; "
                    "it was discarded",
                    outcome="failed",
                    reason=mismatch.reason,
                ),
            ) from None
        if cache != "hit":
            attempt.upstream_status = issued.upstream_status
            attempt.upstream_latency_ms = issued.upstream_latency_ms
        return issued, cache


__all__ = ["Attempt", "Issued", "Limits", "Refusal", "RequestFacts", "TokenService"]
