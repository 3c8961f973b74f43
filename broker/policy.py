"""What a caller may get: audiences, lifetimes, end users and permissions.

Pure decisions, no I/O: ``decide`` turns a caller's policy and a request into a Grant or
raises Denied with a stable code.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Literal

import msgspec

if TYPE_CHECKING:
    from broker.config import CallerSettings

SubjectRule = Literal["any", "self"] | tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Policy:
    audiences: frozenset[str]
    subjects: SubjectRule
    max_expires_in: int
    default_expires_in: int
    permissions: frozenset[str] | None

    @classmethod
    def for_caller(cls, client: CallerSettings, global_default: int) -> Policy:
        subjects: SubjectRule = (
            client.subjects if isinstance(client.subjects, str) else tuple(client.subjects)
        )
        # Without its own default a client gets the global one, clamped to what it may have.
        default = client.default_expires_in or min(global_default, client.max_expires_in)
        return cls(
            audiences=frozenset(client.audiences),
            subjects=subjects,
            max_expires_in=client.max_expires_in,
            default_expires_in=default,
            permissions=frozenset(client.permissions) if client.permissions is not None else None,
        )


class Grant(msgspec.Struct, frozen=True):
    """What the broker will ask the upstream for, on behalf of one caller."""

    audience: str
    external_user_id: str
    expires_in: int
    permissions: tuple[str, ...] | None


class Denied(Exception):
    """The request is well-formed but outside the caller's policy."""

    def __init__(self, code: str, field: str, message: str) -> None:
        super().__init__(code)
        self.code = code
        self.field = field
        self.message = message


def subject_allowed(rule: SubjectRule, own_subject: str, external_user_id: str) -> bool:
    if rule == "any":
        return True
    if rule == "self":
        return external_user_id == own_subject
    return any(fnmatchcase(external_user_id, pattern) for pattern in rule)


def decide(
    policy: Policy,
    own_subject: str,
    *,
    audience: str,
    external_user_id: str | None,
    expires_in: int | None,
    permissions: list[str] | None,
) -> Grant:
    if not policy.audiences:
        raise Denied(
            "minting_not_allowed",
            "audience",
            "this caller may not obtain tokens for any audience (it has none configured)",
        )
    if audience not in policy.audiences:
        raise Denied(
            "audience_not_allowed",
            "audience",
            "is not allowed for this caller; allowed: " + ", ".join(sorted(policy.audiences)),
        )

    if external_user_id is None:
        if policy.subjects != "self":
            raise Denied(
                "external_user_id_required",
                "externalUserId",
                "is required (in the body or the X-On-Behalf-Of header)",
            )
        external_user_id = own_subject
    if not subject_allowed(policy.subjects, own_subject, external_user_id):
        rule = (
            "only the caller itself"
            if policy.subjects == "self"
            else "an id matching the caller's subject patterns"
        )
        raise Denied("subject_not_allowed", "externalUserId", f"is not allowed; allowed: {rule}")

    lifetime = policy.default_expires_in if expires_in is None else expires_in
    if lifetime > policy.max_expires_in:
        raise Denied(
            "expires_in_too_long",
            "expiresIn",
            f"must be from 300 to {policy.max_expires_in} for this caller",
        )

    granted_permissions: tuple[str, ...] | None = None
    if permissions is not None:
        if policy.permissions is not None:
            extra = sorted(set(permissions) - policy.permissions)
            if extra:
                raise Denied(
                    "permission_not_allowed",
                    "permissions",
                    f"{len(extra)} requested permission(s) are outside this caller's "
                    f"allow-list: {', '.join(extra[:10])}",
                )
        granted_permissions = tuple(sorted(permissions))
    elif policy.permissions is not None:
        # A caller with an allow-list never gets the key's full scope by omission.
        granted_permissions = tuple(sorted(policy.permissions))

    return Grant(
        audience=audience,
        external_user_id=external_user_id,
        expires_in=lifetime,
        permissions=granted_permissions,
    )
