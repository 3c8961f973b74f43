"""What an audit line says, and the exact bytes that chain and checkpoints are built on.

A line is one JSON object: the chain header (``v``, ``type``, ``instance``, ``seq``,
``prev``) followed by the record's own fields. ``prev`` is the SHA-256 of the previous
line's bytes (without its newline). Never a token, a key or a secret: fingerprints and ids.
"""

from __future__ import annotations

import hashlib
from typing import Literal, get_args

import msgspec

SCHEMA_VERSION = 1
GENESIS = "0" * 64
CHECKPOINT_DOMAIN = b"mka1-token-broker/audit-checkpoint/v1\n"
Outcome = Literal["issued", "denied", "rejected", "failed"]
RecordType = Literal[
    "decision",
    "checkpoint",
    "start",
    "config",
    "api_key",
    "read",
    "retention",
    "revocation",
    "unrecorded",
    "witness",
]
RECORD_TYPES: tuple[RecordType, ...] = get_args(RecordType)
# A record is a few hundred bytes; a line longer than this is not one, and is not read whole
# (from a file, or from a store row).
MAX_LINE_BYTES = 1024 * 1024
# The log event each durable checkpoint is also written as: its head, off the host with the
# logs, for `broker audit verify --anchors` (broker/audit/anchors.py).
ANCHOR_EVENT = "audit_checkpoint_signed"
CheckpointReason = Literal[
    "count", "interval", "heartbeat", "rotation", "shutdown", "recovery", "start"
]
# A decision that names a token without handing it out: its issued record was written too
# late (after the request's deadline), so the same request's next record says so. Token
# lookups show it beside the issued record.
WITHHELD_CODE = "audit_unavailable"
WITHHELD_REASON = "the token was withheld: its issued record was not durable in time"


def names_a_token(record: dict[str, object]) -> bool:
    """An issuance record, or the record that withdraws one (``WITHHELD_CODE``)."""
    outcome = record.get("outcome")
    return outcome == "issued" or (outcome == "failed" and record.get("code") == WITHHELD_CODE)


_ENCODER = msgspec.json.Encoder()


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
    cache: str | None = None
    reason: str | None = None
    # Unauthenticated refusals before this one that were counted but not recorded, because
    # they came faster than rate_limits.unauthenticated_records allows.
    unrecorded_before: int | None = None
    # "unavailable" when the shared store (Valkey/Redis) was away and this decision was
    # made on local state: limits at limit / N, the local cache only.
    shared_state: str | None = None


class RouteDecision(AuditEvent, kw_only=True):
    """A decision about a request to a privileged route (the trail, the kill switch), refused
    before it ran: who tried, from where, and why. A decision like those about ``POST
    /tokens``, so that the same queries find it (by caller, outcome, time), with ``route``
    saying which ("GET /audit/events"); the token fields stay empty."""

    route: str


UnrecordedKind = Literal["rate_limited", "route_refused", "unauthenticated"]


class UnrecordedCount(msgspec.Struct, kw_only=True, rename="camel"):
    """Refusals that were counted, not recorded, and that no later decision took into its
    ``unrecordedBefore``."""

    # rate_limited: 429s of one caller's limit (POST /tokens); route_refused: one caller's
    # refusals at one privileged route; unauthenticated: refusals of unknown callers past
    # rate_limits.unauthenticated_records.
    kind: UnrecordedKind
    count: int
    # The request whose decision these repeated (same caller, same limit or route): the
    # last one recorded. None for unauthenticated refusals, and for the repeats of keys
    # forgotten to make room (rate limits keep at most so many keys).
    like_request_id: str | None = None


class UnrecordedBody(msgspec.Struct, kw_only=True, rename="camel"):
    """Counts of refusals not on the record, written once no decision can take them any
    more (their key's second has passed without another record) and at shutdown: so that
    every refusal is on the trail, recorded or counted, and a count never waits in memory
    for a record that may not come."""

    time: str
    counts: list[UnrecordedCount]


class ChainHeader(msgspec.Struct, kw_only=True):
    v: int
    type: RecordType
    instance: str
    seq: int
    prev: str


class CheckpointHead(msgspec.Struct, kw_only=True):
    """What a checkpoint signs: the chain head just before it, in one file of one instance."""

    instance: str
    file: str
    seq: int
    hash: str
    reason: CheckpointReason
    time: str
    next: str | None

    def message(self) -> bytes:
        return CHECKPOINT_DOMAIN + _ENCODER.encode(self)

    def body(self, key_id: str, sig: str) -> CheckpointBody:
        """The checkpoint record that carries this head and its signature."""
        return CheckpointBody(
            time=self.time,
            reason=self.reason,
            file=self.file,
            head_seq=self.seq,
            head_hash=self.hash,
            next=self.next,
            key_id=key_id,
            sig=sig,
        )


class CheckpointBody(msgspec.Struct, kw_only=True, rename="camel"):
    time: str
    reason: CheckpointReason
    file: str
    head_seq: int
    head_hash: str
    next: str | None
    key_id: str
    sig: str


class ChainPosition(msgspec.Struct, kw_only=True, frozen=True):
    """A line of a chain: its instance, its seq and the SHA-256 of its bytes."""

    instance: str
    seq: int
    hash: str


class StartBody(msgspec.Struct, kw_only=True, rename="camel"):
    """The first record of a chain, and of each restart that continues one.

    ``predecessor`` names the newest line of the chain that came before in the same audit
    directory (another instance's, or this instance's own before a restart), so that a
    verifier can prove that chain is present: deleting a whole instance then shows."""

    time: str
    version: str
    key_id: str | None
    predecessor: ChainPosition | None
    # Bytes of an unfinished last line cut away when a restart continued this chain.
    truncated_bytes: int = 0
    # SHA-256 of the settings this process runs with (they hold no secret, only digests and
    # where secrets come from): two starts with the same digest ran the same config.
    config_digest: str | None = None
    # The newest line of every other chain the audit store showed running at this start: a
    # chain deleted whole from the store later is then missing a line that a signed chain
    # names (verify --database).
    witnessed: list[ChainPosition] = msgspec.field(default_factory=list)


class WitnessBody(msgspec.Struct, kw_only=True, rename="camel"):
    """Every heartbeat: the newest line of every other chain the audit store shows running,
    as a start record names them, for the chains that started after this one."""

    time: str
    chains: list[ChainPosition]


class ConfigBody(msgspec.Struct, kw_only=True, rename="camel"):
    """A config reload: what changed, by caller id (never a secret)."""

    time: str
    result: Literal["applied", "rejected"]
    config_digest: str | None = None
    callers_added: list[str] = msgspec.field(default_factory=list)
    callers_removed: list[str] = msgspec.field(default_factory=list)
    callers_changed: list[str] = msgspec.field(default_factory=list)
    # Sections that changed in the file but need a restart to apply.
    needs_restart: list[str] = msgspec.field(default_factory=list)


class ApiKeyBody(msgspec.Struct, kw_only=True, rename="camel"):
    """The MKA1 API key in use changed: which source, and the new key's fingerprint."""

    time: str
    which: str
    key_sha256: str
    reason: str


class ReadBody(msgspec.Struct, kw_only=True, rename="camel"):
    """A read of the trail through GET /audit/events: who, with which filters."""

    time: str
    request_id: str
    caller: str
    filters: dict[str, str]
    returned: int


def fingerprint(token: str) -> str:
    """A token's tokenSha256: what records, responses and find-token all use."""
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()


def encode_line(header: ChainHeader, body: bytes) -> bytes:
    """One line (without newline): the header's fields, then the body object's fields."""
    encoded = _ENCODER.encode(header)
    if body == b"{}":
        return encoded
    return encoded[:-1] + b"," + body[1:]


def checkpoint_line(instance: str, seq: int, prev: str, body: CheckpointBody) -> bytes:
    """A checkpoint's line, byte for byte as the writer writes it."""
    header = ChainHeader(v=SCHEMA_VERSION, type="checkpoint", instance=instance, seq=seq, prev=prev)
    return encode_line(header, _ENCODER.encode(body))


class RetainedRange(msgspec.Struct, kw_only=True, rename="camel", frozen=True):
    """Records of one chain that retention deleted from the store: seq ``first_seq`` to
    ``last_seq``, and the hash of the last, from which the chain's rest still verifies."""

    instance: str
    first_seq: int
    last_seq: int
    last_hash: str
    rows: int


class RetentionBody(msgspec.Struct, kw_only=True, rename="camel"):
    """Rows older than ``cutoff`` deleted from the audit store (never from the files),
    written before they are deleted."""

    time: str
    cutoff: str
    ranges: list[RetainedRange]


class RevocationBody(msgspec.Struct, kw_only=True, rename="camel"):
    """A bar on a caller, an end user or an audience, or its lift, and who asked; or a bar
    this replica wrote back to the shared store, which had lost it without a lift
    (``restore``: ``by``, ``since`` and ``reason`` are the bar's own, and no request)."""

    time: str
    request_id: str
    by: str
    action: Literal["bar", "lift", "restore"]
    kind: str
    value: str
    since: str | None = None
    reason: str | None = None
    # "deployment" with a shared store, "replica" without one.
    scope: str
    # False in the record that follows one the shared store then refused: asked, not done.
    applied: bool = True
