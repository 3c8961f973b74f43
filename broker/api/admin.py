"""``/admin/revocations``: the kill switch, for callers with the admin role.

``POST`` bars a caller, an end user or an audience from a time on (or lifts a bar): the
record goes on the audit trail first (no record, no change), then into the shared store,
from where every replica applies it within a second; a bar or a lift on an end user or an
audience makes every cache forget the tokens for it minted before (``broker.revocations``).
Without a shared store the bar holds on the replica that answered,
and the answer says so (``scope: "replica"``). ``GET`` lists the bars in force here.
"""

from __future__ import annotations

import contextlib
import time
from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, Response, route
from litestar.di import NamedDependency
from litestar.enums import HttpMethod

from broker.api.auth import DEPENDENCIES
from broker.api.errors import ProblemError, from_refusal, record_or_refuse
from broker.api.privileged import privileged, store_caught_up
from broker.api.routes import REVOCATIONS
from broker.audit.records import RevocationBody
from broker.audit.writer import AuditUnavailable
from broker.callers import Caller
from broker.clock import now_rfc3339_millis, parse_rfc3339, rfc3339
from broker.decoding import decode_untrusted
from broker.json_members import repeated_name
from broker.models import FieldError, describe_invalid
from broker.refusals import STATUS_OF, unreadable_body
from broker.revocations import REASON_MAX, VALUE_MAX
from broker.rules import (
    AUDIENCE_RULE,
    CREDENTIAL_PROBLEM,
    EXTERNAL_USER_ID_RULE,
    audience_problem,
    external_user_id_problem,
    is_printable_ascii,
    looks_like_credential,
)
from broker.runtime import Runtime
from broker.shared import FULL, Bar

_MAX_BODY = 4096
_GUARDS = [
    privileged(REVOCATIONS, "admin", "not_admin", "barring and lifting needs the admin role")
]


class RevocationRequest(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    kind: Literal["caller", "end_user", "audience"]
    value: Annotated[str, msgspec.Meta(min_length=1, max_length=VALUE_MAX)]
    action: Literal["bar", "lift"] = "bar"
    # RFC 3339; the bar holds from then on (default: now).
    since: str | None = None
    reason: Annotated[str, msgspec.Meta(max_length=REASON_MAX)] = ""


_SINCE_RULE = "must be an RFC 3339 time with an offset or Z (default: now)"
# Each field as sent, and what it must be: a rejection names the field and its rule.
_RULES = {
    "kind": 'must be one of "caller", "end_user", "audience"',
    "value": f"must be a string of 1 to {VALUE_MAX} characters",
    "action": 'must be "bar" or "lift" (default: "bar")',
    "since": _SINCE_RULE,
    "reason": f"must be a string of at most {REASON_MAX} characters",
}


class BarView(msgspec.Struct, rename="camel"):
    kind: str
    value: str
    since: str
    reason: str
    by: str


class RevocationAnswer(msgspec.Struct, rename="camel"):
    scope: str
    bars: list[BarView]


_DECODER = msgspec.json.Decoder(RevocationRequest)
_ENCODER = msgspec.json.Encoder()


def _invalid(field: str, message: str) -> ProblemError:
    return ProblemError(
        STATUS_OF["invalid_request"],
        "invalid_request",
        "the request is invalid",
        errors=[FieldError(field, message)],
    )


def _view(runtime: Runtime) -> RevocationAnswer:
    bars = [
        BarView(bar.kind, bar.value, rfc3339(bar.since), bar.reason, bar.by)
        for bar in runtime.revocations.current()
    ]
    return RevocationAnswer(scope=runtime.revocations.scope, bars=bars)


_CALLER_RULE = "must be a caller's id: printable ASCII (0x20 to 0x7E)"


def _value_problem(kind: str, value: str) -> str | None:
    """Why a bar on ``value`` could never match a request of ``kind``, or None. A bar that
    matches nothing would leave the admin believing it holds. (A lift is not checked: it
    must be able to end any bar there is.)"""
    if kind == "end_user":
        rule, problem = EXTERNAL_USER_ID_RULE, external_user_id_problem(value)
    elif kind == "audience":
        rule, problem = AUDIENCE_RULE, audience_problem(value)
    else:
        rule = _CALLER_RULE
        problem = None if is_printable_ascii(value) else "contains a character outside it"
    return None if problem is None else f"for kind {kind!r}, {rule} ({problem})"


def _since(value: str | None) -> float:
    if value is None:
        return time.time()
    if (parsed := parse_rfc3339(value)) is None:
        raise _invalid("since", _SINCE_RULE)
    return parsed.timestamp()


@route(
    REVOCATIONS,
    http_method=[HttpMethod.GET, HttpMethod.POST],
    include_in_schema=False,
    guards=_GUARDS,
    dependencies=DEPENDENCIES,
    status_code=200,
)
async def revocations(
    request: Request[Any, Any, Any],
    runtime: NamedDependency[Runtime],
    caller: NamedDependency[Caller],
) -> Response[bytes]:
    """One handler for both methods, so that ``OPTIONS`` lists both in ``Allow``."""
    if request.method == HttpMethod.GET:
        return Response(_ENCODER.encode(_view(runtime)), media_type="application/json")
    if (unreadable := unreadable_body(request.headers)) is not None:
        raise from_refusal(unreadable)
    raw = await request.body()
    if len(raw) > _MAX_BODY:
        raise ProblemError(
            STATUS_OF["body_too_large"],
            "body_too_large",
            f"the body must be at most {_MAX_BODY} bytes",
        )
    try:
        wanted = decode_untrusted(_DECODER, raw)
    except msgspec.ValidationError as exc:
        error = describe_invalid(exc, _RULES)
        raise _invalid(error.field, error.message) from None
    except msgspec.DecodeError:
        raise ProblemError(
            STATUS_OF["malformed_json"],
            "malformed_json",
            "the body is not valid JSON",
            errors=[FieldError("(body)", "is not valid JSON in UTF-8")],
        ) from None
    if (name := repeated_name(raw)) is not None:
        # A bar on one value to a proxy and on another here: refused (json_members).
        raise _invalid(name, "is given more than once; send each field once")
    if wanted.action == "bar" and (problem := _value_problem(wanted.kind, wanted.value)):
        raise _invalid("value", problem)
    if wanted.action == "bar" and wanted.kind == "caller" and wanted.value == caller.id:
        # A barred caller is refused at this route too: nobody but another admin could
        # lift it.
        raise _invalid("value", "is this caller's own id: bar it from another admin caller")
    # The record keeps both for good. A lift of a bar in force is never refused for its
    # value (a bar an older broker took on a token's text: its own record holds it already);
    # a lift of nothing would only have put a pasted token on the trail.
    lifted = wanted.action == "lift" and runtime.revocations.holds(wanted.kind, wanted.value)
    for name, text in (
        ("value", "" if lifted else wanted.value),
        ("reason", wanted.reason or ""),
    ):
        if looks_like_credential(text):
            raise _invalid(name, CREDENTIAL_PROBLEM)
    if wanted.action == "bar" and runtime.revocations.full(wanted.kind, wanted.value):
        most = runtime.revocations.max_bars
        raise ProblemError(
            STATUS_OF["too_many_bars"],
            "too_many_bars",
            f"at most {most} bars may be in force at once; lift one first",
            errors=[FieldError("value", f"would be bar {most + 1}; at most {most}")],
        )
    since = _since(wanted.since)
    record = RevocationBody(
        time=now_rfc3339_millis(),
        request_id=request.scope["state"].get("request_id", ""),
        by=caller.id,
        action=wanted.action,
        kind=wanted.kind,
        value=wanted.value,
        since=rfc3339(since) if wanted.action == "bar" else None,
        reason=wanted.reason or None,
        scope=runtime.revocations.scope,
    )
    await record_or_refuse(
        runtime.audit,
        "revocation",
        record,
        "the change could not be recorded in the audit trail, so it was not made",
    )
    if wanted.action == "bar":
        bar = Bar(wanted.kind, wanted.value, since, wanted.reason, caller.id)
        scope = await runtime.revocations.bar(bar)
    else:
        scope = await runtime.revocations.lift(wanted.kind, wanted.value)
    if scope is None or scope is FULL:
        # The trail already says it was asked for; now it says it did not happen.
        failed = msgspec.structs.replace(record, time=now_rfc3339_millis(), applied=False)
        with contextlib.suppress(AuditUnavailable):
            await runtime.audit.append_record("revocation", failed)
        if scope is FULL:
            assert runtime.shared is not None
            most = runtime.shared.max_cutoffs
            raise ProblemError(
                STATUS_OF["too_many_revocation_changes"],
                "too_many_revocation_changes",
                f"the shared store holds cutoffs for {most} values, each barred or "
                "lifted in the last 30 days, and takes no new one until they age out; a bar "
                "in force can still be lifted",
                errors=[FieldError("value", f"would be value {most + 1}; at most {most}")],
            )
        raise ProblemError(
            STATUS_OF["shared_state_unavailable"],
            "shared_state_unavailable",
            "the shared store did not take the change, so no replica applies it; retry",
            headers={"Retry-After": "1"},
        )
    # The change's record in the audit store too, if it comes within a second: from there
    # a bar that the shared store loses is brought back when every replica that held it
    # is gone as well. The answer says how many of this replica's records it still lacked.
    return Response(
        _ENCODER.encode(_view(runtime)),
        media_type="application/json",
        headers=await store_caught_up(runtime),
    )
