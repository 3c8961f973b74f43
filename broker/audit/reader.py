"""Reading audit files: verify the chain offline, answer auditors' questions, find a token.

``verify`` needs only the files and the public key. It walks each instance's files in
segment order and stops at the first broken place, naming the file, the line and the
sequence number, and what is wrong there.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import re
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from broker.audit.records import (
    GENESIS,
    MAX_LINE_BYTES,
    RECORD_TYPES,
    SCHEMA_VERSION,
    CheckpointHead,
    checkpoint_line,
    names_a_token,
)
from broker.audit.signing import CheckpointVerifier
from broker.decoding import decode_untrusted
from broker.regular_files import open_regular

_FILE_NAME = re.compile(r"^audit-(?P<instance>.+)-(?P<segment>\d{6})\.jsonl$")
_DECODER = msgspec.json.Decoder(dict[str, Any])


@dataclass(frozen=True, order=True)
class AuditFile:
    instance: str
    segment: int
    path: Path


def parse_name(path: Path) -> AuditFile | None:
    match = _FILE_NAME.fullmatch(path.name)
    if match is None:
        return None
    return AuditFile(match.group("instance"), int(match.group("segment")), path)


def discover(paths: Iterable[str | Path]) -> list[AuditFile]:
    """Audit files named or inside the directories named, ordered by instance and segment."""
    found: list[AuditFile] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ValueError(f"{path}: no such file or directory")
        candidates = sorted(path.glob("audit-*.jsonl")) if path.is_dir() else [path]
        for candidate in candidates:
            parsed = parse_name(candidate)
            if parsed is None:
                raise ValueError(
                    f"{candidate}: not an audit file name (audit-INSTANCE-NNNNNN.jsonl)"
                )
            found.append(parsed)
    return sorted(set(found))


@dataclass
class ChainSummary:
    """One instance's chain as verified: what an auditor lists to compare with the
    deployment's own record of which instances ran."""

    instance: str
    files: int
    first_seq: int
    last_seq: int
    last_time: str | None
    # The time its last signed checkpoint carries.
    signed_time: str | None
    sealed: bool
    # The chain this one names as its predecessor, if any.
    predecessor: str | None
    # The SHA-256 of its last line: through the links, it vouches for every line before.
    last_hash: str = GENESIS
    # Whether another chain here names this one as its predecessor.
    followed: bool = False
    # The last of its lines a successor names (the walk found it there, with that hash):
    # through it, the successor's signed start vouches for this chain.
    named_through: int | None = None


COMPLETENESS = (
    "complete means: every chain is unbroken from its first record to its last; every chain "
    "that names a predecessor (the chain written before it in the same audit directory) finds "
    "it here with that very line; and every chain ends sealed by a signed shutdown checkpoint "
    "(or, with --allow-crash-tail, in unsigned records after a signed checkpoint). A chain "
    "that no other chain names (a lineage head) could have had successors deleted without "
    "trace in these files: compare the heads with the instances you know ran."
)
# What the store adds (verify --database): replicas name each other's chains.
STORE_COMPLETENESS = (
    "In the store, every line that a start or witness record saw there (the newest line of "
    "each chain running beside a replica when it started, and at each of its heartbeats) is "
    "still there as it was, unless retention deleted it: a chain deleted whole after another "
    "replica saw it fails. A chain that no other replica saw is still a lineage head alone."
)


@dataclass
class VerifyReport:
    files: int = 0
    instances: int = 0
    records: int = 0
    checkpoints: int = 0
    # Refusals the trail counts without a record of their own: a decision's
    # ``unrecordedBefore``, and the counts of ``unrecorded`` records (floods).
    counted: int = 0
    failure: str | None = None
    warnings: list[str] = field(default_factory=list)
    chains: list[ChainSummary] = field(default_factory=list)
    # Records of a type this tool does not know, by type: a newer broker's. Their chain
    # verifies as any other's; what they say, a newer tool reads.
    unknown_types: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def heads(self) -> list[ChainSummary]:
        return [chain for chain in self.chains if not chain.followed]


class Broken(Exception):
    """Where a chain is broken, and how; the verifier stops there."""


@dataclass
class _Walk:
    """Where the verifier is in one instance's chain."""

    instance: str
    expected_seq: int = 1
    prev: str = GENESIS
    # Where this chain's remaining records begin (after records deleted by retention).
    first_seq: int = 1
    prev_line: int = 0
    last_checkpoint_seq: int = 0
    last_checkpoint_reason: str | None = None
    # The time the last checkpoint signed: unlike any unsigned record's, no one without
    # the key can move it forward.
    last_checkpoint_time: str | None = None
    expect_next_file: str | None = None
    # After a shutdown checkpoint only a start record (a restart continuing it) may follow.
    sealed: bool = False
    last_time: str | None = None
    predecessor: str | None = None
    # Lines other chains name as their predecessor: seq -> (hash, who names it).
    named: dict[int, tuple[str, str]] = field(default_factory=dict)


def _where(path: Path, line: int, seq: object = None) -> str:
    return f"{path}:{line}" + (f" (seq {seq})" if isinstance(seq, int) else "")


def verify(
    paths: Iterable[str | Path],
    verifier: CheckpointVerifier,
    *,
    allow_crash_tail: bool = False,
    starts: dict[str, tuple[int, str]] | None = None,
) -> VerifyReport:
    """Verify the chains in ``paths``. ``starts`` gives, for a chain whose first files are
    gone but vouched for by another copy (the audit store, after pruning), its first seq
    here and the hash of the line before it."""
    report = VerifyReport()
    try:
        files = discover(paths)
    except ValueError as exc:
        report.failure = str(exc)
        return report
    if not files:
        report.failure = "no audit files found"
        return report
    return verify_chains(
        grouped_by_instance(files),
        _file_lines,
        verifier,
        report,
        allow_crash_tail=allow_crash_tail,
        starts=starts,
    )


def grouped_by_instance(files: Iterable[AuditFile]) -> dict[str, list[AuditFile]]:
    """``files`` by the instance whose chain they hold, each list in the order given."""
    grouped: dict[str, list[AuditFile]] = {}
    for audit_file in files:
        grouped.setdefault(audit_file.instance, []).append(audit_file)
    return grouped


def first_line(audit_file: AuditFile) -> bytes | None:
    """The first complete line of ``audit_file``, or None."""
    with contextlib.closing(_read_lines(audit_file.path)) as lines:
        for _, raw, complete in lines:
            return raw if complete else None
    return None


# Each line of one file of a chain: its number, its bytes and whether it ended with a newline.
LinesOf = Callable[[AuditFile], Iterator[tuple[int, bytes, bool]]]


def _file_lines(audit_file: AuditFile) -> Iterator[tuple[int, bytes, bool]]:
    return _read_lines(audit_file.path)


def verify_chains(
    by_instance: dict[str, list[AuditFile]],
    lines_of: LinesOf,
    verifier: CheckpointVerifier,
    report: VerifyReport,
    *,
    allow_crash_tail: bool,
    starts: dict[str, tuple[int, str]] | None = None,
    retained: dict[str, int] | None = None,
) -> VerifyReport:
    """Verify each instance's chain, its files given in order and read through
    ``lines_of`` (files on disk, or rows of the audit store). ``starts`` gives, for a chain
    whose beginning was deleted by retention, its first seq and the hash of the line before
    it; ``retained`` the last seq retention deleted of each instance (a predecessor named in
    that range is accounted for)."""
    report.instances = len(by_instance)
    starts = starts or {}
    try:
        named = _predecessors_named(by_instance, lines_of, retained or {})
        for instance, instance_files in by_instance.items():
            first_seq, prev = starts.get(instance, (1, GENESIS))
            walk = _Walk(
                instance,
                expected_seq=first_seq,
                prev=prev,
                first_seq=first_seq,
                named=named.get(instance, {}),
            )
            _verify_instance(walk, instance_files, lines_of, verifier, report, allow_crash_tail)
    except Broken as exc:
        report.failure = str(exc)
    followed = {chain.predecessor for chain in report.chains}
    for chain in report.chains:
        chain.followed = chain.instance in followed
    return report


def _predecessors_named(
    by_instance: dict[str, list[AuditFile]], lines_of: LinesOf, retained: dict[str, int]
) -> dict[str, dict[int, tuple[str, str]]]:
    """From each chain's first record: which line of which other chain it follows. A chain
    named but absent is the deletion of a whole instance."""
    named: dict[str, dict[int, tuple[str, str]]] = {}
    for instance, files in by_instance.items():
        first = files[0]
        try:
            line = next((raw for _, raw, _ in lines_of(first)), b"")
            record = decode_untrusted(_DECODER, line) if line else {}
        except (Broken, msgspec.DecodeError, msgspec.ValidationError):
            continue
        predecessor = record.get("predecessor") if record.get("type") == "start" else None
        if not isinstance(predecessor, dict) or predecessor.get("instance") == instance:
            continue
        other, seq, digest = (predecessor.get(k) for k in ("instance", "seq", "hash"))
        here = _where(first.path, 1, record.get("seq"))
        if not isinstance(other, str) or not isinstance(seq, int) or not isinstance(digest, str):
            raise Broken(f"{here}: start record names a malformed predecessor")
        if seq <= retained.get(other, 0):
            continue  # that line was deleted by retention, and a retention record says so
        if other not in by_instance:
            raise Broken(
                f"{here}: this chain follows instance {other!r} (its seq {seq}), but no file of "
                f"that instance is here: its chain was deleted, or not given to verify"
            )
        named.setdefault(other, {})[seq] = (digest, here)
    return named


def _verify_instance(
    walk: _Walk,
    files: list[AuditFile],
    lines_of: LinesOf,
    verifier: CheckpointVerifier,
    report: VerifyReport,
    allow_crash_tail: bool,
) -> None:
    instance = walk.instance
    # A chain cut by retention begins in a later file.
    expected_segment = 1 if walk.first_seq == 1 else files[0].segment
    for position, audit_file in enumerate(files):
        if audit_file.segment != expected_segment:
            missing = audit_file.path.with_name(
                f"audit-{instance}-{expected_segment:06d}.jsonl"
            ).name
            raise Broken(f"{audit_file.path}: missing file before it: {missing}")
        if walk.expect_next_file is not None and audit_file.path.name != walk.expect_next_file:
            raise Broken(f"{audit_file.path}: expected {walk.expect_next_file} here")
        walk.expect_next_file = None
        expected_segment += 1
        report.files += 1
        is_last = position == len(files) - 1
        _verify_file(audit_file, lines_of, walk, verifier, report, is_last, allow_crash_tail)

    if walk.expect_next_file is not None:
        raise Broken(
            f"{files[-1].path}: missing file: {walk.expect_next_file} "
            "(named by the rotation checkpoint at the end of this file)"
        )
    last_seq = walk.expected_seq - 1
    for seq, (_, named_by) in sorted(walk.named.items()):
        if seq > last_seq:
            raise Broken(
                f"{files[-1].path}: the chain ends at seq {last_seq}, but {named_by} follows "
                f"its seq {seq}: the records after seq {last_seq} were deleted"
            )
    report.chains.append(
        ChainSummary(
            instance=instance,
            files=len(files),
            first_seq=walk.first_seq,
            last_seq=last_seq,
            last_time=walk.last_time,
            signed_time=walk.last_checkpoint_time,
            sealed=walk.sealed,
            predecessor=walk.predecessor,
            last_hash=walk.prev,
            named_through=max(walk.named, default=None),
        )
    )
    if not walk.last_checkpoint_seq:
        # A broker writes a signed start checkpoint before its first decision: a chain with
        # none was not written by a broker holding this key, whatever --allow-crash-tail says.
        raise Broken(
            f"{files[-1].path}: the chain of instance {instance!r} has no signed checkpoint "
            "at all: it was not written by a broker with this signing key"
        )
    unsigned = last_seq - walk.last_checkpoint_seq
    message = None
    if unsigned:
        message = (
            f"{files[-1].path}: {unsigned} record(s) after the last checkpoint "
            f"(seq {walk.last_checkpoint_seq + 1} to {walk.expected_seq - 1}) are not signed: "
            "the broker crashed, is still running, or records after the last checkpoint "
            "were dropped"
        )
    elif walk.last_checkpoint_reason != "shutdown":
        # A clean stop ends every chain with a shutdown checkpoint; a chain cut back to an
        # earlier checkpoint would otherwise look complete.
        message = (
            f"{files[-1].path}: the chain ends at seq {walk.last_checkpoint_seq}, a checkpoint "
            f"of reason {walk.last_checkpoint_reason!r}, not a shutdown checkpoint: the broker "
            "crashed, is still running, or the records after that checkpoint were dropped"
        )
    if message is not None:
        if not allow_crash_tail:
            raise Broken(message)
        report.warnings.append(message)


def _read_lines(path: Path) -> Generator[tuple[int, bytes, bool]]:
    """Each line's number, bytes (without the newline) and whether it ended with one, read
    one at a time: a hostile file of any size costs at most one bounded line of memory."""
    try:
        with open_regular(path) as handle:
            number = 0
            while raw := handle.readline(MAX_LINE_BYTES + 1):
                number += 1
                complete = raw.endswith(b"\n")
                if not complete and len(raw) > MAX_LINE_BYTES:
                    raise Broken(
                        f"{_where(path, number)}: a line longer than {MAX_LINE_BYTES} bytes "
                        "is not an audit record"
                    )
                yield number, raw[:-1] if complete else raw, complete
    except OSError as exc:
        raise Broken(f"{path}: cannot read: {exc.strerror}") from None


def line_hash_at(files: Sequence[AuditFile], seq: int) -> str | None:
    """The SHA-256 of the line with ``seq`` in one instance's files (in chain order, verified
    already), or None if none holds it. Only the file that holds it is read through: the
    newest whose first record is not after ``seq`` (the seq asked for is usually near the
    end, where a store behind the files stops)."""
    for audit_file in reversed(files):
        with contextlib.closing(_read_lines(audit_file.path)) as lines:
            records = ((raw, _seq_of(raw)) for _, raw, complete in lines if complete)
            first = next(records, None)
            if first is None or first[1] is None or first[1] > seq:
                continue
            for raw, found in itertools.chain([first], records):
                if found == seq:
                    return hashlib.sha256(raw).hexdigest()
            return None
    return None


def _seq_of(raw: bytes) -> int | None:
    try:
        found = decode_untrusted(_DECODER, raw).get("seq")
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return found if isinstance(found, int) else None


def _verify_file(
    audit_file: AuditFile,
    lines_of: LinesOf,
    walk: _Walk,
    verifier: CheckpointVerifier,
    report: VerifyReport,
    is_last: bool,
    allow_crash_tail: bool,
) -> None:
    path = audit_file.path
    for index, raw, complete in lines_of(audit_file):
        if not complete:
            # readline stops without a newline only at the end of the file.
            partial = (
                f"{_where(path, index)}: partial last line (a crash mid-write, or the file was cut)"
            )
            if not (is_last and allow_crash_tail):
                raise Broken(partial)
            report.warnings.append(partial)
            return
        if walk.expect_next_file is not None:
            raise Broken(f"{_where(path, index)}: records after a rotation checkpoint")
        _verify_line(path, index, raw, walk, verifier, report)


# What a record type's name is, as the writer writes one.
_TYPE_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}")


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _counted(kind: object, record: dict[str, Any]) -> int:
    """The refusals a record counts without recording them (none if its fields are not
    what they should be: verify checks the chain, not each record's schema)."""
    if kind == "decision":
        return _count(record.get("unrecordedBefore"))
    counts = record.get("counts")
    if kind != "unrecorded" or not isinstance(counts, list):
        return 0
    return sum(_count(entry.get("count")) for entry in counts if isinstance(entry, dict))


def _verify_line(
    path: Path,
    line: int,
    raw: bytes,
    walk: _Walk,
    verifier: CheckpointVerifier,
    report: VerifyReport,
) -> None:
    try:
        record = decode_untrusted(_DECODER, raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise Broken(f"{_where(path, line)}: not a valid JSON object") from None
    seq = record.get("seq")
    here = _where(path, line, seq)
    kind = record.get("type")
    if record.get("v") != SCHEMA_VERSION:
        raise Broken(f"{here}: unknown schema version")
    if kind not in RECORD_TYPES:
        # A type added by a newer broker (as "witness" was): an older tool that refused it
        # called an intact trail broken. Its line is chained and signed like any other.
        if not isinstance(kind, str) or _TYPE_NAME.fullmatch(kind) is None:
            raise Broken(f"{here}: no record type")
        report.unknown_types[kind] = report.unknown_types.get(kind, 0) + 1
    if record.get("instance") != walk.instance:
        raise Broken(f"{here}: belongs to instance {record.get('instance')!r}, not this chain")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise Broken(f"{here}: seq is not an integer")
    if seq > walk.expected_seq:
        missing = seq - walk.expected_seq
        raise Broken(f"{here}: seq jumps from {walk.expected_seq - 1}: {missing} record(s) deleted")
    if seq < walk.expected_seq:
        raise Broken(
            f"{here}: seq {seq} after {walk.expected_seq - 1}: a record was inserted, "
            "duplicated or moved"
        )
    if record.get("prev") != walk.prev:
        where_before = f"line {walk.prev_line}" if walk.prev_line else "the previous file"
        raise Broken(
            f"{here}: prev is not the hash of the record before it: that record "
            f"({where_before}, seq {seq - 1}) was modified, or this one was forged"
        )
    if walk.sealed and kind != "start":
        raise Broken(
            f"{here}: a record after the shutdown checkpoint that sealed this chain "
            f"(seq {walk.last_checkpoint_seq}): appended after a clean stop"
        )
    if kind == "checkpoint":
        _verify_checkpoint(path, here, raw, record, verifier)
        report.checkpoints += 1
        walk.last_checkpoint_seq = seq
        walk.last_checkpoint_reason = record.get("reason")
        signed_at = record.get("time")
        walk.last_checkpoint_time = signed_at if isinstance(signed_at, str) else None
        walk.sealed = record.get("reason") == "shutdown"
        if record.get("reason") == "rotation":
            walk.expect_next_file = record.get("next")
    elif kind == "start":
        _verify_start(here, record, walk)
        walk.sealed = False
    else:
        report.records += 1
        report.counted += _counted(kind, record)
    digest = hashlib.sha256(raw).hexdigest()
    if (expected := walk.named.get(seq)) is not None and expected[0] != digest:
        raise Broken(
            f"{here}: {expected[1]} follows this line, but names another hash for it: "
            "this line was modified"
        )
    if isinstance(record.get("time"), str):
        walk.last_time = record["time"]
    walk.expected_seq = seq + 1
    walk.prev = digest
    walk.prev_line = line


def _verify_start(here: str, record: dict[str, Any], walk: _Walk) -> None:
    """A start record begins a chain (seq 1, following another chain or none), or continues
    this one after a restart (naming exactly the line before it)."""
    predecessor = record.get("predecessor")
    seq = record["seq"]
    if seq == 1:
        if isinstance(predecessor, dict):
            walk.predecessor = predecessor.get("instance")
        return
    if (
        not isinstance(predecessor, dict)
        or predecessor.get("instance") != walk.instance
        or predecessor.get("seq") != seq - 1
        or predecessor.get("hash") != walk.prev
    ):
        raise Broken(f"{here}: a start record that does not continue this chain")


def _verify_checkpoint(
    path: Path, here: str, raw: bytes, record: dict[str, Any], verifier: CheckpointVerifier
) -> None:
    if record.get("keyId") != verifier.key_id:
        raise Broken(f"{here}: checkpoint signed by key {record.get('keyId')!r}, not this key")
    if record.get("headSeq") != record["seq"] - 1 or record.get("headHash") != record["prev"]:
        raise Broken(f"{here}: checkpoint head does not match its own chain position")
    if record.get("file") != path.name:
        raise Broken(f"{here}: checkpoint names file {record.get('file')!r}: the file was renamed")
    try:
        head = CheckpointHead(
            instance=record["instance"],
            file=record["file"],
            seq=record["headSeq"],
            hash=record["headHash"],
            reason=record["reason"],
            time=record["time"],
            next=record.get("next"),
        )
        signature = record["sig"]
    except KeyError as missing:
        raise Broken(f"{here}: checkpoint lacks {missing}") from None
    if not isinstance(signature, str) or not verifier.verify(head.message(), signature):
        raise Broken(f"{here}: checkpoint signature is invalid")
    # The signature covers the head, not the line, and no later line's hash covers a chain's
    # last one: a sealed chain's closing checkpoint could be written again with a field of
    # someone's choosing added, or its bytes spelled otherwise, and still verify. The
    # writer's line is one spelling of what was signed; any other is not its line.
    body = head.body(verifier.key_id, signature)
    if raw != checkpoint_line(head.instance, record["seq"], record["prev"], body):
        raise Broken(
            f"{here}: checkpoint line is not as it was written (a field added, removed or "
            "reordered, or its bytes spelled otherwise)"
        )


# --- questions auditors ask -------------------------------------------------------------


@dataclass(frozen=True)
class Located:
    """A decision record and where it is."""

    record: dict[str, Any]
    path: Path
    line: int


@dataclass
class Unread:
    """What a question's reading passed over: lines that are not records, and files it
    could not read to their end. An answer from such files is an answer from what could be
    read, and says so; ``verify`` says what is wrong there."""

    lines: int = 0
    files: int = 0
    first: str | None = None

    def __bool__(self) -> bool:
        return self.lines > 0 or self.files > 0

    def note_line(self, path: Path, line: int, why: str) -> None:
        self.lines += 1
        if self.first is None:
            self.first = f"{_where(path, line)}: {why}"

    def note_file(self, why: str) -> None:
        self.files += 1
        if self.first is None:
            self.first = why

    def describe(self) -> str:
        parts = []
        if self.lines:
            parts.append(f"{self.lines} line(s) that are not records")
        if self.files:
            parts.append(f"{self.files} file(s) not read to the end")
        return (
            f"passed over {' and '.join(parts)} (the first: {self.first}); this answer is "
            "from what could be read, and `broker audit verify` says what is wrong"
        )


def iter_decisions(
    files: Iterable[AuditFile], *, unread: Unread | None = None
) -> Iterator[Located]:
    """The decision records in ``files``; what cannot be read is passed over, and counted
    in ``unread`` when given."""
    passed_over = unread if unread is not None else Unread()
    for audit_file in sorted(files):
        try:
            yield from _decisions(audit_file, _read_lines(audit_file.path), passed_over)
        except Broken as broken:
            passed_over.note_file(str(broken))
            continue


def _decisions(
    audit_file: AuditFile, numbered: Iterable[tuple[int, bytes, bool]], unread: Unread
) -> Iterator[Located]:
    for line, raw, complete in numbered:
        if not complete:
            unread.note_line(audit_file.path, line, "a partial last line")
            continue
        try:
            record = decode_untrusted(_DECODER, raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            unread.note_line(audit_file.path, line, "not a valid JSON object")
            continue
        if record.get("type") == "decision":
            yield Located(record, audit_file.path, line)


@dataclass(frozen=True)
class Filters:
    subject: str | None = None
    audience: str | None = None
    caller: str | None = None
    outcome: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def match(self, record: dict[str, Any]) -> bool:
        if self.subject is not None and record.get("externalUserId") != self.subject:
            return False
        if self.audience is not None and record.get("audience") != self.audience:
            return False
        if self.caller is not None and record.get("caller") != self.caller:
            return False
        if self.outcome is not None and record.get("outcome") != self.outcome:
            return False
        if self.since is not None or self.until is not None:
            try:
                at = datetime.fromisoformat(str(record.get("time")))
            except ValueError:
                return False
            if self.since is not None and at < self.since:
                return False
            if self.until is not None and at >= self.until:
                return False
        return True


def query(
    files: Iterable[AuditFile], filters: Filters, *, unread: Unread | None = None
) -> Iterator[Located]:
    return (found for found in iter_decisions(files, unread=unread) if filters.match(found.record))


def find_token(
    files: Iterable[AuditFile],
    *,
    sha256: str | None = None,
    jti: str | None = None,
    unread: Unread | None = None,
) -> list[tuple[Located, str]]:
    """Issuance records of a token seen in the wild, by fingerprint or by ``jti``, each with
    what matched: ``tokenSha256`` or ``tokenId``; and the records that say such a token was
    withheld (``names_a_token``)."""
    found = []
    for located in iter_decisions(files, unread=unread):
        record = located.record
        if not names_a_token(record):
            continue
        if sha256 is not None and record.get("tokenSha256") == sha256.lower():
            found.append((located, "tokenSha256"))
        elif jti is not None and record.get("tokenId") == jti:
            found.append((located, "tokenId"))
    return found
