"""The broker's long-lived parts, built from settings, started and stopped together, and the
reloadable part (callers and their policies) swapped atomically on SIGHUP."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog

from broker.audit import AuditWriter, CheckpointSigner
from broker.cache import TokenCache
from broker.callers import ClientKeyAuthenticator
from broker.config import ConfigError, Settings, load_settings
from broker.credentials import ApiKeySource
from broker.issuance import Issuer
from broker.metrics import Metrics
from broker.upstream import UpstreamClient

log = structlog.get_logger("broker.runtime")

# Sections a reload cannot change in a running process.
_RESTART_ONLY = ("server", "upstream", "cache", "audit")


@dataclass(frozen=True)
class Snapshot:
    """What a request reads once, at its start, and keeps to its end."""

    settings: Settings
    authenticator: ClientKeyAuthenticator

    @classmethod
    def of(cls, settings: Settings) -> Snapshot:
        return cls(
            settings, ClientKeyAuthenticator(settings.clients, settings.tokens.default_expires_in)
        )


class Runtime:
    def __init__(
        self,
        settings: Settings,
        signer: CheckpointSigner | None = None,
        config_path: str | Path | None = None,
    ) -> None:
        self.metrics = Metrics()
        self.snapshot = Snapshot.of(settings)
        self.config_path = config_path
        upstream = settings.upstream
        self.upstream = UpstreamClient(
            upstream,
            ApiKeySource.current_key(upstream, self.metrics),
            ApiKeySource.next_key(upstream, self.metrics),
            self.metrics,
        )
        self.cache = (
            TokenCache(settings.cache.max_entries, settings.cache.min_remaining_ratio)
            if settings.cache.enabled
            else None
        )
        cache = self.cache
        if cache is not None:
            self.metrics.cache_entries.set_function(lambda: len(cache))
        self.issuer = Issuer(self.upstream, self.cache, self.metrics)
        self.audit = AuditWriter(settings.audit, signer, metrics=self.metrics)

    @property
    def settings(self) -> Settings:
        return self.snapshot.settings

    async def start(self) -> None:
        await self.upstream.start()
        await self.audit.start()

    async def close(self) -> None:
        await self.audit.close()
        await self.upstream.close()

    def reload(self) -> bool:
        """Re-read the config file; keep the running config if the new one is invalid."""
        if self.config_path is None:
            return False
        try:
            settings = load_settings(self.config_path)
        except ConfigError as exc:
            log.error("config_reload_rejected", error=str(exc), kept="running config")
            self.metrics.config_reloads.labels(result="rejected").inc()
            return False
        ignored = [
            name
            for name in _RESTART_ONLY
            if getattr(settings, name) != getattr(self.snapshot.settings, name)
        ]
        if ignored:
            log.warning("config_reload_needs_restart", sections=ignored)
        kept = self.snapshot.settings
        settings = Settings(
            server=kept.server,
            upstream=kept.upstream,
            cache=kept.cache,
            audit=kept.audit,
            tokens=settings.tokens,
            logging=settings.logging,
            clients=settings.clients,
        )
        self.snapshot = Snapshot.of(settings)
        log.info("config_reloaded", clients=len(settings.clients))
        self.metrics.config_reloads.labels(result="applied").inc()
        return True
