"""The settings file: TOML decoded strictly into frozen msgspec Structs.

Every error names the field path (``clients[0].max_expires_in``) and never the value,
because some values are secrets or hashes of them.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec

from broker.regular_files import SETTINGS_MAX_BYTES, FileRefused, read_small_file
from broker.rules import (
    EXTERNAL_USER_ID_MAX,
    MAX_EXPIRES_IN,
    MIN_EXPIRES_IN,
    PERMISSION_PATTERN,
    audience_problem,
    enforced,
    is_printable_ascii,
)

ExpiresIn = Annotated[int, msgspec.Meta(ge=MIN_EXPIRES_IN, le=MAX_EXPIRES_IN)]
_IDENTIFIER = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}\Z"
_KEY_SHA256 = r"^[0-9a-f]{64}\Z"
_SUBJECT_PATTERN = rf"^[\x20-\x7e]{{1,{EXTERNAL_USER_ID_MAX}}}\Z"
_ORIGIN = r"^https?://[A-Za-z0-9.\-\[\]:]+\Z"
_HEADER_NAME = r"^[A-Za-z0-9-]{1,64}\Z"
_KEY_PREFIX = r"^[A-Za-z0-9._:-]{1,64}\Z"
Identifier = Annotated[str, msgspec.Meta(pattern=_IDENTIFIER)]
KeySha256 = Annotated[str, msgspec.Meta(pattern=_KEY_SHA256)]
Permission = Annotated[str, msgspec.Meta(pattern=enforced(PERMISSION_PATTERN))]
SubjectPattern = Annotated[str, msgspec.Meta(pattern=_SUBJECT_PATTERN)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Origin = Annotated[str, msgspec.Meta(pattern=_ORIGIN)]
# What each pattern asks for, said instead of the regular expression when a value breaks it.
_PATTERN_RULES = {
    _IDENTIFIER: "1 to 128 letters, digits or . _ : @ -, beginning with a letter or digit",
    _KEY_SHA256: "64 lower-case hexadecimal digits (`broker client-key` prints them)",
    enforced(PERMISSION_PATTERN): "1 to 128 printable ASCII characters without spaces",
    _SUBJECT_PATTERN: f"1 to {EXTERNAL_USER_ID_MAX} printable ASCII characters",
    _ORIGIN: "a web origin, http(s)://host[:port] and nothing after it, such as "
    "https://app.example.com (no *, no path, no trailing slash)",
    _HEADER_NAME: "a header name of 1 to 64 letters, digits or -",
    _KEY_PREFIX: "1 to 64 letters, digits or . _ : -",
}
# Asymmetric only: "none" and HMAC (whose key would have to be shared) are refused.
Algorithm = Literal[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"
]
# Patterns end in \\Z, not $: Python's $ also matches before a trailing newline.
# A time below a millisecond is no bound on this or any host, and a denormal one (5e-324)
# made a wait's arithmetic overflow: every duration starts at 1 ms.
MIN_SECONDS = 0.001
Seconds = Annotated[float, msgspec.Meta(ge=MIN_SECONDS, le=300)]


AUDIT_DIR_ENV = "BROKER_AUDIT_DIR"


class ConfigError(Exception):
    """The settings are unusable; the message names the field and is safe to print."""


# Every settings struct names its three options itself, rather than inheriting them from one
# base (as litestar-fullstack's do): msgspec does not pass kw_only on to a subclass, and mypy
# takes a subclass that does not say frozen=True for a mutable one and refuses it.
class ServerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Port = 8080
    # X-Forwarded-For is believed only from these addresses or CIDRs; by default from none,
    # so a caller cannot choose the source address in its own audit record.
    trusted_proxies: list[str] = msgspec.field(default_factory=list)
    # On SIGTERM: stop accepting, let in-flight requests finish this long, flush the audit.
    shutdown_grace_seconds: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 20.0
    # Bounds on what one connection may cost before any handler runs (broker/transport.py).
    max_head_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1024 * 1024)] = 32 * 1024
    max_headers: Annotated[int, msgspec.Meta(ge=8, le=1000)] = 100
    head_timeout_seconds: Seconds = 5.0
    body_timeout_seconds: Seconds = 10.0
    # Also capped below the process's file limit (RLIMIT_NOFILE), whichever is lower.
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1024
    # A second port for /healthz, /readyz and /metrics only (they then leave the API port).
    telemetry_port: Port | None = None
    telemetry_host: str | None = None  # default: host


class UpstreamSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    base_url: str = "https://apigw.mka1.com"
    exchange_path: str = "/api/v1/authentication/api-key/exchange-token"
    api_key_env: str | None = None
    api_key_file: str | None = None
    # Tried once when the upstream answers 401 to the current key (a rotation in progress).
    api_key_next_env: str | None = None
    api_key_next_file: str | None = None
    # How often a key file is checked for replacement (at least every 0.1 s: each check
    # reads the file on the event loop, and 1e-9 made it a loop that never paused).
    api_key_check_seconds: Annotated[float, msgspec.Meta(ge=0.1, le=3600)] = 1.0
    # One attempt; the deadline bounds all attempts of one request together.
    timeout_seconds: Seconds = 5.0
    deadline_seconds: Seconds = 10.0
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=10)] = 3
    backoff_base_seconds: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.1
    backoff_max_seconds: Annotated[float, msgspec.Meta(ge=0, le=300)] = 2.0
    retry_after_max_seconds: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 30.0
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 100
    # With every connection busy, wait this long for one, then answer 503 at once.
    pool_wait_seconds: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.5
    circuit_failure_threshold: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 5
    circuit_cooldown_seconds: Annotated[float, msgspec.Meta(ge=MIN_SECONDS, le=3600)] = 10.0


class TokenSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    default_expires_in: ExpiresIn = 3600


class CacheSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    max_entries: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 10_000
    # Serve a cached token only while this share of the requested lifetime remains.
    min_remaining_ratio: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5


class AuditStoreSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where every replica copies its chain and every reader looks (``[audit.store]``)."""

    # Without it: "sqlite" under audit.dir with sink = "file", "none" with sink = "stdout".
    backend: Literal["sqlite", "postgresql", "none"] | None = None
    # The SQLite file; without it, audit-store.sqlite3 in audit.dir.
    sqlite_path: str | None = None
    # The PostgreSQL URL (it may hold a password: never in this file), from the environment
    # or a file.
    url_env: str | None = None
    url_file: str | None = None
    # "sync": a token also waits until its record is committed in the store.
    mode: Literal["async", "sync"] = "async"
    batch_records: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500
    # Bounds each connect, statement and pool wait: a hung database costs no more.
    timeout_seconds: Seconds = 5.0
    # Connections (and threads) for readers, retention and sync mode's shipping (async mode
    # ships from a process of its own, with one or two connections of its own).
    pool_size: Annotated[int, msgspec.Meta(ge=2, le=32)] = 4
    # Delete store rows older than this many days (never the chain files), each deletion
    # announced by a retention record. Off by default.
    retention_days: Annotated[int, msgspec.Meta(ge=1, le=36_500)] | None = None
    # Delete this replica's rotated chain files (and those of sealed earlier chains in the
    # directory) once PostgreSQL holds every line of them, so that a pod's volume does not
    # fill (about 800 bytes a decision): the store is then the trail of record, verified
    # with `broker audit verify --database`. Off by default.
    prune_shipped_files: bool = False


class AuditSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # "stdout": chained lines go to stdout for a cluster log pipeline, as one virtual file
    # (audit-<instance>-000001.jsonl) that auditors extract and verify.
    sink: Literal["file", "stdout"] = "file"
    # Without it: $BROKER_AUDIT_DIR (the container image sets its writable volume), else
    # var/audit beside the config file.
    dir: str = msgspec.field(default_factory=lambda: os.environ.get(AUDIT_DIR_ENV, "var/audit"))
    # A durable audit line is the price of a token; bound how long a caller waits for it.
    write_timeout_seconds: Seconds = 2.0
    # Off only for measuring what durability costs; never in production.
    fsync: bool = True
    # Ed25519 private key (PEM) for signing checkpoints, from a file or the environment.
    signing_key_file: str | None = None
    signing_key_env: str | None = None
    checkpoint_every_records: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 1000
    checkpoint_interval_seconds: Annotated[float, msgspec.Meta(ge=MIN_SECONDS, le=86_400)] = 60.0
    # While no records come, a checkpoint still signs the chain head this often: the signed
    # time of a live replica's last checkpoint is then never older than this, which is how
    # `verify --database` tells a quiet chain from one whose tail was cut.
    heartbeat_seconds: Annotated[float, msgspec.Meta(ge=1, le=86_400)] = 300.0
    rotate_bytes: Annotated[int, msgspec.Meta(ge=4096)] = 64 * 1024 * 1024
    # At least a second (smaller rotated on every batch: a file and a signed checkpoint each),
    # at most a year ("inf" is a TOML float).
    rotate_seconds: Annotated[float, msgspec.Meta(ge=1, le=366 * 86_400)] = 86_400.0
    # Defaults to host-pid-start time: each process keeps its own chain.
    instance_id: Identifier | None = None
    store: AuditStoreSettings = msgspec.field(default_factory=AuditStoreSettings)

    @property
    def store_backend(self) -> Literal["sqlite", "postgresql", "none"]:
        if self.store.backend is not None:
            return self.store.backend
        return "sqlite" if self.sink == "file" else "none"

    @property
    def sqlite_path(self) -> Path:
        return Path(self.store.sqlite_path or Path(self.dir) / "audit-store.sqlite3")


class LoggingSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    level: Literal["debug", "info", "warning", "error"] = "info"


class CallerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What every kind of caller (client, trusted issuer, proxy) may be granted."""

    id: Identifier
    # Empty only for a caller with roles that mints nothing (an auditor).
    audiences: list[str] = msgspec.field(default_factory=list)
    subjects: Literal["any", "self"] | list[SubjectPattern] = "self"
    max_expires_in: ExpiresIn = 3600
    default_expires_in: ExpiresIn | None = None
    permissions: list[Permission] | None = None
    # False: every request for this caller mints a fresh token.
    cache: bool = True
    # "auditor" may read GET /audit/events; "admin" may bar and lift (POST /admin/revocations).
    roles: list[Literal["auditor", "admin"]] = msgspec.field(default_factory=list)
    # Web origins (scheme://host[:port]) whose pages may call the broker as this caller.
    cors_origins: list[Origin] = msgspec.field(default_factory=list)


class ClientSettings(CallerSettings, frozen=True, forbid_unknown_fields=True, kw_only=True):
    key_sha256: KeySha256


class IssuerSettings(CallerSettings, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """An identity provider whose JWTs authenticate callers (browsers, Kubernetes workloads)."""

    issuer: str
    # Without it, discovered from issuer + /.well-known/openid-configuration.
    jwks_url: str | None = None
    # The aud a caller token must carry: the broker's own name.
    audience: str
    algorithms: list[Algorithm] = msgspec.field(default_factory=lambda: ["RS256", "ES256"])
    subject_claim: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "sub"
    leeway_seconds: Annotated[int, msgspec.Meta(ge=0, le=300)] = 30
    jwks_cache_seconds: Annotated[float, msgspec.Meta(ge=1, le=86_400)] = 300.0
    # An unknown kid refreshes the JWKS at most this often, whatever the flood. Not 0: then
    # a flood of made-up kids kept one fetch from the identity provider always under way.
    jwks_min_refresh_seconds: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 30.0
    # For a JWKS behind a private CA (the cluster's API server): PEM bundle to trust.
    jwks_ca_file: str | None = None
    # A bearer token for fetching the JWKS (a projected service account token), re-read at
    # each fetch; sent only over https, and only to the configured JWKS or issuer origin.
    jwks_bearer_token_file: str | None = None


class ProxySettings(CallerSettings, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """An authenticating proxy (oauth2-proxy and the like) that names the end user in a header;
    believed only on connections from its CIDRs."""

    cidrs: list[str]
    user_header: Annotated[str, msgspec.Meta(pattern=_HEADER_NAME)] = "X-Forwarded-User"


class BucketSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    # At least one a million seconds (11.6 days): a rate of 5e-324 made a refusal's wait
    # infinite, and its Retry-After a 500.
    rate_per_second: Annotated[float, msgspec.Meta(ge=1e-6, le=1_000_000)]
    burst: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]


class RateLimitSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    per_caller: BucketSettings | None = msgspec.field(
        default_factory=lambda: BucketSettings(rate_per_second=100, burst=200)
    )
    per_end_user: BucketSettings | None = msgspec.field(
        default_factory=lambda: BucketSettings(rate_per_second=10, burst=30)
    )
    # Authentication failures one source address may cause before the credentials from it
    # that would cost a check (an unknown key, a JWT not yet verified) are refused unread.
    auth_failures: BucketSettings = msgspec.field(
        default_factory=lambda: BucketSettings(rate_per_second=1, burst=20)
    )
    # Audit records of unauthenticated refusals, from all addresses together.
    unauthenticated_records: BucketSettings = msgspec.field(
        default_factory=lambda: BucketSettings(rate_per_second=20, burst=200)
    )


class SharedStateSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Valkey or Redis shared by every replica (``[shared_state]``): rate limits, the token
    cache, single-flight and revocations that hold for the deployment."""

    # The redis:// or rediss:// URL (it may hold a password: never in this file).
    url_env: str | None = None
    url_file: str | None = None
    # 256-bit key (base64) that encrypts tokens at rest in the store and keys its names.
    encryption_key_file: str | None = None
    encryption_key_env: str | None = None
    # While the key is changed (README): the key the other replicas still write with, or
    # already do. Bars and cutoffs sealed under either are read; the previous key's are
    # sealed again under encryption_key.
    encryption_key_previous_file: str | None = None
    encryption_key_previous_env: str | None = None
    encryption_key_next_file: str | None = None
    encryption_key_next_env: str | None = None
    # Each call to the store waits at most this long; past it the replica falls back to
    # local state until the store answers again.
    timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=5000)] = 100
    pool_size: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 64
    # Replicas sharing the limits: while the store is away each replica enforces limit / N.
    replicas: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 2
    # Names in the store begin with this (several deployments can share one store).
    key_prefix: Annotated[str, msgspec.Meta(pattern=_KEY_PREFIX)] = "mka1-broker:"
    # Single-flight across replicas: how long a mint lease lives, and how long another
    # replica waits for the leaseholder's token before minting itself.
    lease_ms: Annotated[int, msgspec.Meta(ge=100, le=60_000)] = 10_000
    follower_wait_ms: Annotated[int, msgspec.Meta(ge=10, le=60_000)] = 5_000
    # How often each replica reads the revocation list (at least every 0.1 s: each read is
    # a call to the store, and 1e-9 had every replica calling it without a pause).
    revocation_refresh_seconds: Annotated[float, msgspec.Meta(ge=0.1, le=60)] = 1.0


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    upstream: UpstreamSettings = msgspec.field(default_factory=UpstreamSettings)
    tokens: TokenSettings = msgspec.field(default_factory=TokenSettings)
    cache: CacheSettings = msgspec.field(default_factory=CacheSettings)
    audit: AuditSettings = msgspec.field(default_factory=AuditSettings)
    logging: LoggingSettings = msgspec.field(default_factory=LoggingSettings)
    rate_limits: RateLimitSettings = msgspec.field(default_factory=RateLimitSettings)
    shared_state: SharedStateSettings | None = None
    clients: list[ClientSettings] = msgspec.field(default_factory=list)
    issuers: list[IssuerSettings] = msgspec.field(default_factory=list)
    proxies: list[ProxySettings] = msgspec.field(default_factory=list)

    def cors_origins(self) -> frozenset[str]:
        """Every origin any caller may be called from: the preflight allow-list."""
        return frozenset(
            origin
            for caller in (*self.clients, *self.issuers, *self.proxies)
            for origin in caller.cors_origins
        )


_MSGSPEC_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def _field_path(msgspec_path: str) -> str:
    return msgspec_path.removeprefix(".")


def _explain(error: msgspec.ValidationError) -> str:
    text = str(error)
    match = _MSGSPEC_PATH.search(text)
    if match is None:
        return text
    path = _field_path(match.group("path"))
    said = text[: match.start()]
    for pattern, rule in _PATTERN_RULES.items():
        if said == f"Expected `str` matching regex {pattern!r}":
            said = f"must be {rule}"
    return f"{path}: {said}"


_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<name>[^`]*)`")


def _struct_at(path: str) -> type[msgspec.Struct] | None:
    """The settings struct a field path (``clients[0].roles``) points into."""
    info: msgspec.inspect.Type = msgspec.inspect.type_info(Settings)
    for part in filter(None, re.split(r"\.|\[\d+\]", path)):
        if not isinstance(info, msgspec.inspect.StructType):
            return None
        field = next((f for f in info.fields if f.encode_name == part), None)
        if field is None:
            return None
        info = field.type
        while isinstance(info, msgspec.inspect.UnionType | msgspec.inspect.ListType):
            if isinstance(info, msgspec.inspect.ListType):
                info = info.item_type
            else:
                info = next(
                    (t for t in info.types if isinstance(t, msgspec.inspect.StructType)),
                    info.types[0],
                )
    return info.cls if isinstance(info, msgspec.inspect.StructType) else None


def _suggestion(error: msgspec.ValidationError) -> str:
    """For an unknown key, the closest known one at the same place, if any is close."""
    text = str(error)
    unknown = _UNKNOWN.match(text)
    at = _MSGSPEC_PATH.search(text)
    if unknown is None:
        return ""
    struct = _struct_at(_field_path(at.group("path")) if at else "")
    if struct is None:
        return ""
    known = [field.encode_name for field in msgspec.structs.fields(struct)]
    close = difflib.get_close_matches(unknown.group("name"), known, n=1)
    return f" (did you mean `{close[0]}`?)" if close else ""


def _pasted_client_keys(raw: dict[str, object]) -> None:
    """A client key where its SHA-256 belongs: say so (without printing it), because the key
    itself now sits in a config file and should be replaced."""
    clients = raw.get("clients")
    for index, client in enumerate(clients if isinstance(clients, list) else []):
        value = client.get("key_sha256") if isinstance(client, dict) else None
        if isinstance(value, str) and value.startswith("bk_"):
            raise ConfigError(
                f"clients[{index}].key_sha256: this is a client key, not its SHA-256: put the "
                "key_sha256 that `broker client-key` printed, and issue a new key (this one "
                "has been written into a config file)"
            )


def parse_settings(document: str, base_dir: Path | None = None) -> Settings:
    """Decode and check a TOML document; raise ConfigError naming the bad field. Relative
    file paths are taken from ``base_dir`` (the config file's directory) when given."""
    try:
        raw = tomllib.loads(document)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}") from None
    except RecursionError:
        # tomllib descends into nested arrays and inline tables by recursion.
        raise ConfigError("not valid TOML here: arrays or tables nested too deeply") from None
    _pasted_client_keys(raw)
    try:
        settings = msgspec.convert(raw, type=Settings, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(exc) + _suggestion(exc)) from None
    _check_consistency(settings)
    return settings if base_dir is None else _resolve_paths(settings, base_dir)


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    def resolved(value: str | None) -> str | None:
        return None if value is None else str(base / value)

    upstream, audit = settings.upstream, settings.audit
    issuers = [
        msgspec.structs.replace(
            issuer,
            jwks_ca_file=resolved(issuer.jwks_ca_file),
            jwks_bearer_token_file=resolved(issuer.jwks_bearer_token_file),
        )
        for issuer in settings.issuers
    ]
    shared = settings.shared_state
    if shared is not None:
        shared = msgspec.structs.replace(
            shared,
            url_file=resolved(shared.url_file),
            encryption_key_file=resolved(shared.encryption_key_file),
            encryption_key_previous_file=resolved(shared.encryption_key_previous_file),
            encryption_key_next_file=resolved(shared.encryption_key_next_file),
        )
    return msgspec.structs.replace(
        settings,
        shared_state=shared,
        issuers=issuers,
        upstream=msgspec.structs.replace(
            upstream,
            api_key_file=resolved(upstream.api_key_file),
            api_key_next_file=resolved(upstream.api_key_next_file),
        ),
        audit=msgspec.structs.replace(
            audit,
            dir=str(base / audit.dir),
            signing_key_file=resolved(audit.signing_key_file),
            store=msgspec.structs.replace(
                audit.store,
                sqlite_path=resolved(audit.store.sqlite_path),
                url_file=resolved(audit.store.url_file),
            ),
        ),
    )


def load_settings(path: str | os.PathLike[str]) -> Settings:
    """Read and check the settings file. Every error names the file; relative paths in it
    are relative to the file's own directory, wherever the broker is started from."""
    try:
        document = read_small_file(path, SETTINGS_MAX_BYTES).decode("utf-8")
    except FileRefused as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8") from None
    try:
        return parse_settings(document, Path(path).resolve().parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _check_consistency(settings: Settings) -> None:
    upstream = settings.upstream
    if (upstream.api_key_env is None) == (upstream.api_key_file is None):
        raise ConfigError("upstream: set exactly one of api_key_env or api_key_file")
    if upstream.api_key_next_env is not None and upstream.api_key_next_file is not None:
        raise ConfigError("upstream: set at most one of api_key_next_env or api_key_next_file")
    if upstream.timeout_seconds > upstream.deadline_seconds:
        raise ConfigError("upstream.timeout_seconds: must not exceed deadline_seconds")
    if problem := audience_problem(upstream.base_url):
        # Said as it is: "must not contain user-info" is not a trailing slash.
        raise ConfigError(f"upstream.base_url: {problem}")
    if upstream.base_url.rstrip("/") != upstream.base_url:
        raise ConfigError(
            "upstream.base_url: must be an absolute http(s) URL without a trailing slash"
        )
    if "?" in upstream.base_url:
        # The exchange path is appended to it: it went into the query, and every exchange
        # asked the base URL's own path.
        raise ConfigError(
            "upstream.base_url: must not contain a query (upstream.exchange_path is appended to it)"
        )
    if settings.server.telemetry_port is not None and (
        settings.server.telemetry_port == settings.server.port != 0
    ):
        raise ConfigError("server.telemetry_port: must differ from server.port")
    for position, proxy_address in enumerate(settings.server.trusted_proxies):
        try:
            # Strict, as the proxy-header check reads it: "10.1.2.3/8" (host bits set) or a
            # typo was silently never matched there, and "*" believed every client.
            ipaddress.ip_network(proxy_address)
        except ValueError:
            raise ConfigError(
                f"server.trusted_proxies[{position}]: must be an IP address or network "
                "(10.0.0.0/8) without host bits; not '*', which would believe the "
                "X-Forwarded-For of every client"
            ) from None
    if settings.audit.sink == "stdout" and settings.audit.instance_id is not None:
        # A stdout chain cannot be read back to be continued after a restart.
        raise ConfigError(
            'audit.instance_id: leave it unset with sink = "stdout" (each start is its own '
            "chain there)"
        )
    _check_store(settings.audit)
    if (shared := settings.shared_state) is not None:
        if (shared.url_env is None) == (shared.url_file is None):
            raise ConfigError(
                "shared_state: set exactly one of url_env or url_file (the redis:// URL, "
                "never in this file)"
            )
        if (shared.encryption_key_env is None) == (shared.encryption_key_file is None):
            raise ConfigError(
                "shared_state: set exactly one of encryption_key_env or encryption_key_file"
            )
        for other in ("previous", "next"):
            if (
                getattr(shared, f"encryption_key_{other}_env") is not None
                and getattr(shared, f"encryption_key_{other}_file") is not None
            ):
                raise ConfigError(
                    f"shared_state: set at most one of encryption_key_{other}_env or "
                    f"encryption_key_{other}_file"
                )
    path = upstream.exchange_path
    if not path.startswith("/") or not is_printable_ascii(path) or " " in path or "#" in path:
        # Anything else is quoted or dropped on the way: the exchange asked is not the one
        # written.
        raise ConfigError(
            "upstream.exchange_path: must be a path starting with /, of printable ASCII "
            "without spaces or #"
        )

    seen_keys: set[str] = set()
    for index, client in enumerate(settings.clients):
        if client.key_sha256 in seen_keys:
            raise ConfigError(f"clients[{index}].key_sha256: the same key is configured twice")
        seen_keys.add(client.key_sha256)
    seen_issuers: set[str] = set()
    for index, issuer in enumerate(settings.issuers):
        where = f"issuers[{index}]"
        if issuer.issuer in seen_issuers:
            raise ConfigError(f"{where}.issuer: the same issuer is configured twice")
        seen_issuers.add(issuer.issuer)
        if not issuer.algorithms:
            raise ConfigError(f"{where}.algorithms: list at least one algorithm")
        for name in ("issuer", "jwks_url"):
            value = getattr(issuer, name)
            if value is not None and (problem := audience_problem(value)):
                raise ConfigError(f"{where}.{name}: must be an absolute http(s) URL ({problem})")
        if "?" in issuer.issuer:
            # Discovery appends its path to the issuer: it went into the query.
            raise ConfigError(
                f"{where}.issuer: must not contain a query (an issuer identifier has none: "
                "RFC 8414 2, OpenID Connect Discovery 3)"
            )
        if issuer.jwks_bearer_token_file is not None and not (
            issuer.jwks_url or issuer.issuer
        ).startswith("https://"):
            raise ConfigError(
                f"{where}.jwks_bearer_token_file: the token is sent only over https; "
                "jwks_url (or issuer, for discovery) must be an https URL"
            )
    for index, proxy in enumerate(settings.proxies):
        for position, cidr in enumerate(proxy.cidrs):
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                where = f"proxies[{index}].cidrs[{position}]"
                raise ConfigError(f"{where}: not an IP network") from None
        if not proxy.cidrs:
            raise ConfigError(f"proxies[{index}].cidrs: list at least one network")

    seen_ids: set[str] = set()
    kinds: tuple[tuple[str, Sequence[CallerSettings]], ...] = (
        ("clients", settings.clients),
        ("issuers", settings.issuers),
        ("proxies", settings.proxies),
    )
    for kind, callers in kinds:
        for index, caller in enumerate(callers):
            _check_caller(f"{kind}[{index}]", caller, seen_ids)


def _check_store(audit: AuditSettings) -> None:
    store, backend = audit.store, audit.store_backend
    urls = (store.url_env is not None) + (store.url_file is not None)
    if backend == "postgresql" and urls != 1:
        raise ConfigError(
            "audit.store: set exactly one of url_env or url_file for the PostgreSQL URL "
            "(never the URL itself in this file: it may hold a password)"
        )
    if backend != "postgresql" and urls:
        raise ConfigError('audit.store.url_env/url_file: only with backend = "postgresql"')
    if backend != "sqlite" and store.sqlite_path is not None:
        raise ConfigError('audit.store.sqlite_path: only with backend = "sqlite"')
    if backend != "none" and audit.sink != "file":
        # Shipping follows the chain files; a stdout chain is shipped by the log pipeline.
        raise ConfigError(
            f'audit.store.backend: "{backend}" needs sink = "file" (the store is filled from '
            'the chain files); with sink = "stdout" use backend = "none"'
        )
    if backend == "none" and store.mode == "sync":
        raise ConfigError('audit.store.mode: "sync" needs a store')
    if store.prune_shipped_files and backend != "postgresql":
        # An embedded store lives beside the files, on the same volume: deleting them would
        # leave the trail in one copy that is no better kept than they were.
        raise ConfigError(
            'audit.store.prune_shipped_files: only with backend = "postgresql" (the store '
            "then holds the trail; an embedded one shares the files' volume)"
        )


class _NoBrowserSends(ValueError):
    """An origin no browser can send: why, for the configuration error."""


def _as_browsers_send(origin: str) -> str:
    """``origin`` as a browser's Origin header spells it (RFC 6454 serialization): the host
    in lower case, an IPv6 address in its shortest form, the port in decimal without
    leading zeros and none when it is the scheme's default. Raises ``_NoBrowserSends`` for
    one no page can have (an empty host or port, a port outside 1..65535, an IP address a
    browser would have rewritten or refused): compared as written with the Origin header,
    it would never match."""
    scheme, _, authority = origin.partition("://")
    host, port = authority.lower(), None
    if (colon := host.rfind(":")) > host.rfind("]"):
        host, port = host[:colon], host[colon + 1 :]
        if not (port.isdigit() and len(port) <= 5 and 1 <= int(port) <= 65535):
            raise _NoBrowserSends("the port must be a number from 1 to 65535")
        port = str(int(port))
    if host.startswith("[") and host.endswith("]"):
        try:
            host = f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            raise _NoBrowserSends("[...] must hold an IPv6 address") from None
    elif not host or any(mark in host for mark in "[]:"):
        raise _NoBrowserSends("the host must be a name, an IPv4 address or an [IPv6] address")
    elif host.rstrip(".").rpartition(".")[2].isdigit():
        # A host whose last label is a number is an IPv4 address to a browser, which writes
        # it back as four decimal numbers (127.1 is sent as 127.0.0.1) or refuses it.
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise _NoBrowserSends("an IPv4 address is four decimal numbers, a.b.c.d") from None
    if port == {"http": "80", "https": "443"}.get(scheme):
        port = None
    return f"{scheme}://{host}" + (f":{port}" if port is not None else "")


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` names this machine (localhost, 127.0.0.0/8, ::1)."""
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    return is_loopback_host(host)


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cleartext_warnings(settings: Settings) -> list[str]:
    """What the settings send in clear across a network, said at start and by check-config.
    Warned of, not refused: behind a mesh sidecar that originates TLS, http:// to a remote
    host is how a broker is meant to be configured."""
    found: list[str] = []
    if in_clear(settings.upstream.base_url):
        found.append(
            "upstream.base_url is http:// to a host that is not this machine: the MKA1 API key "
            "crosses the network in clear (only behind a proxy or sidecar that originates TLS)"
        )
    for index, issuer in enumerate(settings.issuers):
        name, url = ("jwks_url", issuer.jwks_url) if issuer.jwks_url else ("issuer", issuer.issuer)
        if in_clear(url):
            found.append(
                f"issuers[{index}].{name} is http:// to a host that is not this machine: "
                "whoever is on the way can replace its keys and sign caller tokens"
            )
    return found


def unanchored_warnings(settings: Settings) -> list[str]:
    """A signed trail whose checkpoint heads the log level drops, said at start and by
    check-config: `broker audit verify --anchors` then has no log to hold the trail against.
    Warned of, not refused: the trail itself is whole, and a quiet log is an operator's call."""
    audit = settings.audit
    signed = audit.signing_key_file is not None or audit.signing_key_env is not None
    if not signed or settings.logging.level in ("debug", "info"):
        return []
    return [
        f'logging.level = "{settings.logging.level}" drops the audit checkpoints\' heads '
        "(audit_checkpoint_signed, at info): `broker audit verify --anchors` has no log to "
        "hold the trail against, so a chain deleted whole or cut back is found only as before"
    ]


def callerless_warnings(settings: Settings) -> list[str]:
    """No caller of any kind configured, said at start, at a reload and by check-config:
    every request that needs one is refused 401. Warned of, not refused: a reload to such a
    config is one way to shut every caller out at once."""
    if settings.clients or settings.issuers or settings.proxies:
        return []
    return [
        "no callers are configured (clients, issuers and proxies are all empty): every "
        "request to /tokens, /tokens/policy, /audit/events and /admin/revocations is refused "
        "401 unauthenticated"
    ]


def in_clear(url: str, scheme: str = "http://") -> bool:
    """Whether ``url`` reaches another machine over ``scheme``, a scheme without TLS."""
    return url.startswith(scheme) and not is_loopback_url(url)


def _check_caller(where: str, caller: CallerSettings, seen_ids: set[str]) -> None:
    if caller.id in seen_ids:
        raise ConfigError(f"{where}.id: duplicate id")
    seen_ids.add(caller.id)
    if not caller.audiences and not caller.roles:
        # Without audiences a caller can mint nothing: only a reader (an auditor) needs none.
        raise ConfigError(
            f"{where}.audiences: must list at least one audience (only a caller with roles, "
            "such as an auditor that mints nothing, may have none)"
        )
    for position, audience in enumerate(caller.audiences):
        problem = audience_problem(audience)
        if problem:
            raise ConfigError(f"{where}.audiences[{position}]: {problem}")
    if isinstance(caller.subjects, list) and not caller.subjects:
        raise ConfigError(f'{where}.subjects: "any", "self" or a non-empty list of patterns')
    for position, origin in enumerate(caller.cors_origins):
        try:
            sent = _as_browsers_send(origin)
        except _NoBrowserSends as exc:
            raise ConfigError(
                f"{where}.cors_origins[{position}]: no browser sends it: {exc}"
            ) from None
        if sent != origin:
            # Compared as written with the Origin header: this one would never match.
            raise ConfigError(
                f"{where}.cors_origins[{position}]: write it as browsers send it, {sent} "
                "(the host in lower case, no default port)"
            )
    default = caller.default_expires_in
    if default is not None and default > caller.max_expires_in:
        raise ConfigError(f"{where}.default_expires_in: must not exceed max_expires_in")
