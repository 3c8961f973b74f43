"""The simulator as a Litestar app.

It follows the upstream contract (docs/CONTRACT.md) and the official SDK's models: both
exchange paths, 400 with ``details[]`` on the documented path and a bare ``message`` on the
newer one, 401 for an unknown key, whole-number floats accepted for ``expiresIn`` (the SDK
sends ``3600.0``), and ``POST /api/v1/llm/responses`` with a canned answer, so that a minted
token can be used as the real API would take it. With ``faults`` enabled, ``/_sim/*`` lets
tests inject latency, statuses and bad tokens, and read which requests arrived.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import jwt
import msgspec
import structlog
from litestar import Litestar, Request, Response, delete, get, post
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from broker.decoding import decode_untrusted
from broker.rules import (
    MAX_EXPIRES_IN,
    MIN_EXPIRES_IN,
    audience_problem,
    external_user_id_problem,
)
from broker.sim.signing import SigningKey

DOCUMENTED_PATH = "/api/v1/authentication/api-key/exchange-token"
NEWER_PATH = "/api/v1/authentication/api-keys/exchange-token"
RESPONSES_PATH = "/api/v1/llm/responses"
DEFAULT_SCOPES = ("read:responses", "write:responses", "read:files", "write:files")
_ENCODER = msgspec.json.Encoder()
_ANY: msgspec.json.Decoder[Any] = msgspec.json.Decoder()
log = structlog.get_logger("broker.sim")


@dataclass(frozen=True)
class SimulatorConfig:
    api_keys: tuple[str, ...]
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    issuer: str = "https://apigw.mka1.com"
    faults: bool = False


class Fault(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One injected misbehaviour, applied to the next ``times`` exchanges (all if None)."""

    status: Annotated[int, msgspec.Meta(ge=100, le=599)] | None = None
    # Bounded so that one control request cannot hold the simulator's answers for ever.
    delay_seconds: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.0
    retry_after: str | None = None
    body: str | None = None
    # Bytes that are not text (base64), for an answer that is not UTF-8.
    body_base64: str | None = None
    # Extra response headers (a Location for a redirect, a Set-Cookie).
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    token: (
        Literal[
            "wrong_aud",
            "wrong_sub",
            "long_exp",
            "malformed",
            "expired",
            "no_permissions",
            "iat_out_of_range",
        ]
        | None
    ) = None
    times: Annotated[int, msgspec.Meta(ge=1)] | None = None

    def __post_init__(self) -> None:
        # Checked here, so that the exchange that takes the fault never fails on it.
        if self.body_base64 is not None:
            try:
                base64.b64decode(self.body_base64, validate=True)
            except ValueError:
                raise ValueError("body_base64 is not base64") from None
        fields = [*self.headers.items(), ("Retry-After", self.retry_after or "")]
        for name, value in fields:
            if not name or any(c in name + value for c in "\r\n\x00"):
                raise ValueError("a header name or value is empty or holds CR, LF or NUL")


class SeenRequest(msgspec.Struct, kw_only=True, rename="camel"):
    at: float
    path: str
    key_sha256: str | None
    on_behalf_of: str | None
    body: Any
    status: int
    # Whether the request carried a Cookie header (the broker must never send one).
    cookie: bool = False


@dataclass
class _State:
    config: SimulatorConfig
    key: SigningKey = field(default_factory=SigningKey)
    fault: Fault | None = None
    seen: deque[SeenRequest] = field(default_factory=lambda: deque(maxlen=10_000))
    exchanges: int = 0


def _json(body: Any, status: int, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(
        _ENCODER.encode(body), status_code=status, media_type="application/json", headers=headers
    )


def _validate(body: Any, scopes: tuple[str, ...]) -> list[dict[str, str]]:
    if not isinstance(body, dict):
        return [{"path": "", "message": "Expected object"}]
    details: list[dict[str, str]] = []
    audience = body.get("audience")
    if not isinstance(audience, str):
        details.append({"path": "audience", "message": "Required string"})
    elif (problem := audience_problem(audience)) is not None:
        details.append({"path": "audience", "message": f"Invalid audience: {problem}"})
    user = body.get("externalUserId")
    if not isinstance(user, str):
        details.append({"path": "externalUserId", "message": "Required string"})
    elif (problem := external_user_id_problem(user)) is not None:
        details.append({"path": "externalUserId", "message": f"Invalid externalUserId: {problem}"})
    if "expiresIn" in body:
        expires = body["expiresIn"]
        whole = isinstance(expires, int | float) and not isinstance(expires, bool)
        if not whole or float(expires) != int(expires):
            details.append({"path": "expiresIn", "message": "Expected a whole number"})
        elif not MIN_EXPIRES_IN <= expires <= MAX_EXPIRES_IN:
            details.append(
                {
                    "path": "expiresIn",
                    "message": f"Number must be between {MIN_EXPIRES_IN} and {MAX_EXPIRES_IN}",
                }
            )
    if "permissions" in body:
        permissions = body["permissions"]
        if not isinstance(permissions, list) or not all(isinstance(p, str) for p in permissions):
            details.append({"path": "permissions", "message": "Expected array of strings"})
        else:
            for index, permission in enumerate(permissions):
                if permission not in scopes:
                    details.append(
                        {
                            "path": f"permissions.{index}",
                            "message": "Permission is not among the API key's scopes",
                        }
                    )
    for name in body:
        if name not in ("audience", "externalUserId", "expiresIn", "permissions"):
            details.append({"path": name, "message": "Unrecognized key"})
    return details


def create_simulator(config: SimulatorConfig) -> ASGIApp:
    state = _State(config=config)
    key_digests = [hashlib.sha256(key.encode()).digest() for key in config.api_keys]

    def known_key(authorization: str | None) -> str | None:
        if not authorization or not authorization.lower().startswith("bearer "):
            return None
        digest = hashlib.sha256(authorization[7:].strip().encode()).digest()
        matched = False
        for known in key_digests:
            matched |= hmac.compare_digest(known, digest)
        return digest.hex() if matched else None

    def take_fault() -> Fault | None:
        fault = state.fault
        if fault is None:
            return None
        if fault.times is not None:
            fault.times -= 1
            if fault.times <= 0:
                state.fault = None
        return fault

    def mint(body: dict[str, Any], fault: Fault | None) -> str:
        now = int(time.time())
        lifetime = int(body.get("expiresIn", 3600))
        claims: dict[str, Any] = {
            "iss": config.issuer,
            "sub": body["externalUserId"],
            "aud": body["audience"],
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "jti": uuid.uuid4().hex,
        }
        if "permissions" in body and not (fault is not None and fault.token == "no_permissions"):
            claims["permissions"] = list(body["permissions"])
        if fault is not None and fault.token is not None:
            if fault.token == "malformed":
                return "not-a-jwt"
            if fault.token == "wrong_aud":
                claims["aud"] = "https://attacker.example"
            elif fault.token == "wrong_sub":
                claims["sub"] = "someone-else"
            elif fault.token == "long_exp":
                claims["exp"] = now + lifetime + 86_400
            elif fault.token == "expired":
                claims["exp"] = now - 10
            elif fault.token == "iat_out_of_range":
                # Right in every claim the broker checks; an iat no time can be.
                claims["iat"] = 10**30
        return state.key.sign(claims)

    async def exchange(request: Request[Any, Any, Any], *, documented: bool) -> Response[bytes]:
        state.exchanges += 1
        fault = take_fault()
        raw = await request.body()
        try:
            body: Any = decode_untrusted(_ANY, raw)
        except msgspec.DecodeError:
            body = None
        digest = known_key(request.headers.get("authorization"))
        # Recorded on arrival, so a slow answer still counts where the request was made.
        seen = SeenRequest(
            at=time.time(),
            path=request.url.path,
            key_sha256=digest,
            on_behalf_of=request.headers.get("x-on-behalf-of"),
            body=body,
            status=0,
            cookie="cookie" in request.headers,
        )
        state.seen.append(seen)

        def answer(
            status: int, payload: Any, headers: dict[str, str] | None = None
        ) -> Response[bytes]:
            seen.status = status
            return _json(payload, status, headers)

        if fault is not None and fault.delay_seconds:
            await asyncio.sleep(fault.delay_seconds)
        if fault is not None and fault.status is not None:
            headers = dict(fault.headers)
            if fault.retry_after:
                headers["Retry-After"] = fault.retry_after
            if fault.body is not None or fault.body_base64 is not None:
                seen.status = fault.status
                content = (
                    base64.b64decode(fault.body_base64)
                    if fault.body_base64 is not None
                    else (fault.body or "").encode()
                )
                return Response(
                    content,
                    status_code=fault.status,
                    media_type="application/json",
                    headers=headers,
                )
            return answer(fault.status, {"message": f"Injected status {fault.status}"}, headers)
        if digest is None:
            return answer(401, {"message": "Invalid or missing API key"})
        details = _validate(body, config.scopes)
        if details:
            if documented:
                return answer(400, {"message": "Invalid request body", "details": details})
            return answer(
                400, {"message": "; ".join(f"{d['path']}: {d['message']}" for d in details)}
            )
        return answer(200, {"token": mint(body, fault)})

    @post(DOCUMENTED_PATH, status_code=200)
    async def exchange_documented(request: Request[Any, Any, Any]) -> Response[bytes]:
        return await exchange(request, documented=True)

    @post(NEWER_PATH, status_code=200)
    async def exchange_newer(request: Request[Any, Any, Any]) -> Response[bytes]:
        return await exchange(request, documented=False)

    @get("/.well-known/jwks.json")
    async def jwks() -> Response[bytes]:
        return _json(state.key.jwks(), 200)

    def end_user_of(request: Request[Any, Any, Any]) -> str | Literal[False] | None:
        """Who a request to the API acts for: with the API key, the X-On-Behalf-Of user (or
        None); with a token this simulator minted (valid signature, not expired), its sub.
        False for anything else."""
        authorization = request.headers.get("authorization")
        if known_key(authorization) is not None:
            return request.headers.get("x-on-behalf-of")
        if not authorization or not authorization.lower().startswith("bearer "):
            return False
        try:
            claims = state.key.verify(authorization[7:].strip())
        except jwt.InvalidTokenError:
            return False
        subject = claims.get("sub")
        return subject if isinstance(subject, str) else False

    @post(RESPONSES_PATH, status_code=200)
    async def create_response(request: Request[Any, Any, Any]) -> Response[bytes]:
        """The seed's own example, ``llm.responses.create(model=..., input=...)``: a canned
        answer the official SDK parses, for the API key or a token minted here."""
        end_user = end_user_of(request)
        if end_user is False:
            return _json({"message": "Invalid or expired API key or token"}, 401)
        try:
            body: Any = decode_untrusted(_ANY, await request.body())
        except msgspec.DecodeError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            return _json(
                {
                    "message": "Invalid request body",
                    "details": [{"path": "model", "message": "Required string"}],
                },
                400,
            )
        return _json(canned_response(body["model"], end_user), 200)

    handlers: list[Any] = [exchange_documented, exchange_newer, jwks, create_response]

    if config.faults:

        @post("/_sim/fault")
        async def set_fault(request: Request[Any, Any, Any]) -> Response[bytes]:
            try:
                state.fault = msgspec.json.decode(await request.body(), type=Fault)
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
                # A test's mistake, said as such: a 500 here read as the simulator's own bug.
                return _json({"message": f"Invalid fault: {exc}"}, 400)
            return Response(b"", status_code=204)

        @delete("/_sim/fault", status_code=204)
        async def clear_fault() -> None:
            state.fault = None

        @get("/_sim/requests")
        async def seen_requests() -> Response[bytes]:
            return _json({"exchanges": state.exchanges, "requests": list(state.seen)}, 200)

        @delete("/_sim/requests", status_code=204)
        async def clear_requests() -> None:
            state.seen.clear()
            state.exchanges = 0

        handlers += [set_fault, clear_fault, seen_requests, clear_requests]

    app = Litestar(route_handlers=handlers, openapi_config=None, logging_config=None)
    return logged(app)


def canned_response(model: str, end_user: str | None) -> dict[str, Any]:
    """A completed ``response`` object with one assistant message, in the API's shape."""
    now = time.time()
    text = f"Hello{', ' + end_user if end_user else ''}, from the MKA1 simulator."
    return {
        "id": f"resp_{uuid.uuid4().hex}",
        "object": "response",
        "created_at": now,
        "completed_at": now,
        "status": "completed",
        "error": None,
        "incomplete_details": None,
        "background": False,
        "instructions": None,
        "max_output_tokens": None,
        "max_tool_calls": None,
        "metadata": {},
        "model": model,
        "output": [
            {
                "type": "message",
                "id": f"msg_{uuid.uuid4().hex}",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "store": False,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "truncation": "auto",
        "usage": {
            "input_tokens": 8,
            "output_tokens": 9,
            "total_tokens": 17,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
        "user": end_user,
    }


def logged(app: ASGIApp) -> ASGIApp:
    """One log line per request, every line of it naming the simulator as its component
    (under ``broker dev`` the broker's lines come from the same process)."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        structlog.contextvars.bind_contextvars(component="simulator")
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_status)
        finally:
            log.info(
                "request",
                method=scope.get("method"),
                path=scope["path"],
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )
            structlog.contextvars.clear_contextvars()

    return middleware
