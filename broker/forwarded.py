"""Which client a request came from when a trusted proxy says (``X-Forwarded-For``).

uvicorn's ``ProxyHeadersMiddleware`` takes the nearest entry not from a trusted proxy and
makes it the request's client, whatever it is: ``evil``, or 3,000 characters, became the
audit record's ``sourceAddress``, the access line's, and a fresh auth-failure bucket for
each value (a proxy that passes a client's own header on unchanged lets the client choose
it). Here only an IP address is believed; anything else leaves the connection's peer, the
proxy, as the client. One instance serves both request paths: the ASGI app, which it wraps,
and the connection layer's direct routes, which call ``believe``."""

from __future__ import annotations

import ipaddress
from typing import Any

from uvicorn._types import ASGIReceiveCallable, ASGISendCallable, HTTPScope, Scope
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

_SCHEMES = frozenset({"http", "https"})
# The scope's state key under which believe() keeps the connection's own peer when it names
# another client. Who connected is what a proxy caller's user header is vouched for by: the
# forwarded client is what a trusted proxy says, and one in a broad trusted range (a pod
# network) may say any address, the identity proxy's included.
PEER_STATE = "peer"


def peer_of(scope: Any) -> str | None:
    """The address of whoever opened the connection, whatever a trusted proxy forwarded."""
    if (peer := scope.get("state", {}).get(PEER_STATE)) is not None:
        return str(peer)
    client = scope.get("client")
    return str(client[0]) if client else None


class ForwardedFor(ProxyHeadersMiddleware):
    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "http":
            self.believe(scope)
        await self.app(scope, receive, send)

    def believe(self, scope: HTTPScope) -> None:
        """Set the scope's client (and scheme) from the proxy's headers, if the peer is a
        trusted proxy and what it forwards is an address."""
        peer = scope.get("client")
        if peer is None or peer[0] not in self.trusted_hosts:
            return
        forwarded: list[bytes] = []
        for name, value in scope["headers"]:
            if name == b"x-forwarded-for":
                forwarded.append(value)
            elif name == b"x-forwarded-proto":
                scheme = value.decode("latin-1").strip()
                if scheme in _SCHEMES:
                    scope["scheme"] = scheme
        if not forwarded:
            return
        host, port = self.trusted_hosts.get_trusted_client_address(
            b", ".join(forwarded).decode("latin-1")
        )
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
            # A zone ("fe80::1%eth0") names an interface of the proxy's, not the client, and
            # takes any text after the "%": "::1%\x1b[2J" was an address to ipaddress.
            return
        scope.setdefault("state", {})[PEER_STATE] = peer[0]
        scope["client"] = (str(address), port)
