"""Audit trails made by the real writer, and SQLite stores filled from their lines, for
in-process tests of what reads them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path

from broker.audit.records import AuditEvent
from broker.audit.store import AuditStore, row_of
from broker.audit.writer import AuditWriter


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
