"""``broker audit find-token`` in-process, on a trail the real writer made: what it prints and
exits with for an issued token, and for one whose issued record a later one withdraws."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from broker.audit.records import WITHHELD_CODE, WITHHELD_REASON, AuditEvent
from broker.audit.store import AuditStore, row_of
from broker.audit.writer import AuditWriter
from broker.cli import main
from broker.config import AuditSettings

LATE, KEPT = "ab" * 32, "cd" * 32


def _decision(request_id: str, sha256: str, *, withheld: bool = False) -> AuditEvent:
    return AuditEvent(
        time="2026-12-03T10:00:00.000Z",
        request_id=request_id,
        outcome="failed" if withheld else "issued",
        code=WITHHELD_CODE if withheld else "issued",
        status=503 if withheld else 200,
        caller="billing",
        external_user_id="u1",
        token_sha256=sha256,
        token_id=f"jti-{sha256[:4]}",
        reason=WITHHELD_REASON if withheld else None,
    )


@pytest.fixture
def trail(tmp_path: Path) -> Path:
    """r1: issued and handed out. r2: issued late, then withheld. r3: withheld only (its
    issued line was cut away with a failed write)."""
    directory = tmp_path / "audit"
    writer = AuditWriter(AuditSettings(dir=str(directory), fsync=False), instance_id="cli")

    async def write() -> None:
        await writer.start()
        for event in (
            _decision("r1", KEPT),
            _decision("r2", LATE),
            _decision("r2", LATE, withheld=True),
            _decision("r3", "ef" * 32, withheld=True),
        ):
            await writer.append(event)
        await writer.close()

    asyncio.run(write())
    return directory


def _store(trail: Path) -> str:
    path = trail.parent / "store.sqlite3"
    store = AuditStore.sqlite(path)
    store.migrate()
    store.insert(
        [
            row_of(line, p.name)
            for p in sorted(trail.glob("*.jsonl"))
            for line in p.read_bytes().splitlines()
        ]
    )
    store.close()
    return str(path)


@pytest.mark.parametrize("source", ["files", "database"])
def test_find_token_shows_a_withheld_token_and_says_it_never_left(
    trail: Path, source: str, capsys: pytest.CaptureFixture[str]
) -> None:
    where = [str(trail)] if source == "files" else ["--database", _store(trail)]

    def find(sha256: str) -> tuple[int, list[dict[str, object]], str]:
        status = main(["audit", "find-token", *where, "--sha256", sha256, "--format", "json"])
        printed = capsys.readouterr()
        return status, [json.loads(line) for line in printed.out.splitlines()], printed.err

    status, records, said = find(KEPT)
    assert status == 0
    assert [(r["requestId"], r["outcome"]) for r in records] == [("r1", "issued")]
    assert "withheld" not in said

    status, records, said = find(LATE)
    assert status == 0  # an issuance record matches: the auditor sees it, and what follows
    assert [(r["requestId"], r["outcome"]) for r in records] == [
        ("r2", "issued"),
        ("r2", "failed"),
    ]
    assert "matched by tokenSha256" in said
    assert "withheld: request r2 was answered 503 and this token never left" in said

    status, records, said = find("ef" * 32)
    assert status == 1
    assert [(r["requestId"], r["outcome"]) for r in records] == [("r3", "failed")]
    assert "withheld: request r3" in said
    assert "no issuance record matches" in said
