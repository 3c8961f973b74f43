"""The MKA1 exchange client: one pooled aiohttp session, a deadline, and error mapping.

Nothing the upstream says is passed through raw, and the API key never appears in an
exception: every failure becomes an UpstreamFailure with a fixed kind.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import aiohttp
import msgspec

from broker.config import Secret, UpstreamSettings
from broker.policy import Grant

FailureKind = Literal[
    "rejected",  # 400: the upstream refused the request's content
    "credentials",  # 401/403: the broker's own API key is the problem
    "rate_limited",  # 429
    "server_error",  # 5xx or another unexpected status
    "unreachable",  # refused connection, DNS, TLS
    "malformed",  # a 200 whose body is not {"token": "..."}
    "timeout",
]

_MESSAGE_MAX = 300
_RETRY_AFTER_MAX = 300


class UpstreamFailure(Exception):
    def __init__(
        self,
        kind: FailureKind,
        *,
        status: int | None = None,
        message: str | None = None,
        retry_after: int | None = None,
        latency_ms: float = 0.0,
    ) -> None:
        super().__init__(kind)
        self.kind = kind
        self.status = status
        self.message = message
        self.retry_after = retry_after
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


class _ErrorBody(msgspec.Struct, frozen=True):
    message: str = ""


_ENCODER = msgspec.json.Encoder()
_TOKEN_DECODER = msgspec.json.Decoder(_TokenBody)
_ERROR_DECODER = msgspec.json.Decoder(_ErrorBody)


def _safe_message(body: bytes) -> str | None:
    try:
        message = _ERROR_DECODER.decode(body).message
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    cleaned = "".join(char for char in message if char.isprintable())[:_MESSAGE_MAX]
    return cleaned or None


def _retry_after_seconds(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return min(int(value.strip()), _RETRY_AFTER_MAX)


class UpstreamClient:
    """Calls ``POST {base_url}{exchange_path}`` with the API key as bearer."""

    def __init__(self, settings: UpstreamSettings, api_key: Secret) -> None:
        self._url = settings.base_url + settings.exchange_path
        self._timeout = aiohttp.ClientTimeout(total=settings.timeout_seconds)
        self._max_connections = settings.max_connections
        self._api_key = api_key
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._max_connections, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            raise_for_status=False,
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def exchange(self, grant: Grant) -> Exchanged:
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
            "Authorization": f"Bearer {self._api_key.reveal()}",
            "X-On-Behalf-Of": grant.external_user_id,
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "mka1-token-broker",
        }
        started = time.perf_counter()

        def elapsed() -> float:
            return round((time.perf_counter() - started) * 1000, 3)

        try:
            async with self._session.post(self._url, data=body, headers=headers) as response:
                payload = await response.read()
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except TimeoutError:
            raise UpstreamFailure("timeout", latency_ms=elapsed()) from None
        except aiohttp.ClientError:
            # The exception text can carry the URL and headers; none of it is kept.
            raise UpstreamFailure("unreachable", latency_ms=elapsed()) from None

        latency = elapsed()
        if status == 200:
            try:
                token = _TOKEN_DECODER.decode(payload).token
            except (msgspec.DecodeError, msgspec.ValidationError):
                raise UpstreamFailure("malformed", status=status, latency_ms=latency) from None
            return Exchanged(token=token, status=status, latency_ms=latency)
        if status == 400:
            message = _safe_message(payload)
            if message is not None and self._api_key.reveal() in message:
                message = None
            raise UpstreamFailure("rejected", status=status, message=message, latency_ms=latency)
        if status in (401, 403):
            raise UpstreamFailure("credentials", status=status, latency_ms=latency)
        if status == 429:
            raise UpstreamFailure(
                "rate_limited",
                status=status,
                retry_after=_retry_after_seconds(retry_after),
                latency_ms=latency,
            )
        raise UpstreamFailure("server_error", status=status, latency_ms=latency)
