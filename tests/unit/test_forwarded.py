"""Who the client is behind a trusted proxy: only an address that ``X-Forwarded-For`` names
is believed, and only from a trusted peer; anything else leaves the peer as the client."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from broker.forwarded import ForwardedFor, peer_of


async def _app(*_: Any) -> None:
    pass


def _believed(
    peer: str, *forwarded: str, trusted: tuple[str, ...] = ("127.0.0.1", "10.0.0.0/8")
) -> tuple[str, int]:
    scope: Any = {
        "type": "http",
        "client": (peer, 50000),
        "scheme": "http",
        "headers": [(b"x-forwarded-for", value.encode("latin-1")) for value in forwarded],
    }
    ForwardedFor(_app, list(trusted)).believe(scope)
    return tuple(scope["client"])


@pytest.mark.parametrize(
    ("forwarded", "client"),
    [
        (("203.0.113.9",), ("203.0.113.9", 0)),
        (("203.0.113.9:4711",), ("203.0.113.9", 4711)),
        # Written another way, the same address: one bucket, one way on the trail.
        (("[2001:DB8:0::1]:443",), ("2001:db8::1", 443)),
        # As Python writes it (3.13 changed how an IPv4-mapped address is written).
        (("::ffff:203.0.113.9",), (str(ipaddress.ip_address("::ffff:203.0.113.9")), 0)),
        # The nearest entry that is not a trusted proxy, read from the right.
        (("198.51.100.7, 203.0.113.9, 10.1.2.3",), ("203.0.113.9", 0)),
        (("198.51.100.7", "203.0.113.9"), ("203.0.113.9", 0)),
    ],
)
def test_an_address_forwarded_by_a_trusted_proxy_is_the_client(
    forwarded: tuple[str, ...], client: tuple[str, int]
) -> None:
    assert _believed("127.0.0.1", *forwarded) == client


@pytest.mark.parametrize(
    "forwarded",
    [
        "evil",
        "a" * 3000,
        "203.0.113.9, evil",
        "unknown",
        "203.0.113.9\x1b[2J",
        "",
        "[2001:db8::1",
        "203.0.113.999",
        # A zone takes any text after the "%", and is the proxy's interface anyway.
        "::1%\x1b[2J",
        "fe80::1%" + "a" * 3000,
        "fe80::1%eth0",
    ],
)
def test_what_is_not_an_address_leaves_the_proxy_as_the_client(forwarded: str) -> None:
    # uvicorn's own middleware made each of these the client: the audit record's
    # sourceAddress, and a fresh auth-failure bucket for every value.
    assert _believed("127.0.0.1", forwarded) == ("127.0.0.1", 50000)


def test_a_peer_that_is_no_trusted_proxy_is_the_client_whatever_it_forwards() -> None:
    assert _believed("198.51.100.7", "203.0.113.9") == ("198.51.100.7", 50000)
    assert _believed("127.0.0.1", "203.0.113.9", trusted=("10.0.0.0/8",)) == (
        "127.0.0.1",
        50000,
    )


def test_the_scheme_a_trusted_proxy_forwards_is_taken_only_if_it_is_http_or_https() -> None:
    app = ForwardedFor(_app, ["127.0.0.1"])
    for sent, scheme in ((b"https", "https"), (b"gopher", "http"), (b" https ", "https")):
        scope: Any = {
            "type": "http",
            "client": ("127.0.0.1", 1),
            "scheme": "http",
            "headers": [(b"x-forwarded-proto", sent)],
        }
        app.believe(scope)
        assert scope["scheme"] == scheme


@pytest.mark.parametrize(
    ("peer", "forwarded", "client", "kept"),
    [
        # Believed: the client is the forwarded one, the peer is kept beside it.
        ("10.1.1.1", "203.0.113.9", "203.0.113.9", "10.1.1.1"),
        # Every entry a trusted proxy: uvicorn names the first, which the peer wrote.
        ("10.1.1.1", "10.5.0.3", "10.5.0.3", "10.1.1.1"),
        # Not believed (an untrusted peer, or not an address): the peer is the client.
        ("198.51.100.1", "203.0.113.9", "198.51.100.1", "198.51.100.1"),
        ("10.1.1.1", "evil", "10.1.1.1", "10.1.1.1"),
    ],
)
def test_the_peer_stays_known_whoever_the_client_is_said_to_be(
    peer: str, forwarded: str, client: str, kept: str
) -> None:
    # A proxy caller's network is the connection's own: checked against the forwarded
    # client, a trusted peer could name an address in the identity proxy's network.
    scope: Any = {
        "type": "http",
        "client": (peer, 50000),
        "scheme": "http",
        "state": {},
        "headers": [(b"x-forwarded-for", forwarded.encode("latin-1"))],
    }
    ForwardedFor(_app, ["127.0.0.1", "10.0.0.0/8"]).believe(scope)
    assert scope["client"][0] == client
    assert peer_of(scope) == kept


def test_a_scope_without_a_client_has_no_peer() -> None:
    assert peer_of({"type": "http", "state": {}}) is None
