"""What one audit line says. Never a token, a key or a secret: only fingerprints and ids."""

from __future__ import annotations

from typing import Literal

import msgspec

SCHEMA_VERSION = 1
Outcome = Literal["issued", "denied", "rejected", "failed"]


class AuditEvent(msgspec.Struct, kw_only=True, rename="camel"):
    """A decision about one ``POST /tokens``; the writer adds the chain fields around it."""

    time: str
    request_id: str
    outcome: Outcome
    code: str
    status: int
    # The actor: who called (None when authentication failed).
    caller: str | None = None
    auth_method: str | None = None
    source_address: str | None = None
    # The subject: for whom.
    external_user_id: str | None = None
    audience: str | None = None
    permissions: list[str] | None = None
    requested_expires_in: int | None = None
    granted_expires_in: int | None = None
    expires_at: str | None = None
    upstream_status: int | None = None
    upstream_latency_ms: float | None = None
    token_sha256: str | None = None
    token_id: str | None = None
    reason: str | None = None


class ChainHeader(msgspec.Struct, kw_only=True):
    v: int
    instance: str
    seq: int
    prev: str


GENESIS = "0" * 64
