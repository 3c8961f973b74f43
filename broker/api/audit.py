"""``GET /audit/events``: the decisions this replica recorded, for callers with the auditor role."""

from __future__ import annotations

import asyncio
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from litestar import Request, Response, get
from litestar.di import NamedDependency

from broker.api.auth import DEPENDENCIES, requires_caller, requires_role
from broker.api.errors import ProblemError
from broker.api.routes import AUDIT_EVENTS
from broker.audit.reader import Filters, Page, discover, page
from broker.models import FieldError
from broker.runtime import Runtime

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
_TEXT_FILTERS = ("subject", "audience", "caller", "outcome")
_ALLOWED = {*_TEXT_FILTERS, "since", "until", "limit", "cursor"}
_OUTCOMES = ("issued", "denied", "rejected", "failed")
# A file name and a line: where the previous page stopped.
CURSOR_PATTERN = r"^(audit-[A-Za-z0-9._:@-]+-\d{6}\.jsonl):(\d{1,9})$"
_CURSOR = re.compile(CURSOR_PATTERN)
_ENCODER = msgspec.json.Encoder()


class EventsPage(msgspec.Struct, rename="camel"):
    events: list[dict[str, Any]]
    next_cursor: str | None


def _invalid(field: str, message: str) -> ProblemError:
    return ProblemError(
        400, "invalid_query", "the query is invalid", errors=[FieldError(field, message)]
    )


def _time(field: str, value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _invalid(field, "must be an RFC 3339 time with an offset or Z") from None
    if parsed.tzinfo is None:
        raise _invalid(field, "must be an RFC 3339 time with an offset or Z")
    return parsed


def _parse_query(request: Request[Any, Any, Any]) -> tuple[Filters, int, tuple[str, int] | None]:
    params = request.query_params
    for name in params:
        if name not in _ALLOWED:
            shown = name if len(name) <= 64 and name.isascii() and name.isprintable() else "…"
            raise _invalid(shown, f"unknown parameter; allowed: {', '.join(sorted(_ALLOWED))}")
        if len(params.getall(name)) > 1:
            raise _invalid(name, "must be given at most once")
    text = {name: params.get(name) for name in _TEXT_FILTERS}
    for name, value in text.items():
        if value is not None and not 1 <= len(value) <= 2048:
            raise _invalid(name, "must be 1 to 2048 characters")
    if text["outcome"] is not None and text["outcome"] not in _OUTCOMES:
        raise _invalid("outcome", f"must be one of {', '.join(_OUTCOMES)}")
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
        match = _CURSOR.fullmatch(cursor)
        if match is None:
            raise _invalid("cursor", "must be a nextCursor from a previous page")
        before = (match.group(1), int(match.group(2)))
    since = _time("since", params["since"]) if "since" in params else None
    until = _time("until", params["until"]) if "until" in params else None
    filters = Filters(
        subject=text["subject"],
        audience=text["audience"],
        caller=text["caller"],
        outcome=text["outcome"],
        since=since,
        until=until,
    )
    return filters, limit, before


def _read_page(
    directory: Path, filters: Filters, limit: int, before: tuple[str, int] | None
) -> Page:
    files = discover([directory]) if directory.is_dir() else []
    return page(files, filters, limit=limit, before=before)


@get(
    AUDIT_EVENTS,
    summary="Recorded decisions, newest first",
    include_in_schema=False,
    guards=[
        requires_caller,
        requires_role("auditor", "not_auditor", "reading the audit trail needs the auditor role"),
    ],
    dependencies=DEPENDENCIES,
)
async def audit_events(
    request: Request[Any, Any, Any], runtime: NamedDependency[Runtime]
) -> Response[bytes]:
    filters, limit, before = _parse_query(request)
    result = await asyncio.to_thread(
        _read_page, Path(runtime.settings.audit.dir), filters, limit, before
    )
    body = EventsPage(events=result.records, next_cursor=result.next_cursor)
    return Response(_ENCODER.encode(body), media_type="application/json")
