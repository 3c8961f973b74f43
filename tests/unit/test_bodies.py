"""Reading a whole response body, bounded, from a scripted server on loopback."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from broker.bodies import BodyTooLarge, read_bounded
from tests.support.scripted_http import Answer, scripted_server


def _read(answer: Answer, limit: int) -> bytes | str:
    """The body, or why it was refused."""
    with scripted_server(answer) as server:

        async def run() -> bytes | str:
            async with (
                aiohttp.ClientSession() as session,
                session.get(server.url + "/body") as response,
            ):
                try:
                    return await read_bounded(response, limit)
                except BodyTooLarge as refused:
                    return str(refused)

        return asyncio.run(run())


@pytest.mark.parametrize("pieces", [None, (b"0123", b"4567", b"89")])
def test_a_body_up_to_the_limit_is_read_whole(pieces: tuple[bytes, ...] | None) -> None:
    assert _read(Answer(body=b"0123456789", pieces=pieces), limit=10) == b"0123456789"


def test_a_body_in_segments_is_read_to_its_end_not_to_the_first_segment() -> None:
    pieces = tuple(bytes([65 + i]) * 30_000 for i in range(5))
    assert _read(Answer(pieces=pieces), limit=200_000) == b"".join(pieces)


def test_a_declared_length_over_the_limit_is_refused_by_its_header() -> None:
    assert _read(Answer(body=b"x" * 11), limit=10) == "declared 11 bytes"


def test_a_chunked_body_over_the_limit_is_refused_once_it_passes_it() -> None:
    pieces = (b"x" * 6, b"y" * 6, b"z" * 100_000)
    assert _read(Answer(pieces=pieces), limit=10) == "more than 10 bytes"


def test_an_empty_body_is_empty() -> None:
    assert _read(Answer(body=b""), limit=0) == b""
    assert _read(Answer(pieces=()), limit=0) == b""
