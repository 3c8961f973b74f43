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

from uvicorn._types import ASGIReceiveCallable, ASGISendCallable, HTTPScope, Scope
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

_SCHEMES = frozenset({"http", "https"})


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
        scope["client"] = (str(address), port)
