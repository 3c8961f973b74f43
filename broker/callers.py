"""Who is calling: a client key, a JWT from a trusted issuer, or a trusted proxy's header."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from broker.config import CallerSettings, ClientSettings, ProxySettings
from broker.federation import CallerTokenVerifier, InvalidCallerToken
from broker.limits import external_user_id_problem
from broker.policy import Policy


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller and the policy that bounds what it may ask for."""

    id: str
    # "client_key", "jwt:<issuer id>" or "proxy:<proxy id>".
    method: str
    policy: Policy
    # Whom "self" means: the client's id, the JWT's subject, the proxy's user.
    subject: str
    roles: frozenset[str] = frozenset()
    # Whether this caller's tokens come from and go to the shared token cache.
    cache: bool = True
    origins: frozenset[str] = frozenset()


class Unauthenticated(Exception):
    """Missing or invalid credentials. The reason is for logs; callers all see the same 401."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _caller(
    settings: CallerSettings, default_expires_in: int, *, id: str, method: str, subject: str
) -> Caller:
    return Caller(
        id=id,
        method=method,
        policy=Policy.for_caller(settings, default_expires_in),
        subject=subject,
        roles=frozenset(settings.roles),
        cache=settings.cache,
        origins=frozenset(settings.cors_origins),
    )


@dataclass(frozen=True, slots=True)
class _ClientEntry:
    digest: bytes
    caller: Caller


@dataclass(frozen=True, slots=True)
class _ProxyEntry:
    settings: ProxySettings
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


class Authenticator:
    """Client keys are compared by SHA-256 digest, every configured digest in constant time,
    so an unknown key and a wrong key take the same path. A bearer credential shaped like a
    JWT goes to the trusted issuers instead."""

    def __init__(
        self,
        clients: Sequence[ClientSettings],
        proxies: Sequence[ProxySettings],
        verifier: CallerTokenVerifier,
        default_expires_in: int,
    ) -> None:
        self._default_expires_in = default_expires_in
        self._clients = tuple(
            _ClientEntry(
                bytes.fromhex(client.key_sha256),
                _caller(
                    client,
                    default_expires_in,
                    id=client.id,
                    method="client_key",
                    subject=client.id,
                ),
            )
            for client in clients
        )
        self._proxies = tuple(
            _ProxyEntry(proxy, tuple(ipaddress.ip_network(c, strict=False) for c in proxy.cidrs))
            for proxy in proxies
        )
        self._verifier = verifier

    def _from_proxy(self, headers: Mapping[str, str], source: str | None) -> Caller | None:
        if not self._proxies or source is None:
            return None
        try:
            address = ipaddress.ip_address(source)
        except ValueError:
            return None
        for entry in self._proxies:
            user = headers.get(entry.settings.user_header.lower())
            if user is None or not any(address in network for network in entry.networks):
                continue
            if external_user_id_problem(user) is not None:
                raise Unauthenticated("proxy_user_unusable")
            return _caller(
                entry.settings,
                self._default_expires_in,
                id=entry.settings.id,
                method=f"proxy:{entry.settings.id}",
                subject=user,
            )
        return None

    async def authenticate(self, headers: Mapping[str, str], source: str | None) -> Caller:
        """``headers`` with lower-case names; ``source`` is the connection's peer address.

        A proxy's user header counts only on connections from that proxy's networks; from
        anywhere else it is ignored."""
        if (caller := self._from_proxy(headers, source)) is not None:
            return caller
        authorization = headers.get("authorization")
        if not authorization:
            raise Unauthenticated("missing_authorization")
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise Unauthenticated("not_bearer")
        if credential.count(".") == 2 and self._verifier:
            try:
                verified = await self._verifier.verify(credential)
            except InvalidCallerToken as exc:
                raise Unauthenticated(exc.reason) from None
            issuer = verified.issuer
            return _caller(
                issuer,
                self._default_expires_in,
                # "/" cannot occur in a configured id, so a JWT whose subject is "svc-any"
                # is never recorded as the client "svc-any".
                id=f"{issuer.id}/{verified.subject}",
                method=f"jwt:{issuer.id}",
                subject=verified.subject,
            )
        presented = hashlib.sha256(credential.encode("utf-8", "surrogateescape")).digest()
        found: Caller | None = None
        for entry in self._clients:
            if hmac.compare_digest(entry.digest, presented):
                found = entry.caller
        if found is None:
            raise Unauthenticated("unknown_key")
        return found
