"""``GET /audit/events``: the deployment's recorded decisions, from the audit store, for
callers with the auditor role. Any replica answers for all of them; a cursor from one
replica's page works on every other."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from typing import Any, get_args
from urllib.parse import unquote_to_bytes

import msgspec
import structlog
from litestar import Request, Response, get
from litestar.di import NamedDependency

from broker.api.auth import DEPENDENCIES
from broker.api.errors import ProblemError, record_or_refuse
from broker.api.privileged import privileged, store_caught_up
from broker.api.routes import AUDIT_EVENTS
from broker.audit.records import Outcome, ReadBody
from broker.audit.store import Position, StoreDataError, StoreError, StoreFilters
from broker.callers import Caller
from broker.clock import now_rfc3339_millis, parse_rfc3339
from broker.minting import CacheResult
from broker.models import FieldError
from broker.refusals import STATUS_OF
from broker.rules import CREDENTIAL_PROBLEM, looks_like_credential
from broker.runtime import Runtime

log = structlog.get_logger("broker.api.audit")
MAX_LIMIT = 500
DEFAULT_LIMIT = 50
# Query parameter -> StoreFilters field.
_TEXT_FILTERS = {
    "subject": "subject",
    "audience": "audience",
    "caller": "caller",
    "outcome": "outcome",
    "tokenSha256": "token_sha256",
    "tokenId": "token_id",
    "instance": "instance",
    "cache": "cache",
}
_ALLOWED = {*_TEXT_FILTERS, "since", "until", "limit", "cursor"}
_OUTCOMES: tuple[str, ...] = get_args(Outcome)
_CACHE_RESULTS: tuple[str, ...] = get_args(CacheResult)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ENCODER = msgspec.json.Encoder()


class EventsPage(msgspec.Struct, rename="camel"):
    events: list[dict[str, Any]]
    next_cursor: str | None


def _invalid(field: str, message: str) -> ProblemError:
    return ProblemError(
        STATUS_OF["invalid_query"],
        "invalid_query",
        "the query is invalid",
        errors=[FieldError(field, message)],
    )


def _time(field: str, value: str) -> datetime:
    if (parsed := parse_rfc3339(value)) is None:
        raise _invalid(field, "must be an RFC 3339 time with an offset or Z")
    return parsed


def _shown_name(name: str) -> str:
    return name if len(name) <= 64 and name.isascii() and name.isprintable() else "…"


def _not_utf8(query_string: bytes) -> str | None:
    """The first parameter whose name or value is not UTF-8 once percent-decoded, or None.
    The framework reads such bytes as U+FFFD: a filter no record can match, recorded in the
    read record as something the auditor never sent."""
    for pair in query_string.split(b"&"):
        raw_name, _, raw_value = pair.partition(b"=")
        try:
            name = unquote_to_bytes(raw_name).decode()
        except UnicodeDecodeError:
            return "…"
        try:
            unquote_to_bytes(raw_value).decode()
        except UnicodeDecodeError:
            return _shown_name(name)
    return None


def _parse_query(
    request: Request[Any, Any, Any],
) -> tuple[StoreFilters, int, Position | None]:
    if (name := _not_utf8(request.scope["query_string"])) is not None:
        raise _invalid(name, "is not valid UTF-8 once percent-decoded")
    params = request.query_params
    for name in params:
        if name not in _ALLOWED:
            raise _invalid(
                _shown_name(name), f"unknown parameter; allowed: {', '.join(sorted(_ALLOWED))}"
            )
        if len(params.getall(name)) > 1:
            raise _invalid(name, "must be given at most once")
    text: dict[str, str | None] = {}
    for name, field in _TEXT_FILTERS.items():
        value = params.get(name)
        if value is not None and not 1 <= len(value) <= 2048:
            raise _invalid(name, "must be 1 to 2048 characters")
        if value is not None and looks_like_credential(value):
            # Taken, it would be on the trail for good, in this read's record: a token
            # pasted into tokenId is a live token in the audit trail.
            raise _invalid(
                name,
                f"{CREDENTIAL_PROBLEM}: find a token by its SHA-256 (tokenSha256) or its jti "
                "(tokenId)",
            )
        text[field] = value
    if text["outcome"] is not None and text["outcome"] not in _OUTCOMES:
        raise _invalid("outcome", f"must be one of {', '.join(_OUTCOMES)}")
    if text["cache"] is not None and text["cache"] not in _CACHE_RESULTS:
        # A value no record can hold ("HIT", "miss ") is a mistake to say, not an empty page.
        raise _invalid("cache", f"must be one of {', '.join(_CACHE_RESULTS)}")
    if text["token_sha256"] is not None and not _SHA256.fullmatch(text["token_sha256"]):
        raise _invalid("tokenSha256", "must be 64 lowercase hexadecimal digits")
    raw_limit = params.get("limit")
    limit = DEFAULT_LIMIT
    if raw_limit is not None:
        # Length first: int() of thousands of digits is slow, and past 4300 refused.
        if (
            not 1 <= len(raw_limit) <= 3
            or not raw_limit.isascii()
            or not raw_limit.isdigit()
            or not 1 <= int(raw_limit) <= MAX_LIMIT
        ):
            raise _invalid("limit", f"must be an integer from 1 to {MAX_LIMIT}")
        limit = int(raw_limit)
    before = None
    if (cursor := params.get("cursor")) is not None:
        try:
            before = Position.from_cursor(cursor)
        except StoreDataError:
            raise _invalid("cursor", "must be a nextCursor from a previous page") from None
    since = _time("since", params["since"]) if "since" in params else None
    until = _time("until", params["until"]) if "until" in params else None
    return StoreFilters(**text, since=since, until=until), limit, before


@get(
    AUDIT_EVENTS,
    summary="Recorded decisions, newest first",
    include_in_schema=False,
    guards=[
        privileged(
            AUDIT_EVENTS, "auditor", "not_auditor", "reading the audit trail needs the auditor role"
        )
    ],
    dependencies=DEPENDENCIES,
)
async def audit_events(
    request: Request[Any, Any, Any],
    runtime: NamedDependency[Runtime],
    caller: NamedDependency[Caller],
) -> Response[bytes]:
    filters, limit, before = _parse_query(request)
    store, executor = runtime.store, runtime.store_executor
    if store is None or executor is None:
        raise ProblemError(
            STATUS_OF["audit_store_not_configured"],
            "audit_store_not_configured",
            'this broker has no audit store to read from (audit.store.backend is "none"): '
            "the records are in its stdout chain",
        )
    # This replica's own records so far first; then the page says what it has, and how many
    # of them it may lack: a page short of the newest end must not pass for the whole of it.
    headers = await store_caught_up(runtime)
    loop = asyncio.get_running_loop()
    try:
        result = await loop.run_in_executor(
            executor, lambda: store.page(filters, limit=limit, before=before)
        )
    except StoreDataError as exc:
        # Safe to log (StoreError says so). A retry would meet the same row: the auditor is
        # told to verify the store instead, which names where it was changed.
        log.error("audit_store_read_failed", error=str(exc))
        raise ProblemError(
            STATUS_OF["audit_store_inconsistent"],
            "audit_store_inconsistent",
            "the audit store holds a row that is not a record as written; "
            "`broker audit verify --database` says which",
        ) from None
    except StoreError as exc:
        # The store is away or failing: the operator learns which from the log line.
        log.error("audit_store_read_failed", error=str(exc))
        raise ProblemError(
            STATUS_OF["audit_store_unavailable"],
            "audit_store_unavailable",
            "the audit store cannot be read now; retry",
            headers={"Retry-After": "5"},
        ) from None
    # Reads of the trail are on the trail too, and fail closed like issuance: no page
    # leaves without its record.
    read = ReadBody(
        time=now_rfc3339_millis(),
        request_id=request.scope["state"].get("request_id", ""),
        caller=caller.id,
        filters={name: request.query_params[name] for name in sorted(request.query_params)},
        returned=len(result.records),
    )
    await record_or_refuse(
        runtime.audit, "read", read, "the read could not be recorded in the audit trail"
    )
    following = result.next.cursor() if result.next is not None else None
    body = EventsPage(events=result.records, next_cursor=following)
    return Response(_ENCODER.encode(body), media_type="application/json", headers=headers)
