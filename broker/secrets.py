"""Every secret the broker holds, and where it comes from: the MKA1 API key (from the
environment, or from a file re-read when it is replaced), the audit signing key, and
``Secret``, a value that never shows itself; and the audit store's URL, which may hold a
password.

An empty or unreadable replacement API key keeps the last good key (and says why in the
log), so a botched rotation never leaves the broker without a key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
from collections.abc import Callable

import structlog

from broker.audit.signing import CheckpointSigner, SigningKeyError, load_private_key
from broker.audit.store import AuditStore, StoreError, open_url, url_problem
from broker.config import (
    AuditSettings,
    ConfigError,
    Settings,
    SharedStateSettings,
    UpstreamSettings,
    in_clear,
    is_loopback_host,
)
from broker.metrics import Metrics
from broker.observability import never_log, url_passwords
from broker.regular_files import SECRET_MAX_BYTES, read_secret_text, read_small_file

log = structlog.get_logger("broker.secrets")


class Secret:
    """A secret value that never shows itself in a repr, a log line or a traceback."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        # Nor through a library that echoes it (a driver's error quoting its URL).
        never_log(value, *url_passwords(value))

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


# The key goes in an Authorization header: a second line, a space inside it or a control
# character made every call to the exchange raise in aiohttp (header injection refused),
# and every miss a 500.
_NOT_HEADER_SAFE = "holds more than one line, a space or a character outside printable ASCII"


def _header_safe(key: str) -> bool:
    return key.isascii() and key.isprintable() and " " not in key


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
        # Told (source name, new key's SHA-256, why) when the key in use changes: an audit
        # record says when each key came into use, never the key.
        self.on_change: Callable[[str, str, str], None] | None = None

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
            if not _header_safe(value):
                raise ConfigError(f"{where}: variable {self._env} {_NOT_HEADER_SAFE}")
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
            text = read_secret_text(self._file)
        except FileNotFoundError:
            return None, "does not exist"
        except (OSError, UnicodeDecodeError):
            return None, "cannot be read"
        self._stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if not text:
            return None, "is empty"
        if not _header_safe(text):
            return None, _NOT_HEADER_SAFE
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
        changed = value.reveal() != self._key.reveal()
        self._key = value
        if changed:
            log.info("api_key_reloaded", file=self._file, which=self._name)
            if self._metrics:
                self._metrics.api_key_reloads.labels(result="reloaded").inc()
            if self.on_change is not None:
                digest = hashlib.sha256(value.reveal().encode()).hexdigest()
                self.on_change(self._name, digest, "file replaced")
        return self._key


def resolve_signing_key(audit: AuditSettings) -> bytes | None:
    """The checkpoint signing key's PEM bytes, or None when none is configured."""
    if audit.signing_key_env is not None and audit.signing_key_file is not None:
        raise ConfigError("audit: set at most one of signing_key_env or signing_key_file")
    if audit.signing_key_env is not None:
        value = os.environ.get(audit.signing_key_env, "").strip()
        if not value:
            raise ConfigError(
                f"audit.signing_key_env: variable {audit.signing_key_env} is unset or empty"
            )
        return value.encode()
    if audit.signing_key_file is not None:
        try:
            return read_small_file(audit.signing_key_file, SECRET_MAX_BYTES)
        except OSError:
            raise ConfigError(
                f"audit.signing_key_file: cannot read {audit.signing_key_file}"
            ) from None
    return None


def load_signer(settings: Settings) -> CheckpointSigner | None:
    pem = resolve_signing_key(settings.audit)
    if pem is None:
        return None
    try:
        return load_private_key(pem)
    except SigningKeyError as exc:
        where = "signing_key_file" if settings.audit.signing_key_file else "signing_key_env"
        raise ConfigError(f"audit.{where}: {exc}") from None


def _from_env_or_file(where: str, env: str | None, file: str | None) -> Secret:
    """A secret from ``env`` (a variable's name) or else ``file``, stripped and not empty;
    a ConfigError names ``where``_env or ``where``_file, never the value."""
    if env is not None:
        value = os.environ.get(env, "").strip()
        if not value:
            raise ConfigError(f"{where}_env: variable {env} is unset or empty")
        return Secret(value)
    assert file is not None
    try:
        value = read_secret_text(file)
    except (OSError, UnicodeDecodeError):
        raise ConfigError(f"{where}_file: cannot read {file}") from None
    if not value:
        raise ConfigError(f"{where}_file: {file} is empty")
    return Secret(value)


def store_url(audit: AuditSettings) -> Secret | None:
    """The PostgreSQL audit store's URL (it may hold a password), or None without one."""
    store = audit.store
    if store.url_env is None and store.url_file is None:
        return None
    url = _from_env_or_file("audit.store.url", store.url_env, store.url_file)
    if (problem := url_problem(url.reveal())) is not None:
        where = "url_env" if store.url_env is not None else "url_file"
        raise ConfigError(f"audit.store.{where}: {problem}")
    return url


def open_store(audit: AuditSettings) -> AuditStore | None:
    """The configured audit store (not yet connected), or None when there is none."""
    backend = audit.store_backend
    if backend == "none":
        return None
    timeout = audit.store.timeout_seconds
    if backend == "sqlite":
        return AuditStore.sqlite(audit.sqlite_path, timeout_seconds=timeout)
    url = store_url(audit)
    assert url is not None
    try:
        return open_url(url.reveal(), timeout_seconds=timeout, pool_size=audit.store.pool_size)
    except StoreError as exc:
        raise ConfigError(f"audit.store: {exc}") from None


def shared_state_secrets(shared: SharedStateSettings) -> tuple[Secret, bytes]:
    """The shared store's URL and its 256-bit encryption key."""
    url = _from_env_or_file("shared_state.url", shared.url_env, shared.url_file)
    if not url.reveal().startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("shared_state.url: must be a redis://, rediss:// or unix:// URL")
    key = _encryption_key(
        "shared_state.encryption_key", shared.encryption_key_env, shared.encryption_key_file
    )
    assert key is not None
    return url, key


def shared_state_other_keys(
    shared: SharedStateSettings, key: bytes
) -> tuple[bytes | None, bytes | None]:
    """The previous and the next encryption keys, while ``key`` is changed (None: not set).
    Neither may be ``key`` itself: that is a step of a change gone wrong (the new key not
    put where it belongs), which a replica should say at start, not take for a change."""
    others = []
    for other in ("previous", "next"):
        found = _encryption_key(
            f"shared_state.encryption_key_{other}",
            getattr(shared, f"encryption_key_{other}_env"),
            getattr(shared, f"encryption_key_{other}_file"),
        )
        if found is not None and hmac.compare_digest(found, key):
            raise ConfigError(
                f"shared_state.encryption_key_{other}: is encryption_key itself; set it only "
                "while the key is changed, to the other key"
            )
        others.append(found)
    return others[0], others[1]


def _encryption_key(where: str, env: str | None, file: str | None) -> bytes | None:
    """A 256-bit key, base64-encoded in ``env`` or ``file``; None if neither is set."""
    if env is None and file is None:
        return None
    encoded = _from_env_or_file(where, env, file)
    try:
        key = base64.b64decode(encoded.reveal(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise ConfigError(
            f"{where}: must be 32 random bytes, base64-encoded (head -c 32 /dev/urandom | base64)"
        )
    return key


def secret_cleartext_warnings(settings: Settings) -> list[str]:
    """What the stores' URLs (secrets: read here, never shown) send in clear across a
    network. Warned of at start and by check-config, as ``config.cleartext_warnings``."""
    found: list[str] = []
    if settings.shared_state is not None:
        shared, _ = shared_state_secrets(settings.shared_state)
        if in_clear(shared.reveal(), "redis://"):
            found.append(
                "shared_state.url is redis:// to a host that is not this machine: the store's "
                "password, the rate limits and the bars cross the network in clear (rediss:// "
                "for TLS; cached tokens are encrypted either way)"
            )
    if (store := store_url(settings.audit)) is not None and _postgres_in_clear(store.reveal()):
        found.append(
            "audit.store's URL reaches a host that is not this machine without sslmode=require "
            "(or verify-ca, verify-full): the database password and the audit records may "
            "cross the network in clear"
        )
    return found


def _postgres_in_clear(url: str) -> bool:
    from psycopg import conninfo

    params = conninfo.conninfo_to_dict(url)
    # No host, or a directory: a Unix socket. Several hosts: any one remote is enough.
    hosts = [host for host in str(params.get("host") or "").split(",") if host]
    remote = any(not host.startswith("/") and not is_loopback_host(host) for host in hosts)
    return remote and params.get("sslmode") not in {"require", "verify-ca", "verify-full"}
