"""Audit records compared across two paths that must decide alike."""

from __future__ import annotations

from typing import Any

# What two records of the same decision may differ in: their place in the chain, when they
# were written and the request each answered.
_PLACE_AND_TIME = frozenset({"time", "seq", "prev", "requestId"})


def decision(record: dict[str, Any]) -> dict[str, Any]:
    """The record without its place in the chain, its time and its request id (each of which
    it must have)."""
    missing = _PLACE_AND_TIME - record.keys()
    assert not missing, f"a record without {sorted(missing)}"
    return {name: value for name, value in record.items() if name not in _PLACE_AND_TIME}


def accounted(records: list[dict[str, Any]], kind: str, code: str) -> int:
    """How many refusals of ``code`` a trail accounts for: its decisions of that code, the
    refusals each counted before it (``unrecordedBefore``), and the counts of ``kind`` in
    ``unrecorded`` records (the refusals no decision came after)."""
    decisions = [r for r in records if r["type"] == "decision" and r["code"] == code]
    apart: list[int] = [
        count["count"]
        for r in records
        if r["type"] == "unrecorded"
        for count in r["counts"]
        if count["kind"] == kind
    ]
    before: list[int] = [r["unrecordedBefore"] or 0 for r in decisions]
    return len(decisions) + sum(before) + sum(apart)
