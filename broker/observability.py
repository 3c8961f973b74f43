"""Structured JSON logs on stdout, with the request id carried in contextvars.

Tokens never belong in a log line. As a last line of defence, any string value shaped like
a JWT is replaced before rendering, whatever logged it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import re
import sys
import threading
import time
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import unquote

import msgspec
import structlog

from broker.clock import now_rfc3339_micros
from broker.rules import CLIENT_KEY_PREFIX, CLIENT_KEY_SHAPE, JWT_SHAPE

_ENCODER = msgspec.json.Encoder()


# Secret values this process holds (API keys, store URLs and their passwords): a line that
# holds one shows "[redacted]" instead, whoever wrote it. A library can echo what it was
# given: libpq's error for a malformed URL quotes the URL, password and all, and
# psycopg_pool logs it.
_SECRETS: list[str] = []
# The same, oldest first: a key file rotated for ever keeps only the newest this many.
_HELD: dict[str, None] = {}
_MAX_SECRETS = 256
# Shorter values are too likely to be ordinary text ("[redacted]" in every other word).
_MIN_SECRET_LENGTH = 8


def never_log(*values: str | None) -> None:
    """Add ``values`` to what no log line of this process may show."""
    added = False
    for value in values:
        if value is not None and len(value) >= _MIN_SECRET_LENGTH and value not in _HELD:
            _HELD[value] = None
            added = True
            while len(_HELD) > _MAX_SECRETS:
                del _HELD[next(iter(_HELD))]
    if added:
        # Longest first: a URL is replaced whole before the password inside it.
        _SECRETS[:] = sorted(_HELD, key=len, reverse=True)


# A URL's user-info, up to its last "@" before the path: read by hand, because a URL that
# urlsplit refuses ("[bad") is exactly the one a driver quotes back.
_USER_INFO = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://(?P<info>[^/?#]*)@")


def url_passwords(value: str) -> tuple[str, ...]:
    """The password in a URL's user-info, as written and percent-decoded (none if none)."""
    found = _USER_INFO.match(value)
    if found is None or ":" not in found.group("info"):
        return ()
    password = found.group("info").split(":", 1)[1]
    return (password, unquote(password))


def _redact(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    if "eyJ" in value:
        value = JWT_SHAPE.sub("[redacted-jwt]", value)
    if CLIENT_KEY_PREFIX in value:
        value = CLIENT_KEY_SHAPE.sub("[redacted-key]", value)
    for secret in _SECRETS:
        if secret in value:
            value = value.replace(secret, "[redacted]")
    return value


def redact_jwts(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in event_dict.items():
        event_dict[key] = _redact(value)
    return event_dict


class _BestEffortStdout:
    """stdout that never raises: a full disk or a closed pipe under the log collector must
    not turn a token request into a 500. The audit trail, not this log, is the record.

    One buffer for every line (ours, our libraries', the stdout audit sink), so lines keep
    their order. A log line is written at once (``flush``); an access line waits for the
    next flush, at most ``ACCESS_FLUSH_SECONDS``: with ``PYTHONUNBUFFERED`` (the image sets
    it) each line was a write(2) of its own, a cost that showed in every cache hit."""

    def __init__(self) -> None:
        self._pending: list[str] = []
        self._lock = threading.Lock()
        self._timer: asyncio.TimerHandle | None = None

    def write(self, text: str) -> int:
        with self._lock:
            self._pending.append(text)
        return len(text)

    def write_soon(self, text: str) -> None:
        """Buffer ``text`` and make sure a flush comes within ACCESS_FLUSH_SECONDS."""
        with self._lock:
            self._pending.append(text)
            if self._timer is not None:
                return
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                self._timer = loop.call_later(ACCESS_FLUSH_SECONDS, self.flush)
                return
        self.flush()

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
            # Not cancelled (this may run on another thread): a spare flush finds nothing.
            self._timer = None
        if not pending:
            return
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.write("".join(pending))
            sys.stdout.flush()


# How long an access line may wait in the buffer for others to share its write.
ACCESS_FLUSH_SECONDS = 0.02


def _serialize(obj: Any, **_: Any) -> str:
    return _ENCODER.encode(obj).decode()


_LEVELS = logging.getLevelNamesMapping()
# The minimum level, changed in place by set_level (a config reload).
_minimum = [logging.INFO]


def _below_level(
    _logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    if _LEVELS.get(method.upper(), logging.INFO) < _minimum[0]:
        raise structlog.DropEvent
    return event_dict


def debugging() -> bool:
    """Whether debug lines are kept: for the hot path to skip building one that is not."""
    return _minimum[0] <= logging.DEBUG


def set_level(level: str) -> None:
    """The minimum level of every log line from now on, ours and our libraries'."""
    _minimum[0] = _LEVELS[level.upper()]
    logging.getLogger().setLevel(_minimum[0])


# Set by configure_logging: the component named on lines that bind none, and whether
# access lines may bypass structlog (not before logging is configured).
_component = ["broker"]
_configured = [False]
OUT = _BestEffortStdout()
atexit.register(OUT.flush)


class EveryInterval:
    """When a repeated event deserves its log line: at most once per key per ``seconds``,
    with how many happened since the last line (this one included), so that a flood costs
    one line, not one per event. Keys are a fixed, small set (reasons, kinds)."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._logged_at: dict[str, float] = {}
        self._since: dict[str, int] = {}

    def due(self, key: str) -> int | None:
        """The count to report if a line is due now, else None (the event is counted)."""
        count = self._since.get(key, 0) + 1
        now = time.monotonic()
        if now - self._logged_at.get(key, float("-inf")) < self._seconds:
            self._since[key] = count
            return None
        self._logged_at[key] = now
        self._since[key] = 0
        return count

    def fault(self, key: str, logger: Any, event: str, exc: BaseException) -> None:
        """A fault of the broker's own in a loop that goes on: logged with its traceback
        when a line is due for ``key``, with how many there were since the last."""
        if (count := self.due(key)) is not None:
            logger.error(event, error_type=type(exc).__name__, events=count, exc_info=exc)


class AccessLine(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An access line's fields, in the order they are written; ``caller`` once known."""

    method: str
    path: str
    status: int
    code: str | None
    duration_ms: float
    request_id: str
    caller: str | None = None
    component: str
    event: str
    level: str
    timestamp: str


# A path in an access line, at most: any path reaches the 404 answer, up to the 32 KiB a
# head may have, and a line that long is split by the container runtime's log driver
# (16 KiB) into pieces that are no longer JSON.
MAX_LOGGED_PATH = 512


def _logged_path(path: str) -> str:
    """The path as an access line shows it: JWTs, client keys and the secrets this process
    holds redacted first (a cut must not leave half of one), then cut to MAX_LOGGED_PATH
    characters, saying how long it was. Only JWTs were: a client key or the MKA1 API key
    that a client put in a path (a base URL joined wrongly) was logged as sent."""
    path = _redact(path)
    if len(path) <= MAX_LOGGED_PATH:
        return path
    return f"{path[:MAX_LOGGED_PATH]}...({len(path)} characters)"


def access_line(
    method: str,
    path: str,
    status: int,
    code: str | None,
    duration_ms: float,
    request_id: str,
    caller: str | None,
) -> None:
    """One access line: the same JSON, fields and guarantees as any other line (level
    filter, component, JWT redaction of what a client chose: method, path), rendered from a
    Struct by msgspec instead of through structlog's generic processor chain, which cost
    more than a cache hit's own checks (issue 12). The request id and caller come as
    arguments: copying the whole log context for them cost as much again."""
    if _minimum[0] > logging.INFO:
        return
    line = AccessLine(
        method=_redact(method),
        path=_logged_path(path),
        status=status,
        code=code,
        duration_ms=duration_ms,
        request_id=request_id,
        caller=caller,
        component=_component[0],
        event="request",
        level="info",
        timestamp=now_rfc3339_micros(),
    )
    if not _configured[0]:
        # Before logging is set up: structlog's own rendering, which adds the rest itself.
        fields = msgspec.structs.asdict(line)
        for added in ("component", "event", "level", "timestamp"):
            del fields[added]
        if caller is None:
            del fields["caller"]
        structlog.get_logger("broker.access").info("request", **fields)
        return
    OUT.write_soon(_ENCODER.encode(line).decode() + "\n")


def configure_logging(level: str = "info", component: str = "broker") -> None:
    """JSON lines on stdout for our logs and for the stdlib loggers of our libraries. Every
    line names its ``component`` (``broker`` or ``simulator``): under ``broker dev`` both run
    in one process, and a request's own binding (contextvars) says which served it."""
    set_level(level)
    _component[0] = component
    _configured[0] = True

    def add_component(
        _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        event_dict.setdefault("component", component)
        return event_dict

    shared: list[Any] = [
        _below_level,
        structlog.contextvars.merge_contextvars,
        add_component,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            redact_jwts,
            structlog.processors.JSONRenderer(serializer=_serialize),
        ],
        # Filtered by _below_level instead, so that a reload can change the level of
        # loggers already cached.
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.WriteLoggerFactory(file=OUT),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact_jwts,
            structlog.processors.JSONRenderer(serializer=_serialize),
        ],
    )
    handler = logging.StreamHandler(OUT)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_minimum[0])
    # Access logs are ours (one line per request with its id); httpx logs every URL at INFO.
    for noisy in ("uvicorn.access", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
