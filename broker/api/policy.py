"""``GET /tokens/policy``: what the authenticated caller may ask for, so it need not guess."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get

from broker.api.auth import require_caller
from broker.limits import MIN_EXPIRES_IN

_ENCODER = msgspec.json.Encoder()


class LifetimeBounds(msgspec.Struct, rename="camel"):
    min: int
    max: int
    default: int


class CallerPolicy(msgspec.Struct, rename="camel"):
    caller: str
    auth_method: str
    audiences: list[str]
    # "any", "self" or glob patterns.
    subjects: str | list[str]
    # Whom "self" means for this caller.
    self_subject: str
    expires_in: LifetimeBounds
    # None: no allow-list; the upstream key's scopes apply.
    permissions: list[str] | None
    cache: bool
    roles: list[str]


@get("/tokens/policy", summary="What this caller may ask for", include_in_schema=False)
async def caller_policy(request: Request[Any, Any, Any]) -> Response[bytes]:
    _, caller = await require_caller(request)
    policy = caller.policy
    body = CallerPolicy(
        caller=caller.id,
        auth_method=caller.method,
        audiences=sorted(policy.audiences),
        subjects=policy.subjects if isinstance(policy.subjects, str) else list(policy.subjects),
        self_subject=caller.subject,
        expires_in=LifetimeBounds(
            min=MIN_EXPIRES_IN, max=policy.max_expires_in, default=policy.default_expires_in
        ),
        permissions=sorted(policy.permissions) if policy.permissions is not None else None,
        cache=caller.cache,
        roles=sorted(caller.roles),
    )
    return Response(_ENCODER.encode(body), media_type="application/json")
