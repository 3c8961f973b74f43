"""``verify --database``'s check of what start and witness records saw, on a store of rows
written here: found missing across pages of records, and read a page at a time. (The whole
of ``verify --database`` on real writers' chains: tests/unit/test_audit_shipping.py.)"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from broker.audit.reader import AuditFile, Broken
from broker.audit.store import AuditStore, Row, row_of
from broker.audit.store_verify import _check_row, _witnessed_missing

SEEN = 1200  # witness records: more than two pages of 500


def _line(instance: str, seq: int, **fields: object) -> bytes:
    record = {"v": 1, "type": "decision", "instance": instance, "seq": seq, "prev": "0" * 64}
    return json.dumps(record | {"time": "2026-12-07T10:00:00.000Z", **fields}).encode()


def _row(instance: str, seq: int, **fields: object) -> Row:
    return row_of(_line(instance, seq, **fields), f"audit-{instance}-000001.jsonl")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """A store where chain "w" witnessed chain "x" at each of its first SEEN lines."""
    store = AuditStore.sqlite(tmp_path / "store.sqlite3")
    store.migrate()
    watched = [_row("x", seq) for seq in range(1, SEEN + 1)]
    store.insert(watched)
    store.insert(
        [
            _row(
                "w",
                seq,
                type="witness",
                chains=[{"instance": "x", "seq": seq, "hash": x.line_sha256}],
            )
            for seq, x in enumerate(watched, start=1)
        ]
    )
    store.close()
    return tmp_path / "store.sqlite3"


def _missing(path: Path, retained: dict[str, int] | None = None) -> str | None:
    return _witnessed_missing(AuditStore.sqlite(path), retained or {})


def test_every_witnessed_line_held_as_it_was_is_no_failure(path: Path) -> None:
    assert _missing(path) is None


def test_a_witnessed_line_deleted_is_found_on_a_later_page(path: Path) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute("DELETE FROM audit_records WHERE instance = 'x' AND seq >= 1100")
    assert _missing(path) == (
        "instance 'x' seq 1100, which instance 'w' (its witness record, seq 1100) saw in the "
        "store, is gone: rows were deleted from the store (a whole chain, or its tail)"
    )
    # Unless retention deleted it, and a retention record says so.
    assert _missing(path, {"x": SEEN}) is None


def test_a_witnessed_line_replaced_is_another_line_now(path: Path) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute(
            "UPDATE audit_records SET line_sha256 = ? WHERE instance = 'x' AND seq = 900",
            ("f" * 64,),
        )
    found = _missing(path)
    assert found is not None
    assert found.startswith(
        "instance 'x' seq 900, which instance 'w' (its witness record, seq 900)"
    )
    assert "is another line now" in found


def test_a_witnessed_chain_that_is_not_a_position_is_a_failure(path: Path) -> None:
    store = AuditStore.sqlite(path)
    store.insert([_row("s", 1, type="start", witnessed=[{"instance": "x", "seq": "one"}])])
    assert _missing(path) == (
        "instance 's' (its start record, seq 1): a witnessed chain that is not a position"
    )


def test_the_lines_are_looked_up_a_page_at_a_time_not_one_each(path: Path) -> None:
    store = AuditStore.sqlite(path)
    statements: list[str] = []
    store._sqlite_connection().set_trace_callback(statements.append)
    assert _witnessed_missing(store, {}) is None
    lookups = [sql for sql in statements if "line_sha256 FROM" in sql]
    # Three pages of witness records, one statement each for their lines (a statement for
    # each line before: 1,200).
    assert len(lookups) == 3, len(lookups)


def _checked(
    line: bytes, columns: tuple[str | None, ...] | None = None, seq: int = 3
) -> str | None:
    """What verifying one stored row says: None if it is the line as shipped."""
    row = row_of(line, "audit-x-000001.jsonl")
    audit_file = AuditFile("x", 1, Path("audit-x-000001.jsonl"))
    try:
        _check_row(
            "x", audit_file, row.file, line, seq, row.columns if columns is None else columns,
            row.line_sha256,
        )  # fmt: skip
    except Broken as broken:
        return str(broken)
    return None


def test_a_row_is_held_to_what_its_line_says_field_by_field() -> None:
    line = _line("x", 3, outcome="issued", caller="svc", cache=5, externalUserId="u1")
    # A field that is not text is a NULL column, as the shipper stores it.
    assert row_of(line, "f").columns[10] is None
    assert _checked(line) is None
    shipped = row_of(line, "f").columns
    edited = (*shipped[:6], "someone-else", *shipped[7:])
    assert _checked(line, edited) == (
        "instance 'x' seq 3: the row's external_user_id column does not match the record's "
        "line (edited in the store)"
    )
    as_text = (*shipped[:10], "5")
    assert "the row's cache column does not match" in (_checked(line, as_text) or "")
    assert "instance or seq column differs" in (_checked(line, seq=4) or "")
