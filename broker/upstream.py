"""The MKA1 exchange client: one pooled aiohttp session, a deadline, and error mapping.

Nothing the upstream says is passed through raw, and the API key never appears in an
exception: every failure becomes an UpstreamFailure with a fixed kind.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Literal

import aiohttp
import msgspec
import structlog

from broker.bodies import BodyTooLarge, read_bounded
from broker.config import UpstreamSettings
from broker.decoding import decode_untrusted
from broker.metrics import Metrics
from broker.observability import EveryInterval
from broker.policy import Grant
from broker.resilience import CircuitBreaker, full_jitter, parse_retry_after
from broker.secrets import ApiKeySource, Secret

log = structlog.get_logger("broker.upstream")

FailureKind = Literal[
    "rejected",  # 400: the upstream refused the request's content
    "credentials",  # 401/403: the broker's own API key is the problem
    "ip_denied",  # 403 inbound_ip_denied: the organisation's IP rules refuse the broker
    "refused",  # 404, 409, 410 and other 4xx: a wrong path or a state the upstream refuses
    "redirected",  # 3xx: never followed (the API key would go wherever it points)
    "rate_limited",  # 429
    "server_error",  # 5xx or another unexpected status
    "unreachable",  # refused connection, DNS, TLS
    "malformed",  # a 200 whose body is not {"token": "..."}, or a body over the bound
    "timeout",
    "circuit_open",  # failing fast while the upstream keeps failing
    "pool_exhausted",  # every pooled connection busy
]

_RETRY_AFTER_MAX = 300
# A token answer is a few KiB; anything much larger is not an answer to read whole.
MAX_RESPONSE_BYTES = 64 * 1024
# Field names the broker sends; only these are repeated from an upstream 400, never its text.
_REQUEST_FIELDS = frozenset({"audience", "externalUserId", "expiresIn", "permissions"})


class UpstreamFailure(Exception):
    def __init__(
        self,
        kind: FailureKind,
        *,
        status: int | None = None,
        message: str | None = None,
        retry_after: int | None = None,
        retry_after_header: str | None = None,
        latency_ms: float = 0.0,
        error: str | None = None,
    ) -> None:
        super().__init__(kind)
        # For the operator's log: an exception class and an OS reason, never upstream text.
        self.error = error
        self.kind = kind
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.retry_after_header = retry_after_header
        self.latency_ms = latency_ms


@dataclass(frozen=True, slots=True)
class Exchanged:
    token: str
    status: int
    latency_ms: float


class _ExchangeBody(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    audience: str
    external_user_id: str
    expires_in: int
    permissions: list[str] | None = None


class _TokenBody(msgspec.Struct, frozen=True):
    token: str


class _ErrorDetail(msgspec.Struct, frozen=True):
    path: str | list[str | int] | None = None


class _ErrorBody(msgspec.Struct, frozen=True):
    code: str | None = None
    details: list[_ErrorDetail] | None = None


_ENCODER = msgspec.json.Encoder()
_TOKEN_DECODER = msgspec.json.Decoder(_TokenBody)
_ERROR_DECODER = msgspec.json.Decoder(_ErrorBody)


def _error_body(body: bytes) -> _ErrorBody:
    try:
        return decode_untrusted(_ERROR_DECODER, body)
    except msgspec.DecodeError:
        return _ErrorBody()


def _rejected_fields(error: _ErrorBody) -> str | None:
    """The request fields an upstream 400 names, from a fixed list. Its message text is never
    repeated: it is the upstream's, and could echo anything we sent, in any encoding."""
    named: set[str] = set()
    for detail in error.details or ():
        path = detail.path
        first = path[0] if isinstance(path, list) and path else path
        if isinstance(first, str) and first in _REQUEST_FIELDS:
            named.add(first)
    return ", ".join(sorted(named)) or None


def _retry_after_seconds(value: str | None) -> int | None:
    seconds = parse_retry_after(value, cap=_RETRY_AFTER_MAX)
    return None if seconds is None else max(1, round(seconds))


_LOG_EVERY_SECONDS = 10.0
_HINTS = {
    "credentials": "the MKA1 API key was refused: check upstream.api_key_env / api_key_file",
    "ip_denied": "the MKA1 organisation's inbound IP rules refuse this broker's address: "
    "allow its egress address in the organisation's settings",
    "refused": "check upstream.base_url and upstream.exchange_path",
    "redirected": "the exchange answered with a redirect, which is never followed: "
    "check upstream.base_url (scheme, host, path)",
    "unreachable": "check upstream.base_url (host, port) and the network path to it",
}

RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
# Kinds that say the upstream is unwell; 400, 401 and 403 say nothing about its health.
# A redirect counts: the upstream (or the URL configured for it) is not answering as it must.
_BREAKER_KINDS = frozenset(
    {"rate_limited", "server_error", "unreachable", "malformed", "timeout", "redirected"}
)


class UpstreamClient:
    """Calls ``POST {base_url}{exchange_path}`` with the API key as bearer.

    Retries 429, 502, 503, 504 and connection errors with full-jitter backoff (honouring
    ``Retry-After``) inside one deadline per request; never 400, 401 or 403. A circuit
    breaker fails fast while the upstream keeps failing. With every pooled connection busy
    for ``pool_wait_seconds``, it answers at once instead of queueing.
    """

    def __init__(
        self,
        settings: UpstreamSettings,
        api_key: ApiKeySource,
        next_key: ApiKeySource | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._url = settings.base_url + settings.exchange_path
        self._api_key = api_key
        self._next_key = next_key
        self._metrics = metrics or Metrics()
        self.breaker = CircuitBreaker(
            settings.circuit_failure_threshold, settings.circuit_cooldown_seconds
        )
        self._slots = asyncio.Semaphore(settings.max_connections)
        self._failure_lines = EveryInterval(_LOG_EVERY_SECONDS)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self._settings.max_connections, enable_cleanup_closed=True
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            raise_for_status=False,
            skip_auto_headers=("User-Agent",),
            # Nothing the upstream sets is kept or replayed on the next exchange.
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def exchange(self, grant: Grant) -> Exchanged:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.deadline_seconds
        key = self._api_key.get()
        tried_next_key = False
        attempt = 0
        while True:
            if not self.breaker.allow():
                raise UpstreamFailure(
                    "circuit_open", retry_after=max(1, round(self.breaker.retry_after()))
                )
            remaining = deadline - loop.time()
            try:
                result = await self._attempt(
                    grant, key, min(self._settings.timeout_seconds, remaining)
                )
            except UpstreamFailure as failure:
                self._metrics.upstream_errors.labels(kind=failure.kind).inc()
                self._failure_log(failure)
                if failure.kind in _BREAKER_KINDS:
                    opened = self.breaker.opened_count
                    self.breaker.record_failure()
                    if self.breaker.opened_count > opened:
                        self._metrics.circuit_opened.inc()
                        log.error("upstream_circuit_opened", last_failure=failure.kind)
                else:
                    self.breaker.release_probe()
                if failure.status == 401 and self._next_key is not None and not tried_next_key:
                    tried_next_key = True
                    key = self._next_key.get()
                    log.warning("api_key_refused_trying_next_key")
                    continue
                if not self._retryable(failure) or attempt + 1 >= self._settings.max_attempts:
                    raise
                delay = parse_retry_after(failure.retry_after_header, cap=_RETRY_AFTER_MAX)
                if delay is not None and delay > self._settings.retry_after_max_seconds:
                    # Retrying sooner than asked would only spend the upstream's patience.
                    raise
                if delay is None:
                    delay = full_jitter(
                        attempt,
                        self._settings.backoff_base_seconds,
                        self._settings.backoff_max_seconds,
                    )
                if loop.time() + delay >= deadline:
                    raise
                attempt += 1
                self._metrics.upstream_retries.inc()
                await asyncio.sleep(delay)
                continue
            except BaseException:
                # No verdict (cancelled, or a fault of the broker's own): a half-open
                # circuit's probe must not stay taken, or every later exchange fails fast
                # for good without one call to the upstream.
                self.breaker.release_probe()
                raise
            self.breaker.record_success()
            if tried_next_key:
                log.warning("next_api_key_accepted", hint="promote api_key_next to api_key")
            return result

    def _failure_log(self, failure: UpstreamFailure) -> None:
        """One warning per kind per ``_LOG_EVERY_SECONDS``, naming the URL and the cause, so
        that a wrong URL, port or path shows at once, and a flood of failures stays one line."""
        if (count := self._failure_lines.due(failure.kind)) is None:
            return
        level = (
            log.error if failure.kind in ("credentials", "ip_denied", "redirected") else log.warning
        )
        level(
            "upstream_failure",
            url=self._url,
            kind=failure.kind,
            upstream_status=failure.status,
            error=failure.error,
            failures_since_last_line=count,
            hint=_HINTS.get(failure.kind),
        )

    @staticmethod
    def _retryable(failure: UpstreamFailure) -> bool:
        if failure.kind == "unreachable":
            return True
        return failure.status in RETRYABLE_STATUSES and failure.kind in (
            "rate_limited",
            "server_error",
        )

    async def _attempt(self, grant: Grant, key: Secret, seconds: float) -> Exchanged:
        assert self._session is not None, "UpstreamClient.start() was not awaited"
        body = _ENCODER.encode(
            _ExchangeBody(
                audience=grant.audience,
                external_user_id=grant.external_user_id,
                expires_in=grant.expires_in,
                permissions=list(grant.permissions) if grant.permissions is not None else None,
            )
        )
        headers = {
            "Authorization": f"Bearer {key.reveal()}",
            "X-On-Behalf-Of": grant.external_user_id,
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "mka1-token-broker",
        }
        if self._slots.locked():
            try:
                await asyncio.wait_for(self._slots.acquire(), self._settings.pool_wait_seconds)
            except TimeoutError:
                raise UpstreamFailure("pool_exhausted") from None
        else:
            # A free slot is taken at once (wait_for with a zero wait would refuse it).
            await self._slots.acquire()
        started = time.perf_counter()

        def elapsed() -> float:
            return round((time.perf_counter() - started) * 1000, 3)

        try:
            async with self._session.post(
                self._url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=max(seconds, 0.001)),
                # A redirect would carry the API key and the end user to wherever it points.
                allow_redirects=False,
            ) as response:
                status = response.status
                retry_after = response.headers.get("Retry-After")
                try:
                    payload = await read_bounded(response, MAX_RESPONSE_BYTES)
                except BodyTooLarge:
                    if status == 200:
                        raise UpstreamFailure(
                            "malformed", status=status, latency_ms=elapsed()
                        ) from None
                    # An error's status says enough; its oversized body is not read.
                    payload = b""
        except TimeoutError:
            raise UpstreamFailure("timeout", latency_ms=elapsed()) from None
        except aiohttp.ClientError as exc:
            # The exception text can carry the URL and headers; only its class and the
            # operating system's reason are kept, for the operator's log line.
            os_error = getattr(exc, "os_error", None)
            reason = type(exc).__name__
            if isinstance(os_error, OSError) and os_error.strerror:
                reason += f": {os_error.strerror}"
            raise UpstreamFailure("unreachable", latency_ms=elapsed(), error=reason) from None
        finally:
            self._slots.release()
            self._metrics.upstream_seconds.observe(time.perf_counter() - started)

        latency = elapsed()
        if status == 200:
            try:
                token = decode_untrusted(_TOKEN_DECODER, payload).token
            except msgspec.DecodeError:
                raise UpstreamFailure("malformed", status=status, latency_ms=latency) from None
            return Exchanged(token=token, status=status, latency_ms=latency)
        if 300 <= status < 400:
            raise UpstreamFailure("redirected", status=status, latency_ms=latency)
        if status == 400:
            fields = _rejected_fields(_error_body(payload))
            raise UpstreamFailure("rejected", status=status, message=fields, latency_ms=latency)
        if status == 403 and _error_body(payload).code == "inbound_ip_denied":
            raise UpstreamFailure("ip_denied", status=status, latency_ms=latency)
        if status in (401, 403):
            raise UpstreamFailure("credentials", status=status, latency_ms=latency)
        if status == 429:
            raise UpstreamFailure(
                "rate_limited",
                status=status,
                retry_after=_retry_after_seconds(retry_after),
                retry_after_header=retry_after,
                latency_ms=latency,
            )
        if 400 <= status < 500:
            raise UpstreamFailure("refused", status=status, latency_ms=latency)
        raise UpstreamFailure(
            "server_error", status=status, retry_after_header=retry_after, latency_ms=latency
        )
