"""Chain heads the broker logged, held against a trail: what the trail alone cannot prove.

Every signed checkpoint, once durable, is also a log line (``audit_checkpoint_signed``:
the instance, the checkpoint's seq and its line's SHA-256). Logs leave the host as they are
written, for a pipeline that whoever can edit the audit files or the store usually cannot
edit. A chain deleted whole after the newest one that names it, or cut back below a
checkpoint it had signed, then misses a head the log names, where neither the files nor the
store can show it: the newest chain is named by no successor, and a cut tail reads as a
crash.

Only the newest head logged for each instance is looked up. The trail's chains verified
from their first lines, so the line at that seq with that hash vouches, through the links,
for every line before it, the older heads included.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from broker.audit.reader import AuditFile, grouped_by_instance, line_hash_at
from broker.audit.records import ANCHOR_EVENT, MAX_LINE_BYTES, ChainPosition
from broker.audit.store import writes_position
from broker.decoding import decode_untrusted
from broker.regular_files import open_regular

_DECODER = msgspec.json.Decoder(dict[str, Any])
_SHA256 = re.compile(r"[0-9a-f]{64}")


class AnchorsUnusable(Exception):
    """The log cannot be held against the trail: unreadable, or it contradicts itself."""


@dataclass
class Anchors:
    """The newest logged head of each instance, and what was read to find them."""

    newest: dict[str, ChainPosition] = field(default_factory=dict)
    # audit_checkpoint_signed lines read, and other lines passed over (the rest of a log).
    heads: int = 0
    other_lines: int = 0


def read_anchors(path: str | Path) -> Anchors:
    """The heads logged in ``path``: lines of the broker's JSON log, in any order, with any
    other lines between them (a container runtime's prefix before the JSON is passed over).
    A head line that does not name a position, or an instance's newest head logged with two
    hashes, make the whole file unusable: a log that says two things vouches for neither.
    Memory: one head an instance, however long the log (a collector may repeat a line, so
    a head logged twice alike is one head)."""
    anchors = Anchors()
    number = 0
    try:
        with open_regular(path) as handle:
            while raw := handle.readline(MAX_LINE_BYTES + 1):
                number += 1
                if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                    # Longer than any line the broker logs: passed over to its end.
                    while (rest := handle.readline(MAX_LINE_BYTES + 1)) and not rest.endswith(
                        b"\n"
                    ):
                        pass
                    anchors.other_lines += 1
                    continue
                record = _log_record(raw)
                if record is None or record.get("event") != ANCHOR_EVENT:
                    anchors.other_lines += 1
                    continue
                head = _position(record)
                if head is None:
                    raise AnchorsUnusable(
                        f"{path}:{number}: an {ANCHOR_EVENT} line without an instance id, a "
                        "seq and a line_sha256 as the broker logs them"
                    )
                newest = anchors.newest.get(head.instance)
                if newest is not None and head.seq == newest.seq and head.hash != newest.hash:
                    raise AnchorsUnusable(
                        f"{path}:{number}: instance {head.instance!r} seq {head.seq} is logged "
                        "with two different hashes"
                    )
                anchors.heads += 1
                if newest is None or head.seq > newest.seq:
                    anchors.newest[head.instance] = head
    except OSError as exc:
        raise AnchorsUnusable(f"{path}: cannot read: {exc.strerror}") from None
    if not anchors.heads:
        raise AnchorsUnusable(
            f"{path}: no {ANCHOR_EVENT} line in {number} line(s): nothing to hold the trail "
            "against (the broker logs one per checkpoint at level info)"
        )
    return anchors


def _log_record(raw: bytes) -> dict[str, Any] | None:
    start = raw.find(b"{")
    if start < 0:
        return None
    try:
        return decode_untrusted(_DECODER, raw[start:])
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _position(record: Mapping[str, Any]) -> ChainPosition | None:
    instance, seq, digest = record.get("instance"), record.get("seq"), record.get("line_sha256")
    if not isinstance(instance, str) or not isinstance(seq, int) or isinstance(seq, bool):
        return None
    if not writes_position(instance, seq):
        return None
    if not isinstance(digest, str) or _SHA256.fullmatch(digest) is None:
        return None
    return ChainPosition(instance=instance, seq=seq, hash=digest)


# Where a copy of the trail holds a line: its SHA-256, or None.
HashAt = Callable[[str, int], str | None]


def file_hashes(files: Iterable[AuditFile]) -> HashAt:
    """Lines as the audit files hold them."""
    grouped = grouped_by_instance(files)

    def at(instance: str, seq: int) -> str | None:
        held = grouped.get(instance)
        return None if not held else line_hash_at(held, seq)

    return at


def missing(
    anchors: Anchors, *copies: HashAt, retained: Callable[[str], int] | None = None
) -> list[str]:
    """What the trail lacks of the logged heads: for each instance whose newest logged head
    no copy holds with that hash, why. ``retained`` says, for a store, through which seq
    retention deleted an instance's rows (a retention record says so): a head at or below it
    is gone by design."""
    failures = []
    for instance, head in sorted(anchors.newest.items()):
        if retained is not None and head.seq <= retained(instance):
            continue
        found = [hash_at(instance, head.seq) for hash_at in copies]
        if head.hash in found:
            continue
        said = f"the log names instance {instance!r}'s signed checkpoint at seq {head.seq}"
        if any(other is not None for other in found):
            failures.append(f"{said}, and the line at that seq is another: the chain was rewritten")
        else:
            failures.append(
                f"{said}, and the trail does not hold it: the chain was deleted whole, or "
                "cut back below it"
            )
    return failures
