"""Where the chains in an audit directory end: what a new chain names as its predecessor, and
where a restarted instance continues its own.

A chain's head is its last complete line (its seq and the SHA-256 of its bytes). Only the
tail of the last file is read, so a start costs the same on a large trail as on a small one.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import msgspec
import structlog

from broker.audit.reader import AuditFile, parse_name
from broker.audit.records import ChainPosition
from broker.decoding import decode_untrusted
from broker.regular_files import open_regular

log = structlog.get_logger("broker.audit")

# A line is well under this; the tail read finds the last complete line within it.
_TAIL_BYTES = 256 * 1024


class _Header(msgspec.Struct):
    instance: str
    seq: int


_HEADER = msgspec.json.Decoder(_Header)


@dataclass(frozen=True)
class ChainHead:
    """The last segment number of a chain, and its last complete line if it has one."""

    segment: int
    position: ChainPosition | None
    truncated_bytes: int = 0


def chains_in(directory: Path) -> dict[str, list[AuditFile]]:
    """Each instance's files in ``directory``, in segment order."""
    found: dict[str, list[AuditFile]] = {}
    if not directory.is_dir():
        return found
    for path in directory.glob("audit-*.jsonl"):
        parsed = parse_name(path)
        if parsed is not None:
            found.setdefault(parsed.instance, []).append(parsed)
    for files in found.values():
        files.sort()
    return found


def _last_line(path: Path, *, cut_partial: bool) -> tuple[bytes | None, int]:
    """The last complete line of ``path`` and the bytes of an unfinished line after it,
    which are cut away (and the cut made durable) when ``cut_partial``."""
    with open_regular(path) as file:
        size = file.seek(0, os.SEEK_END)
        start = max(0, size - _TAIL_BYTES)
        file.seek(start)
        tail = file.read()
    end = tail.rfind(b"\n")
    partial = len(tail) - (end + 1)
    if partial and cut_partial:
        # An unfinished line was never acknowledged: no token waited on it.
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, size - partial)
            os.fsync(fd)
        finally:
            os.close(fd)
    if end < 0:
        return None, partial
    begin = tail.rfind(b"\n", 0, end) + 1
    if begin == 0 and start > 0:
        return None, partial
    return tail[begin:end], partial


def _head(instance: str, files: list[AuditFile], *, cut_partial: bool) -> ChainHead:
    truncated = 0
    for position, audit_file in enumerate(reversed(files)):
        line, partial = _last_line(audit_file.path, cut_partial=cut_partial and position == 0)
        truncated = truncated or partial
        if line is None:
            continue
        try:
            header = decode_untrusted(_HEADER, line)
        except (msgspec.DecodeError, msgspec.ValidationError):
            break
        if header.instance != instance:
            break
        digest = hashlib.sha256(line).hexdigest()
        return ChainHead(
            files[-1].segment,
            ChainPosition(instance=instance, seq=header.seq, hash=digest),
            truncated,
        )
    return ChainHead(files[-1].segment, None, truncated)


class _Seal(msgspec.Struct):
    instance: str
    type: str
    reason: str | None = None


_SEAL = msgspec.json.Decoder(_Seal)


def sealed(instance: str, files: list[AuditFile]) -> bool:
    """Whether ``instance``'s chain ends, with nothing after, in its shutdown checkpoint: no
    broker writes it any more (a crashed chain, or a running one, does not end so)."""
    if not files:
        return False
    try:
        line, partial = _last_line(files[-1].path, cut_partial=False)
    except OSError:
        return False
    if line is None or partial:
        return False
    try:
        last = decode_untrusted(_SEAL, line)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False
    return last.instance == instance and last.type == "checkpoint" and last.reason == "shutdown"


def own_chain(directory: Path, instance: str, *, cut_partial: bool) -> ChainHead | None:
    """Where ``instance``'s chain ends in ``directory``, or None if it has no files there."""
    files = chains_in(directory).get(instance)
    if not files:
        return None
    return _head(instance, files, cut_partial=cut_partial)


def newest_other_chain(directory: Path, instance: str) -> ChainHead | None:
    """The head of the most recently written chain other than ``instance``'s that can be
    read. One that cannot (a dangling link, a FIFO or a directory by an audit file's name)
    is passed over and said: it made the whole search fail, so that a new chain named no
    predecessor at all, however many readable chains lay beside it."""
    candidates = []
    for other, files in chains_in(directory).items():
        if other == instance:
            continue
        try:
            written = max(audit_file.path.stat().st_mtime_ns for audit_file in files)
        except OSError as exc:
            _passed_over(other, files, exc)
            continue
        candidates.append((written, other, files))
    for _, other, files in sorted(candidates, reverse=True):
        try:
            head = _head(other, files, cut_partial=False)
        except OSError as exc:
            _passed_over(other, files, exc)
            continue
        if head.position is not None:
            return head
    return None


def _passed_over(instance: str, files: list[AuditFile], exc: OSError) -> None:
    log.warning(
        "audit_chain_unreadable",
        instance=instance,
        files=[audit_file.path.name for audit_file in files],
        error=exc.strerror or type(exc).__name__,
        effect="not a candidate for this chain's predecessor; verify reports it",
    )
