"""``verify --database``: every instance's chain as the audit store holds it.

The same walk as for files (links, signatures, seals, predecessors), over each row's exact
line bytes; and, since a database can be edited column by column, each row's columns must
say what its line says. A chain that ends unsealed is a replica still running or one that
crashed; if its last signed checkpoint is older than the quiet time (a running broker signs
one at least every ``audit.heartbeat_seconds``, idle or not), its tail may have been deleted,
and that is reported as a failure, not as OK. The signed time, because the store's own
``stored_at`` and any unsigned record can be edited by whoever can edit the store.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from broker.audit.reader import AuditFile, Broken, VerifyReport, parse_name, verify_chains
from broker.audit.records import ChainPosition
from broker.audit.signing import CheckpointVerifier
from broker.audit.store import (
    INDEXED,
    AuditStore,
    InstanceSummary,
    LineError,
    StoreDataError,
    StoredLine,
    as_columns,
    line_fields,
)
from broker.clock import parse_rfc3339


@dataclass
class StoreVerifyReport:
    report: VerifyReport
    instances: list[InstanceSummary] = field(default_factory=list)
    quiet: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.report.ok and not self.quiet


def _check_row(
    instance: str,
    audit_file: AuditFile,
    stored_file: str,
    line: bytes,
    seq: int,
    columns: tuple[str | None, ...],
    line_sha256: str,
) -> None:
    where = f"instance {instance!r} seq {seq}"
    if hashlib.sha256(line).hexdigest() != line_sha256:
        raise Broken(f"{where}: the row's line_sha256 is not the hash of its line (edited)")
    if stored_file != audit_file.path.name:
        raise Broken(f"{where}: the row's file column does not fit its place in the chain")
    try:
        line_instance, line_seq, *fields = line_fields(line)
    except LineError:
        raise Broken(f"{where}: the row's line is not a JSON object") from None
    if line_seq != seq or line_instance != instance:
        raise Broken(f"{where}: the row's instance or seq column differs from its line")
    if tuple(fields) == columns:
        return  # every indexed field text or absent, as the shipper stored it: no edit
    for (column, _), stored, wanted in zip(INDEXED, columns, as_columns(fields), strict=True):
        if stored != wanted:
            raise Broken(
                f"{where}: the row's {column} column does not match the record's line "
                "(edited in the store)"
            )


def _retention_cuts(store: AuditStore) -> dict[tuple[str, int], str]:
    """What retention records say was deleted: (instance, last seq deleted) -> that line's
    hash. The records are part of their own chains, which the walk verifies: a forged one
    breaks its chain."""
    cuts: dict[tuple[str, int], str] = {}
    for record in store.retention_records():
        ranges = record.get("ranges")
        if not isinstance(ranges, list):
            continue
        for cut in ranges:
            if not isinstance(cut, dict):
                continue
            instance, last, digest = cut.get("instance"), cut.get("lastSeq"), cut.get("lastHash")
            if isinstance(instance, str) and isinstance(last, int) and isinstance(digest, str):
                cuts[(instance, last)] = digest
    return cuts


def verify_store(
    store: AuditStore,
    verifier: CheckpointVerifier,
    *,
    quiet_seconds: float,
    now: float | None = None,
) -> StoreVerifyReport:
    report = VerifyReport()
    result = StoreVerifyReport(report)
    try:
        result.instances = store.instances()
    except Exception as exc:
        report.failure = str(exc)
        return result
    if not result.instances:
        report.failure = "the audit store holds no records"
        return result
    by_instance: dict[str, list[AuditFile]] = {}
    ranges: dict[tuple[str, str], tuple[int, int]] = {}
    for summary in result.instances:
        files: list[AuditFile] = []
        for name, first, last in store.files_of(summary.instance):
            parsed = parse_name(Path(name))
            if parsed is None or parsed.instance != summary.instance:
                report.failure = (
                    f"instance {summary.instance!r} seq {first}: rows name the file {name!r}, "
                    "which is not one of this instance's audit files"
                )
                return result
            # Named "instance X/FILE" in messages; the file name itself is what checkpoints name.
            files.append(
                AuditFile(
                    parsed.instance, parsed.segment, Path(f"instance {parsed.instance}", name)
                )
            )
            ranges[(summary.instance, name)] = (first, last)
        by_instance[summary.instance] = sorted(files)

    def lines_of(audit_file: AuditFile) -> Iterator[tuple[int, bytes, bool]]:
        first, last = ranges[(audit_file.instance, audit_file.path.name)]
        rows = _rows_or_broken(store.chain(audit_file.instance, first=first, last=last))
        for number, stored in enumerate(rows, start=1):
            _check_row(
                audit_file.instance,
                audit_file,
                stored.file,
                stored.line,
                stored.seq,
                stored.columns,
                stored.line_sha256,
            )
            yield number, stored.line, True

    cuts = _retention_cuts(store)
    starts: dict[str, tuple[int, str]] = {}
    for summary in result.instances:
        if summary.first_seq == 1:
            continue
        before = cuts.get((summary.instance, summary.first_seq - 1))
        if before is None:
            report.failure = (
                f"instance {summary.instance!r}: its rows begin at seq {summary.first_seq}, "
                f"but no retention record says seq {summary.first_seq - 1} and before were "
                "deleted: rows were removed from the store"
            )
            return result
        starts[summary.instance] = (summary.first_seq, before)
    retained: dict[str, int] = {}
    for instance, last in cuts:
        retained[instance] = max(retained.get(instance, 0), last)
    verify_chains(
        by_instance,
        lines_of,
        verifier,
        report,
        allow_crash_tail=True,
        starts=starts,
        retained=retained,
    )
    if not report.ok:
        return result
    if (missing := _witnessed_missing(store, retained)) is not None:
        report.failure = missing
        return result
    moment = time.time() if now is None else now
    for chain in report.chains:
        if chain.sealed or (chain.named_through or 0) >= chain.last_seq:
            # Sealed, or a crashed chain whose successor's signed start names its last line:
            # nothing can have been cut after it (once, every crash that a restart in the
            # same directory followed was reported as a possible deletion, for ever).
            continue
        signed = parse_rfc3339(chain.signed_time) if chain.signed_time is not None else None
        silent = moment - signed.timestamp() if signed is not None else math.inf
        if silent > quiet_seconds:
            # The signed time, not when the rows were stored: whoever can edit the store can
            # set a stored_at, or append unsigned records, but cannot sign a checkpoint.
            result.quiet.append(
                f"instance {chain.instance!r} ends unsealed at seq {chain.last_seq}, and its "
                f"last signed checkpoint {_age(silent)} (quiet time "
                f"{quiet_seconds:.0f} s; a running broker signs one at least every "
                "audit.heartbeat_seconds, idle or not): records after it may have been "
                "deleted, its shipping is behind, or it crashed and never restarted"
            )
    return result


def _witnessed_missing(store: AuditStore, retained: dict[str, int]) -> str | None:
    """The first line a start or witness record saw in the store (another chain running
    beside it) that the store no longer holds as it was, unless retention says it deleted
    it: a chain deleted whole, or cut, after a replica that is still on the trail saw it.
    Those records are in their own chains, which the walk verified: a forged one broke its
    chain. A page of records at a time, their lines looked up a chain at a time: read
    whole with a query per line, 100,000 witness records took 9 s and 590 MiB here."""
    for records in store.witnessing_records():
        seen: list[tuple[ChainPosition, str]] = []
        wanted: dict[str, set[int]] = {}
        for record in records:
            kind = record.get("type")
            witnessed = record.get("witnessed" if kind == "start" else "chains")
            if not isinstance(witnessed, list):
                continue
            by = f"instance {record.get('instance')!r} (its {kind} record, seq {record.get('seq')})"
            try:
                positions = msgspec.convert(witnessed, list[ChainPosition])
            except msgspec.ValidationError:
                return f"{by}: a witnessed chain that is not a position"
            for position in positions:
                if position.seq <= retained.get(position.instance, 0):
                    continue  # deleted by retention, and a retention record says so
                seen.append((position, by))
                wanted.setdefault(position.instance, set()).add(position.seq)
        held = {instance: store.line_sha256s(instance, seqs) for instance, seqs in wanted.items()}
        for position, by in seen:
            found = held[position.instance].get(position.seq)
            if found != position.hash:
                state = "is gone" if found is None else "is another line now"
                return (
                    f"instance {position.instance!r} seq {position.seq}, which {by} saw in the "
                    f"store, {state}: rows were deleted from the store (a whole chain, or its "
                    "tail)"
                )
    return None


def _age(seconds: float) -> str:
    if math.isfinite(seconds):
        return f"is {seconds:.0f} s old"
    return "carries no time that can be read"


def _rows_or_broken(rows: Iterator[StoredLine]) -> Iterator[StoredLine]:
    """``rows``, with a row the store cannot give as a line (longer than any line) as the
    place the chain is broken, like any other edited row."""
    try:
        yield from rows
    except StoreDataError as exc:
        raise Broken(str(exc)) from None
