"""``GET /tokens/policy``: what the authenticated caller may ask for, so it need not guess."""

from __future__ import annotations

import msgspec
from litestar import Response, get, head
from litestar.di import NamedDependency

from broker.api.auth import DEPENDENCIES, requires_caller
from broker.api.heads import headless
from broker.api.routes import CALLER_POLICY
from broker.callers import Caller
from broker.rules import MIN_EXPIRES_IN

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


@get(
    CALLER_POLICY,
    summary="What this caller may ask for",
    include_in_schema=False,
    guards=[requires_caller],
    dependencies=DEPENDENCIES,
)
async def caller_policy(caller: NamedDependency[Caller]) -> Response[bytes]:
    return Response(_policy_of(caller), media_type="application/json")


@head(CALLER_POLICY, include_in_schema=False, guards=[requires_caller], dependencies=DEPENDENCIES)
async def caller_policy_head(caller: NamedDependency[Caller]) -> Response[None]:
    return headless(200, "application/json", len(_policy_of(caller)))


def _policy_of(caller: Caller) -> bytes:
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
    return _ENCODER.encode(body)
