"""Who is calling: the identity behind an ``Authorization`` header."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from broker.config import ClientSettings
from broker.policy import Policy

AuthMethod = Literal["client_key"]


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller and the policy that bounds what it may ask for."""

    id: str
    method: AuthMethod
    policy: Policy
    roles: frozenset[str] = frozenset()
    # Whether this caller's tokens come from and go to the shared token cache.
    cache: bool = True


class Unauthenticated(Exception):
    """Missing or invalid credentials. The reason is for logs; callers all see the same 401."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class _ClientEntry:
    digest: bytes
    caller: Caller


class ClientKeyAuthenticator:
    """Checks ``Bearer <client key>`` against the SHA-256 digests in the settings.

    Every configured digest is compared, in constant time, whatever the key; an unknown
    key and a wrong key take the same path and give the same answer.
    """

    def __init__(self, clients: Sequence[ClientSettings], default_expires_in: int) -> None:
        self._entries = tuple(
            _ClientEntry(
                digest=bytes.fromhex(client.key_sha256),
                caller=Caller(
                    id=client.id,
                    method="client_key",
                    policy=Policy.for_client(client, default_expires_in),
                    roles=frozenset(client.roles),
                    cache=client.cache,
                ),
            )
            for client in clients
        )

    def authenticate(self, authorization: str | None) -> Caller:
        if not authorization:
            raise Unauthenticated("missing_authorization")
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise Unauthenticated("not_bearer")
        presented = hashlib.sha256(credential.encode("utf-8", "surrogateescape")).digest()
        found: Caller | None = None
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, presented):
                found = entry.caller
        if found is None:
            raise Unauthenticated("unknown_key")
        return found
