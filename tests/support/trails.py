"""Audit trails made by the real writer, and SQLite stores filled from their lines, for
in-process tests of what reads them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

import msgspec

from broker.audit.records import AuditEvent
from broker.audit.signing import CheckpointSigner, generate_key_pair, load_private_key
from broker.audit.store import AuditStore, row_of
from broker.audit.writer import AuditWriter
from broker.config import AuditSettings


def new_signer(directory: Path) -> tuple[CheckpointSigner, Path]:
    """A new key pair in ``directory``: the signer a writer takes, and the public key's path
    (``load_public_key`` reads it; ``verify --public-key`` takes it)."""
    private, public = generate_key_pair(directory)
    return load_private_key(private.read_bytes()), public


def write_trail(writer: AuditWriter, events: Iterable[AuditEvent]) -> None:
    """Start ``writer``, make each event durable in turn, and close it (sealed)."""

    async def write() -> None:
        await writer.start()
        for event in events:
            await writer.append(event)
        await writer.close()

    asyncio.run(write())


def store_of(path: Path, lines_by_file: Iterable[tuple[Path, list[bytes]]]) -> str:
    """A SQLite audit store at ``path`` holding these lines, as the shipper stores them
    (each with the name of its file); returns the path, as ``--database`` takes it."""
    store = AuditStore.sqlite(path)
    store.migrate()
    store.insert([row_of(line, file.name) for file, lines in lines_by_file for line in lines])
    store.close()
    return str(path)


class _FutureBody(msgspec.Struct, rename="camel"):
    time: str
    what_it_says: str


def newer_broker_trail(tmp_path: Path) -> tuple[Path, Path]:
    """A sealed trail with two decisions and, between them, a record of a type that no
    broker of today writes (``future_kind``); and the public key that verifies it."""
    signer, public = new_signer(tmp_path / "keys")
    trail = tmp_path / "trail"
    writer = AuditWriter(AuditSettings(dir=str(trail), fsync=False), signer, instance_id="newer")
    event = AuditEvent(
        time="2026-12-07T00:00:00.000Z", request_id="r", outcome="issued", code="issued", status=200
    )

    async def write() -> None:
        await writer.start()
        await writer.append(event)
        future = _FutureBody(time="2026-12-07T00:00:01.000Z", what_it_says="x")
        await writer.append_record("future_kind", future)  # type: ignore[arg-type]
        await writer.append(event)
        await writer.close()

    asyncio.run(write())
    return trail, public
