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
