"""The OpenAPI document, generated from the same msgspec types that decode the requests.

Litestar would derive the request schema from a handler's signature, but the token handler
decodes its body by hand (strictly), so the document is assembled here from the wire types:
what it promises is exactly what the decoder enforces.
"""

from __future__ import annotations

from typing import Any, get_args

import msgspec
from litestar import Response, get, head

from broker import __version__
from broker.api import routes
from broker.api.heads import headless
from broker.api.policy import CallerPolicy
from broker.api.routes import OPENAPI
from broker.audit.records import Outcome
from broker.audit.store import CURSOR_PATTERN
from broker.minting import CacheResult
from broker.models import Problem, TokenRequest, TokenResponse
from broker.revocations import MAX_BARS
from broker.rules import EXTERNAL_USER_ID_MAX, EXTERNAL_USER_ID_PATTERN
from broker.shared import MAX_CUTOFFS

_REF = "#/components/schemas/{name}"
_NOT_ADMIN_OR_BARRED = "The caller lacks the admin role (`not_admin`), or is barred (`revoked`)."
_UNREADABLE_BODY = "The body is not application/json in UTF-8, or is content-coded."


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema or {"type": "string", "minLength": 1, "maxLength": 2048},
    }


def _documented(schema: Any) -> Any:
    """Patterns as JSON Schema reads them (ECMA-262, where ``$`` means the very end): the
    code enforces the same patterns with Python's ``\\Z`` (see ``limits.enforced``)."""
    if isinstance(schema, dict):
        return {
            key: value[:-2] + "$"
            if key == "pattern" and isinstance(value, str) and value.endswith("\\Z")
            else _documented(value)
            for key, value in schema.items()
        }
    if isinstance(schema, list | tuple):
        return type(schema)(_documented(item) for item in schema)
    return schema


def build_openapi() -> dict[str, Any]:
    (token_request, token_response, problem, policy), components = _documented(
        msgspec.json.schema_components(
            [TokenRequest, TokenResponse, Problem, CallerPolicy], ref_template=_REF
        )
    )
    no_store = {
        "Cache-Control": {"schema": {"type": "string", "const": "no-store"}},
        "Pragma": {"schema": {"type": "string", "const": "no-cache"}},
        "X-Content-Type-Options": {"schema": {"type": "string", "const": "nosniff"}},
    }
    revocation_request = {
        "type": "object",
        "additionalProperties": False,
        "required": ["kind", "value"],
        "properties": {
            "kind": {"type": "string", "enum": ["caller", "end_user", "audience"]},
            "value": {"type": "string", "minLength": 1, "maxLength": 2048},
            "action": {"type": "string", "enum": ["bar", "lift"], "default": "bar"},
            "since": {"type": "string", "format": "date-time"},
            "reason": {"type": "string", "maxLength": 500},
        },
    }
    revocations = {
        "type": "object",
        "required": ["scope", "bars"],
        "properties": {
            "scope": {"type": "string", "enum": ["deployment", "replica"]},
            "bars": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["kind", "value", "since", "reason", "by"],
                    "properties": {
                        "kind": {"type": "string"},
                        "value": {"type": "string"},
                        "since": {"type": "string", "format": "date-time"},
                        "reason": {"type": "string"},
                        "by": {"type": "string"},
                    },
                },
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "MKA1 token broker",
            "version": __version__,
            "description": "Hands out short-lived, audience-scoped MKA1 JWTs to authenticated "
            "callers, within each caller's policy, with an audit record of every decision.",
        },
        "paths": {
            routes.TOKENS: {
                "post": {
                    "operationId": "issueToken",
                    "summary": "Obtain an MKA1 token for an end user",
                    "description": "Authenticates the caller, checks the request against its "
                    "policy, mints a token through the MKA1 exchange and returns it once its "
                    "audit record is durable.",
                    "security": [{"clientKey": []}],
                    "parameters": [
                        {
                            "name": "X-On-Behalf-Of",
                            "in": "header",
                            "required": False,
                            "description": "The end user, instead of `externalUserId` "
                            "(both present must agree).",
                            "schema": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": EXTERNAL_USER_ID_MAX,
                                "pattern": EXTERNAL_USER_ID_PATTERN,
                            },
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": token_request}},
                    },
                    "responses": {
                        "200": {
                            "description": "The token, with its lifetime and fingerprint.",
                            "headers": no_store,
                            "content": {"application/json": {"schema": token_response}},
                        },
                        "400": _problem("The body or a header is invalid (`errors` names it)."),
                        "401": _problem("Missing or invalid credentials."),
                        "403": _problem("Outside the caller's policy, or a disallowed Origin."),
                        "429": _problem("A rate limit; `Retry-After` says when to retry."),
                        "413": _problem("The body is larger than 16 KiB."),
                        "415": _problem(_UNREADABLE_BODY),
                        "502": _problem("The MKA1 exchange failed or answered wrongly."),
                        "503": _problem(
                            "Audit unavailable, the exchange rate limiting or failing, or this "
                            "replica not yet able to read the bars in force from the shared "
                            "store (`shared_state_unavailable`); retry."
                        ),
                        "504": _problem("The MKA1 exchange did not answer in time."),
                    },
                }
            },
            routes.CALLER_POLICY: {
                "get": {
                    "operationId": "callerPolicy",
                    "summary": "What the authenticated caller may ask for",
                    "security": [{"clientKey": []}],
                    "responses": {
                        "200": {
                            "description": "The caller's audiences, lifetimes, end users and "
                            "permissions.",
                            "content": {"application/json": {"schema": policy}},
                        },
                        "401": _problem("Missing or invalid credentials."),
                        "403": _problem("The request's Origin is not on the caller's list."),
                        "429": _problem("Too many failed authentications from this address."),
                    },
                }
            },
            routes.AUDIT_EVENTS: {
                "get": {
                    "operationId": "auditEvents",
                    "summary": "Recorded decisions of the whole deployment, newest first",
                    "description": "For callers with the `auditor` role. Answered from the "
                    "audit store that every replica ships into, so any replica answers for "
                    "all, and a cursor works on every replica. Filters combine; `nextCursor` "
                    "fetches the next (older) page.",
                    "security": [{"clientKey": []}],
                    "parameters": [
                        _query("subject", "The end user (externalUserId)."),
                        _query("audience", "The audience."),
                        _query("caller", "The caller's id."),
                        _query(
                            "outcome",
                            "The outcome.",
                            {"type": "string", "enum": list(get_args(Outcome))},
                        ),
                        _query(
                            "tokenSha256",
                            "The SHA-256 of a token (lowercase hex), as records carry it.",
                            {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                        ),
                        _query("tokenId", "The token's `jti`."),
                        _query("instance", "The replica's chain (instance id)."),
                        _query(
                            "cache",
                            "How the token was served.",
                            {"type": "string", "enum": list(get_args(CacheResult))},
                        ),
                        _query(
                            "since",
                            "RFC 3339, inclusive.",
                            {"type": "string", "format": "date-time"},
                        ),
                        _query(
                            "until",
                            "RFC 3339, exclusive.",
                            {"type": "string", "format": "date-time"},
                        ),
                        _query(
                            "limit",
                            "Page size.",
                            {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
                        ),
                        _query(
                            "cursor",
                            "`nextCursor` of the previous page.",
                            {
                                "type": "string",
                                "pattern": CURSOR_PATTERN,
                            },
                        ),
                    ],
                    "responses": {
                        "200": {
                            "description": "A page of decision records.",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["events", "nextCursor"],
                                        "properties": {
                                            "events": {
                                                "type": "array",
                                                "items": {"type": "object"},
                                            },
                                            "nextCursor": {"type": ["string", "null"]},
                                        },
                                    }
                                }
                            },
                        },
                        "400": _problem("A query parameter is invalid (`errors` names it)."),
                        "401": _problem("Missing or invalid credentials."),
                        "403": _problem(
                            "The caller lacks the auditor role (`not_auditor`), or is barred "
                            "(`revoked`)."
                        ),
                        "501": _problem("This broker has no audit store (sink = stdout)."),
                        "503": _problem(
                            "The audit store cannot be read now, or this replica has not yet "
                            "read the bars from the shared store (`shared_state_unavailable`); "
                            "retry."
                        ),
                    },
                }
            },
            routes.REVOCATIONS: {
                "get": {
                    "operationId": "listRevocations",
                    "summary": "The bars in force on this replica",
                    "description": "For callers with the `admin` role. `scope` is "
                    "`deployment` with a shared store, `replica` without one.",
                    "security": [{"clientKey": []}],
                    "responses": {
                        "200": {
                            "description": "The bars in force.",
                            "content": {"application/json": {"schema": revocations}},
                        },
                        "401": _problem("Missing or invalid credentials."),
                        "403": _problem(_NOT_ADMIN_OR_BARRED),
                        "503": _problem(
                            "This replica has not yet read the bars from the shared store "
                            "(`shared_state_unavailable`); retry."
                        ),
                    },
                },
                "post": {
                    "operationId": "changeRevocation",
                    "summary": "Bar a caller, an end user or an audience, or lift a bar",
                    "description": "For callers with the `admin` role. The change is on the "
                    "audit trail before it applies; with a shared store every replica applies "
                    "it within `revocation_refresh_seconds`. A barred request gets 403 "
                    "`revoked`.",
                    "security": [{"clientKey": []}],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": revocation_request}},
                    },
                    "responses": {
                        "200": {
                            "description": "The bars in force after the change.",
                            "content": {"application/json": {"schema": revocations}},
                        },
                        "400": _problem("The body is invalid (`errors` names it)."),
                        "401": _problem("Missing or invalid credentials."),
                        "403": _problem(_NOT_ADMIN_OR_BARRED),
                        "409": _problem(
                            f"A bar on a new value when {MAX_BARS} are in force "
                            "(`too_many_bars`), or a change on a new value when the shared "
                            f"store holds cutoffs for {MAX_CUTOFFS} values, each barred or "
                            "lifted in the last 30 days (`too_many_revocation_changes`). A "
                            "bar in force can always be lifted."
                        ),
                        "413": _problem("The body is larger than 4 KiB."),
                        "415": _problem(_UNREADABLE_BODY),
                        "503": _problem(
                            "The audit trail or the shared store cannot take it, or this "
                            "replica has not yet read the bars from the shared store; retry."
                        ),
                    },
                },
            },
            routes.HEALTHZ: {
                "get": {
                    "operationId": "healthz",
                    "summary": "The process is alive",
                    "responses": {"200": {"description": "Alive."}},
                }
            },
            routes.READYZ: {
                "get": {
                    "operationId": "readyz",
                    "summary": "Ready to issue tokens (configuration loaded, audit writable)",
                    "responses": {
                        "200": {"description": "Ready."},
                        "503": {"description": "Not ready; `checks` says why."},
                    },
                }
            },
        },
        "components": {
            "schemas": components | {"Problem": components.get("Problem", problem)},
            "securitySchemes": {
                "clientKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A client key issued with `broker client-key` (the broker "
                    "stores only its SHA-256), or a JWT from a trusted issuer.",
                }
            },
        },
    }


_DOCUMENT = msgspec.json.encode(build_openapi())


@get(OPENAPI, summary="This API's OpenAPI document", include_in_schema=False)
async def openapi_document() -> Response[bytes]:
    return Response(_DOCUMENT, media_type="application/json")


@head(OPENAPI, include_in_schema=False)
async def openapi_document_head() -> Response[None]:
    return headless(200, "application/json", len(_DOCUMENT))


def render_openapi() -> str:
    return msgspec.json.format(msgspec.json.encode(build_openapi()), indent=2).decode() + "\n"
