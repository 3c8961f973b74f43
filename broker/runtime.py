"""The broker's long-lived parts, built from settings, started and stopped together, and the
reloadable part (callers and their policies) swapped atomically on SIGHUP."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, TypeVar

import aiohttp
import msgspec
import structlog

from broker import __version__
from broker.audit.records import (
    ApiKeyBody,
    ChainPosition,
    ConfigBody,
    RecordType,
    RevocationBody,
    WitnessBody,
)
from broker.audit.retention import Retention
from broker.audit.ship_supervisor import ShipperProcess
from broker.audit.shipping import Shipper, Shipping
from broker.audit.signing import CheckpointSigner
from broker.audit.store import POSTGRESQL, SQLITE, StoreDataError, StoreError
from broker.audit.writer import AuditUnavailable, AuditWriter
from broker.cache import TokenCache
from broker.callers import Authenticator
from broker.clock import now_rfc3339_millis, rfc3339
from broker.config import (
    BucketSettings,
    ConfigError,
    IssuerSettings,
    Settings,
    callerless_warnings,
    cleartext_warnings,
    load_settings,
    unanchored_warnings,
)
from broker.daemon_executor import DaemonThreadExecutor
from broker.federation import CallerTokenVerifier, JwksSource
from broker.metrics import Metrics
from broker.minting import Minter
from broker.observability import set_level
from broker.periodic import Periodic
from broker.ratelimit import RecordBudget, RepeatBudget, TokenBuckets
from broker.refusals import STATUS_OF
from broker.revocations import EMBEDDED_HORIZON, RECORDED_LIMIT, Revocations, standing_bars
from broker.secrets import (
    ApiKeySource,
    open_store,
    secret_cleartext_warnings,
    shared_state_other_keys,
    shared_state_secrets,
)
from broker.service import Limits, SharedLimit, TokenService
from broker.shared import Bar, SharedState
from broker.unrecorded import UnrecordedCounts
from broker.upstream import UpstreamClient

log = structlog.get_logger("broker.runtime")


def config_digest(settings: Settings) -> str:
    """SHA-256 of the settings as decoded (no secret is in them: digests of client keys and
    where the secrets come from)."""
    return hashlib.sha256(msgspec.json.encode(settings)).hexdigest()


def _shared_limit(
    name: str, bucket: BucketSettings | None, settings: Settings
) -> SharedLimit | None:
    """The deployment-wide limit, with its local stand-in at limit / N."""
    shared = settings.shared_state
    if bucket is None or shared is None:
        return None
    share = BucketSettings(
        rate_per_second=bucket.rate_per_second / shared.replicas,
        burst=max(1, bucket.burst // shared.replicas),
    )
    return SharedLimit(name, bucket.rate_per_second, bucket.burst, TokenBuckets(share))


def _callers(settings: Settings) -> dict[str, bytes]:
    """Each caller's id and its settings, encoded, to tell what a reload changed."""
    found: dict[str, bytes] = {}
    for callers in (settings.clients, settings.issuers, settings.proxies):
        for caller in callers:
            found[caller.id] = msgspec.json.encode(caller)
    return found


def shipping_environment(settings: Settings, environ: Mapping[str, str]) -> dict[str, str]:
    """The shipping process's environment: this one's, without the variables the settings
    name for secrets it has no use for (the MKA1 API key, the signing key, the shared
    store's URL and key); only the audit store's URL stays, which it needs."""

    def named(value: object) -> Iterator[str]:
        if isinstance(value, dict):
            for key, inner in value.items():
                if key.endswith("_env") and isinstance(inner, str):
                    yield inner
                else:
                    yield from named(inner)
        elif isinstance(value, list):
            for inner in value:
                yield from named(inner)

    kept = settings.audit.store.url_env
    secret = {name for name in named(msgspec.to_builtins(settings)) if name != kept}
    return {name: value for name, value in environ.items() if name not in secret}


# In async mode, the shipping process's pause between passes while the replica is quiet:
# what a pass takes goes in as a few large transactions (at 0.1 s, with the store still
# beside the loop, a cache hit cost 6-15% more CPU than at 0.5 s: bench/notes.md); the store
# may be that much further behind the files.
SHIP_INTERVAL = 0.5

# Sections a reload cannot change in a running process.
_RESTART_ONLY = ("server", "upstream", "cache", "audit", "rate_limits", "shared_state")


@dataclass(frozen=True)
class Snapshot:
    """What a request reads once, at its start, and keeps to its end."""

    settings: Settings
    authenticator: Authenticator
    cors_origins: frozenset[str]
    # Headers that decide who calls, for whom or how: each may be sent at most once.
    single_headers: frozenset[bytes]


class _JwksRegistry:
    """JWKS sources that outlive reloads, so a reload does not empty the key caches."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        # Keyed by the issuer's settings as JSON: same settings, same cached keys.
        self._sources: dict[bytes, JwksSource] = {}
        self.session: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None:
            # No cookie jar: nothing a JWKS endpoint sets is kept or sent back.
            self.session = aiohttp.ClientSession(
                raise_for_status=False, cookie_jar=aiohttp.DummyCookieJar()
            )
        return self.session

    def verifier(self, issuers: list[IssuerSettings]) -> CallerTokenVerifier:
        sources: dict[bytes, JwksSource] = {}
        for issuer in issuers:
            key = msgspec.json.encode(issuer)
            sources[key] = self._sources.get(key) or JwksSource(
                issuer, self._session, self._metrics
            )
        self._sources = sources
        return CallerTokenVerifier({s.settings.issuer: s for s in sources.values()})

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None


T = TypeVar("T")


async def _within(seconds: float, step: Awaitable[None], what: str) -> None:
    """``step``, given up after ``seconds`` (said): a stop that waits for it never ends."""
    try:
        async with asyncio.timeout(seconds):
            await step
    except TimeoutError:
        log.warning("stop_step_abandoned", step=what, after_seconds=seconds)


# At most this many other chains named in a start record (a deployment's replicas).
_WITNESSED_CHAINS = 256


class Runtime:
    def __init__(
        self,
        settings: Settings,
        signer: CheckpointSigner | None = None,
        config_path: str | Path | None = None,
    ) -> None:
        self.metrics = Metrics()
        self._jwks = _JwksRegistry(self.metrics)
        self.snapshot = self._snapshot(settings)
        limits = settings.rate_limits
        self.caller_limits = TokenBuckets(limits.per_caller) if limits.per_caller else None
        self.end_user_limits = TokenBuckets(limits.per_end_user) if limits.per_end_user else None
        self.auth_failures = TokenBuckets(limits.auth_failures)
        self.anonymous_records = RecordBudget(limits.unauthenticated_records)
        # Records of a known caller's refusals at a privileged route: one a second each.
        self.route_refusals = RepeatBudget()
        self.config_path = config_path
        upstream = settings.upstream
        current_key = ApiKeySource.current_key(upstream, self.metrics)
        next_key = ApiKeySource.next_key(upstream, self.metrics)
        for source in (current_key, next_key):
            if source is not None:
                source.on_change = self._api_key_changed
        self.upstream = UpstreamClient(upstream, current_key, next_key, self.metrics)
        self.cache = (
            TokenCache(settings.cache.max_entries, settings.cache.min_remaining_ratio)
            if settings.cache.enabled
            else None
        )
        cache = self.cache
        if cache is not None:
            self.metrics.cache_entries.set_function(lambda: len(cache))
        self.shared: SharedState | None = None
        if settings.shared_state is not None:
            url, key = shared_state_secrets(settings.shared_state)
            previous, following = shared_state_other_keys(settings.shared_state, key)
            self.shared = SharedState(
                settings.shared_state,
                url,
                key,
                self.metrics,
                previous_key=previous,
                next_key=following,
            )
        self.minting = Minter(
            self.upstream,
            self.cache,
            self.metrics,
            self.shared,
            # Unique to this process: a lease is released only by its holder. The instance
            # id is unset by default (the writer makes one), so every replica held as "",
            # and each could release another's lease and let a third mint too.
            holder=secrets.token_hex(16),
            min_remaining_ratio=settings.cache.min_remaining_ratio,
        )
        self.audit = AuditWriter(
            settings.audit, signer, metrics=self.metrics, config_digest=config_digest(settings)
        )
        self._recording: set[asyncio.Task[None]] = set()
        self._witnessing: Periodic | None = None
        self._witnessed: list[ChainPosition] = []
        self.store = open_store(settings.audit)
        self.store_executor: Executor | None = None
        self.shipper: Shipping | None = None
        self.retention: Retention | None = None
        if self.store is not None:
            store_settings = settings.audit.store
            # The store's own threads (readers, retention, sync mode's shipping): a hung
            # database never holds the writer's fsync up.
            self.store_executor = DaemonThreadExecutor(
                max_workers=store_settings.pool_size, thread_name_prefix="audit-store"
            )
            audit = self.audit
            if store_settings.mode == "sync":
                # Tokens wait for their rows: shipped here, at once, with nothing between.
                self.shipper = Shipper(
                    self.store,
                    Path(settings.audit.dir),
                    audit.instance_id,
                    lambda: audit.seq,
                    executor=self.store_executor,
                    metrics=self.metrics,
                    batch_records=store_settings.batch_records,
                    min_interval_seconds=0.0,
                    prune_shipped=store_settings.prune_shipped_files,
                )
                audit.release_after = self.shipper.shipped
                # The writer's lines go to it as they are made durable (not read back).
                audit.on_durable = self.shipper.notify
            else:
                # Nothing waits for the rows: a process of its own, at idle priority, ships
                # them without sharing this one's GIL or taking its core (ship_worker).
                self.shipper = ShipperProcess(
                    settings.audit,
                    audit.instance_id,
                    lambda: audit.seq,
                    metrics=self.metrics,
                    store_description=self.store.description,
                    log_level=settings.logging.level,
                    interval_seconds=SHIP_INTERVAL,
                    environment=shipping_environment(settings, os.environ),
                )
            if store_settings.retention_days is not None:
                self.retention = Retention(
                    self.store,
                    executor=self.store_executor,
                    days=store_settings.retention_days,
                    record=audit.append_record,
                )
        self.revocations = Revocations(
            self.shared,
            self.cache,
            self._record_lost_bar,
            self._recorded_bars if self.store is not None else None,
        )
        revocations = self.revocations
        self.metrics.revocations_in_force.set_function(lambda: revocations.count)
        service_limits = Limits(
            self.caller_limits,
            self.end_user_limits,
            self.anonymous_records,
            shared=self.shared,
            shared_caller=_shared_limit("per_caller", limits.per_caller, settings),
            shared_end_user=_shared_limit("per_end_user", limits.per_end_user, settings),
        )
        self.service = TokenService(
            self.minting,
            self.audit,
            service_limits,
            self.metrics,
            STATUS_OF,
            self.revocations,
        )
        self.unrecorded = UnrecordedCounts(
            self.audit,
            {
                "rate_limited": service_limits.limited_records,
                "route_refused": self.route_refusals,
            },
            self.anonymous_records,
        )

    def _snapshot(self, settings: Settings) -> Snapshot:
        authenticator = Authenticator(
            settings.clients,
            settings.proxies,
            self._jwks.verifier(settings.issuers),
            settings.tokens.default_expires_in,
        )
        single = {
            b"authorization",
            b"x-on-behalf-of",
            b"origin",
            b"content-type",
            b"content-encoding",
            b"content-length",
            b"cache-control",
            b"transfer-encoding",
        }
        single.update(proxy.user_header.lower().encode() for proxy in settings.proxies)
        return Snapshot(settings, authenticator, settings.cors_origins(), frozenset(single))

    @property
    def settings(self) -> Settings:
        return self.snapshot.settings

    async def start(self) -> None:
        await self.upstream.start()
        await self.audit.start(witnessed=await self._chains_running())
        self.unrecorded.start()
        await self._make_embedded_store()
        if self.shipper is not None:
            self.shipper.start()
        if self.retention is not None:
            self.retention.start()
        if (shared := self.settings.shared_state) is not None:
            await self.revocations.start(shared.revocation_refresh_seconds)
        if self.store is not None and self.settings.audit.sink == "file":
            self._witnessing = Periodic(
                "audit-witness", self.settings.audit.heartbeat_seconds, self._witness
            )
            self._witnessing.start()
        log.info("broker_started", **self.summary())
        for warning in cleartext_warnings(self.settings) + secret_cleartext_warnings(self.settings):
            log.warning("cleartext_network_setting", detail=warning)
        for warning in unanchored_warnings(self.settings):
            log.warning("audit_heads_not_logged", detail=warning)
        for warning in callerless_warnings(self.settings):
            log.warning("no_callers_configured", detail=warning)

    async def _witness(self) -> None:
        """Every heartbeat, on the trail: the chains the store shows running beside this
        one (a chain that started after this one's start is named by no start record)."""
        try:
            chains = await self._chains_running()
            if not chains or chains == self._witnessed:
                return
            await self.audit.append_record(
                "witness", WitnessBody(time=now_rfc3339_millis(), chains=chains)
            )
        except AuditUnavailable:
            return  # said by the writer; the next heartbeat tries again
        except Exception as exc:
            # A bug here must not end the witnessing for the life of the process unseen.
            log.error("audit_witness_failed", error_type=type(exc).__name__, exc_info=exc)
            return
        self._witnessed = chains

    async def _chains_running(self) -> list[ChainPosition]:
        """The other chains the audit store shows running (a line within two heartbeats:
        a running broker signs one at least every heartbeat), for this chain's start and
        witness records to name: none without a store, or if it cannot answer within its
        timeout (the start does not wait on it for longer)."""
        store = self.store
        if store is None:
            return []
        since = datetime.now(UTC) - timedelta(seconds=2 * self.settings.audit.heartbeat_seconds)
        try:
            heads = await self._on_store_thread(
                lambda: store.recent_heads(since, _WITNESSED_CHAINS)
            )
        except (StoreError, StoreDataError, TimeoutError) as exc:
            # A store away (one not made yet has no chain to name): this start names none.
            log.info("audit_chains_not_witnessed", error=str(exc) or type(exc).__name__)
            return []
        return [head for head in heads if head.instance != self.audit.instance_id]

    async def _recorded_bars(self) -> list[Bar]:
        """The bars the audit store's revocation records leave standing, within the store's
        timeout (read at start; raises if the store cannot answer)."""
        return await self._on_store_thread(self._standing_in_store)

    async def _on_store_thread(self, work: Callable[[], T]) -> T:
        """``work`` on the audit store's threads, within the store's timeout (TimeoutError
        past it): what the start and the witnessing ask of the store."""
        assert self.store_executor is not None
        async with asyncio.timeout(self.settings.audit.store.timeout_seconds):
            return await asyncio.get_running_loop().run_in_executor(self.store_executor, work)

    def _standing_in_store(self) -> list[Bar]:
        """On the store's thread: its pages are read as they are folded. The embedded store
        holds this replica's records only, not a lift made through another replica: only
        its bars recent enough that such a lift's cutoff is still in the shared store
        (``EMBEDDED_HORIZON``) are taken, or a lifted bar would come back once its cutoff
        had gone."""
        assert self.store is not None
        horizon = None if self.store.dialect is POSTGRESQL else time.time() - EMBEDDED_HORIZON
        return standing_bars(self.store.revocation_lines(RECORDED_LIMIT), horizon=horizon)

    async def _make_embedded_store(self) -> None:
        """Make the embedded store's schema before serving. Left to the shipping process (a
        fresh interpreter, 0.5-2 s to start), GET /audit/events answered 503 "no such table"
        for as long after every start. A local file: milliseconds. PostgreSQL is left to the
        shipping, as a network call that could hold the start up."""
        if self.store is None or self.store_executor is None or self.store.dialect is not SQLITE:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(
                self.store_executor, self.store.migrate
            )
        except (StoreError, StoreDataError) as exc:
            # The shipping says so again, and retries; the reads answer 503 meanwhile.
            log.warning("audit_store_not_made", error=str(exc))

    def summary(self) -> dict[str, object]:
        """What an operator needs to see at start to know which broker this is (no secrets:
        key sources are named, never read out)."""
        settings = self.settings
        upstream, audit, cache, limits = (
            settings.upstream,
            settings.audit,
            settings.cache,
            settings.rate_limits,
        )
        return {
            "version": __version__,
            "config": str(self.config_path) if self.config_path is not None else None,
            "clients": len(settings.clients),
            "issuers": len(settings.issuers),
            "proxies": len(settings.proxies),
            "upstream": upstream.base_url,
            "exchange_path": upstream.exchange_path,
            "audit_sink": audit.sink,
            "audit_dir": audit.dir if audit.sink == "file" else None,
            "instance": self.audit.instance_id,
            "audit_store": self.store.description if self.store is not None else None,
            "audit_store_mode": audit.store.mode if self.store is not None else None,
            "signing_key_id": self.audit.signing_key_id,
            "cache": msgspec.to_builtins(cache),
            "rate_limits": msgspec.to_builtins(limits),
        }

    async def close(self) -> None:
        await self.revocations.close()
        if self._witnessing is not None:
            await self._witnessing.close()
        if self._recording:
            await asyncio.gather(*self._recording, return_exceptions=True)
        await self.unrecorded.close()
        if self.retention is not None:
            await self.retention.close()
        await self.audit.close()
        # A store whose server hangs (stopped, or stuck on its disk, rather than gone: its
        # kernel still acknowledges, so neither keepalives nor tcp_user_timeout end a call)
        # answers no call, within its timeouts or not. In sync mode the stop waited for it
        # for ever, the chain sealed but the process never done; the seal is shipped from
        # the files by the next start's shipping instead. (The shipping process bounds its
        # own last pass.)
        timeout = self.settings.audit.store.timeout_seconds
        if isinstance(self.shipper, Shipper):
            await _within(2 * timeout, self.shipper.close(), "the last shipping pass")
        elif self.shipper is not None:
            await self.shipper.close()
        if self.store is not None and self.store_executor is not None:
            closing = asyncio.get_running_loop().run_in_executor(
                self.store_executor, self.store.close
            )
            await _within(timeout, closing, "closing the audit store's connections")
            self.store_executor.shutdown(wait=False, cancel_futures=True)
        await self.upstream.close()
        await self._jwks.close()
        if self.shared is not None:
            await self.shared.close()

    def _record_lost_bar(self, bar: Bar) -> None:
        """On the trail: a bar the shared store lost without a lift (a restart without its
        data, a flush, a deletion), which this replica keeps and writes back."""
        self.metrics.revocations_written_back.inc()
        self.record_later(
            "revocation",
            RevocationBody(
                time=now_rfc3339_millis(),
                request_id="",
                by=bar.by,
                action="restore",
                kind=bar.kind,
                value=bar.value,
                since=rfc3339(bar.since),
                reason=bar.reason or None,
                scope=self.revocations.scope,
            ),
        )

    def record_later(self, kind: RecordType, body: msgspec.Struct) -> None:
        """An audit record of something that happened outside a request (a reload, a key
        rotation): written in the background; a failure is logged, as nobody waits."""

        async def write() -> None:
            try:
                await self.audit.append_record(kind, body)
            except AuditUnavailable:
                log.error("audit_record_not_written", type=kind)

        try:
            task = asyncio.get_running_loop().create_task(write())
        except RuntimeError:
            log.error("audit_record_not_written", type=kind, why="no event loop")
            return
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    def _api_key_changed(self, which: str, key_sha256: str, reason: str) -> None:
        body = ApiKeyBody(
            time=now_rfc3339_millis(), which=which, key_sha256=key_sha256, reason=reason
        )
        self.record_later("api_key", body)

    def _record_reload(
        self, result: Literal["applied", "rejected"], new: Settings | None, restart: list[str]
    ) -> None:
        body = ConfigBody(time=now_rfc3339_millis(), result=result, needs_restart=restart)
        if new is not None:
            before, after = _callers(self.snapshot.settings), _callers(new)
            body.config_digest = config_digest(new)
            body.callers_added = sorted(after.keys() - before.keys())
            body.callers_removed = sorted(before.keys() - after.keys())
            body.callers_changed = sorted(
                name for name in after.keys() & before.keys() if after[name] != before[name]
            )
        self.record_later("config", body)

    def reload(self) -> bool:
        """Re-read the config file; keep the running config if the new one is invalid."""
        if self.config_path is None:
            return False
        try:
            settings = load_settings(self.config_path)
        except ConfigError as exc:
            log.error("config_reload_rejected", error=str(exc), kept="running config")
            self.metrics.config_reloads.labels(result="rejected").inc()
            self._record_reload("rejected", None, [])
            return False
        ignored = [
            name
            for name in _RESTART_ONLY
            if getattr(settings, name) != getattr(self.snapshot.settings, name)
        ]
        if settings.logging != self.snapshot.settings.logging:
            set_level(settings.logging.level)
            # At warning level, so that it shows whichever way the level moved.
            log.warning(
                "logging_reconfigured",
                level=settings.logging.level,
                was=self.snapshot.settings.logging.level,
            )
        if ignored:
            log.warning("config_reload_needs_restart", sections=ignored)
        kept = self.snapshot.settings
        settings = msgspec.structs.replace(
            settings, **{name: getattr(kept, name) for name in _RESTART_ONLY}
        )
        try:
            snapshot = self._snapshot(settings)
        except ConfigError as exc:
            log.error("config_reload_rejected", error=str(exc), kept="running config")
            self.metrics.config_reloads.labels(result="rejected").inc()
            self._record_reload("rejected", None, [])
            return False
        self._record_reload("applied", settings, ignored)
        self.snapshot = snapshot
        log.info("config_reloaded", clients=len(settings.clients))
        for warning in callerless_warnings(settings):
            log.warning("no_callers_configured", detail=warning)
        self.metrics.config_reloads.labels(result="applied").inc()
        return True
