"""The MKA1 API key: from the environment, or from a file re-read when it is replaced.

An empty or unreadable replacement keeps the last good key (and says why in the log), so a
botched rotation never leaves the broker without a key.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import structlog

from broker.config import ConfigError, Secret, UpstreamSettings
from broker.metrics import Metrics

log = structlog.get_logger("broker.credentials")


class ApiKeySource:
    def __init__(
        self,
        *,
        env: str | None,
        file: str | None,
        check_seconds: float,
        metrics: Metrics | None = None,
        name: str = "api_key",
    ) -> None:
        self._env, self._file = env, file
        self._check_seconds = check_seconds
        self._metrics = metrics
        self._name = name
        self._next_check = 0.0
        self._stamp: tuple[int, int, int] | None = None
        self._key = self._initial()

    @classmethod
    def current_key(cls, settings: UpstreamSettings, metrics: Metrics | None) -> ApiKeySource:
        return cls(
            env=settings.api_key_env,
            file=settings.api_key_file,
            check_seconds=settings.api_key_check_seconds,
            metrics=metrics,
        )

    @classmethod
    def next_key(cls, settings: UpstreamSettings, metrics: Metrics | None) -> ApiKeySource | None:
        if settings.api_key_next_env is None and settings.api_key_next_file is None:
            return None
        return cls(
            env=settings.api_key_next_env,
            file=settings.api_key_next_file,
            check_seconds=settings.api_key_check_seconds,
            metrics=metrics,
            name="api_key_next",
        )

    def _initial(self) -> Secret:
        where = f"upstream.{self._name}_env" if self._env else f"upstream.{self._name}_file"
        if self._env is not None:
            value = os.environ.get(self._env, "").strip()
            if not value:
                raise ConfigError(f"{where}: variable {self._env} is unset or empty")
            return Secret(value)
        assert self._file is not None
        secret, problem = self._read()
        if secret is None:
            raise ConfigError(f"{where}: {self._file} {problem}")
        return secret

    def _read(self) -> tuple[Secret | None, str]:
        assert self._file is not None
        try:
            stat = os.stat(self._file)
            text = Path(self._file).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None, "does not exist"
        except (OSError, UnicodeDecodeError):
            return None, "cannot be read"
        self._stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if not text:
            return None, "is empty"
        return Secret(text), ""

    def get(self) -> Secret:
        """The key to use now; a replaced file is picked up within ``check_seconds``."""
        if self._file is None:
            return self._key
        now = time.monotonic()
        if now < self._next_check:
            return self._key
        self._next_check = now + self._check_seconds
        try:
            stat = os.stat(self._file)
            stamp: tuple[int, int, int] | None = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        except OSError:
            stamp = None
        if stamp is not None and stamp == self._stamp:
            return self._key
        value, problem = self._read()
        if value is None:
            log.warning(
                "api_key_file_unusable", file=self._file, problem=problem, kept="last good key"
            )
            if self._metrics:
                self._metrics.api_key_reloads.labels(result="kept_old").inc()
            return self._key
        if value.reveal() != self._key.reveal():
            log.info("api_key_reloaded", file=self._file, which=self._name)
            if self._metrics:
                self._metrics.api_key_reloads.labels(result="reloaded").inc()
        self._key = value
        return self._key
