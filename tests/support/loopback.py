"""One-off HTTP calls, as httpx's top-level functions make them, without their setup cost.

``httpx.get`` and friends build a client per call, and the client an SSL context that loads
the CA bundle: 24 ms of CPU a call (timeit), even for the plain-HTTP loopback servers the
tests talk to. The suite makes thousands of such calls (every readiness poll of every server
it starts among them). These share one context; each call still opens a connection of its
own and closes it, as before.
"""

from __future__ import annotations

from typing import Any

import httpx

_TLS = httpx.create_ssl_context()


def request(method: str, url: str, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, url, verify=_TLS, **kwargs)


def get(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(url, verify=_TLS, **kwargs)


def post(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.post(url, verify=_TLS, **kwargs)


def delete(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.delete(url, verify=_TLS, **kwargs)


def options(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.options(url, verify=_TLS, **kwargs)
