"""Reading a whole HTTP response body from aiohttp, bounded.

``StreamReader.read(n)`` returns what is buffered, not ``n`` bytes: a JWKS that arrives in two
TCP segments is cut short by it. ``response.read()`` reads everything, however large. This
reads to the end, and stops at ``limit`` bytes.
"""

from __future__ import annotations

import aiohttp


class BodyTooLarge(Exception):
    """The body is longer than the caller's bound; nothing more was read."""


async def read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes:
    declared = response.content_length
    if declared is not None and declared > limit:
        raise BodyTooLarge(f"declared {declared} bytes")
    body = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"more than {limit} bytes")
    return bytes(body)
