"""Where the chains in an audit directory end (``broker/audit/lineage.py``): what a new
chain names as its predecessor, with files beside it that cannot be read."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from broker.audit.lineage import newest_other_chain
from broker.audit.writer import AuditWriter
from broker.config import AuditSettings


def _chain(directory: Path, instance: str) -> None:
    """A chain of ``instance``'s own, started and sealed by the real writer."""

    async def run() -> None:
        writer = AuditWriter(AuditSettings(dir=str(directory), fsync=False), instance_id=instance)
        await writer.start()
        await writer.close()

    asyncio.run(run())


def _start_of(directory: Path, instance: str) -> dict[str, object]:
    [path] = sorted(directory.glob(f"audit-{instance}-*.jsonl"))
    first: dict[str, object] = json.loads(path.read_bytes().splitlines()[0])
    return first


_UNREADABLE: dict[str, Callable[[Path], None]] = {
    "a dangling link": lambda path: path.symlink_to(path.parent / "nowhere"),
    "a FIFO": lambda path: os.mkfifo(path),
    "a directory": lambda path: path.mkdir(),
    "a link to /dev/zero": lambda path: path.symlink_to("/dev/zero"),
}


@pytest.mark.parametrize("kind", sorted(_UNREADABLE))
def test_a_chain_that_cannot_be_read_is_passed_over_for_the_next_one(
    tmp_path: Path, kind: str
) -> None:
    # The newest chain by an audit file's name is one that cannot be read: the search
    # failed as a whole, and the next chain named no predecessor at all.
    _chain(tmp_path, "older")
    _UNREADABLE[kind](tmp_path / "audit-stray-000001.jsonl")

    found = newest_other_chain(tmp_path, "next")

    assert found is not None
    assert found.position is not None
    assert found.position.instance == "older"
    _chain(tmp_path, "next")
    predecessor = _start_of(tmp_path, "next")["predecessor"]
    assert isinstance(predecessor, dict)
    assert predecessor["instance"] == "older"


def test_with_nothing_readable_beside_it_a_chain_names_no_predecessor(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "audit-stray-000001.jsonl")
    assert newest_other_chain(tmp_path, "next") is None
