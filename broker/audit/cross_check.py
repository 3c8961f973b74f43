"""``verify PATHS --database SOURCE``: the audit files and the audit store, each the other's
witness.

Each copy is verified on its own first (links, signatures, seals). That cannot prove a
chain's unsigned tail: the records after its last signed checkpoint can be cut, or rewritten
and linked again, by whoever can write that copy, and the copy still verifies. But the two
copies are written by different hands (the broker's writer on the replica's volume; the
shipping process into a database the volume does not hold), so for every instance both
hold, the shorter chain must be the longer one's beginning, line for line. One hash decides
it: the two copies' lines at the shorter chain's last seq. Through the links, that line's
hash vouches for every line before it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import msgspec

from broker.audit.reader import AuditFile, ChainSummary, first_line, line_hash_at
from broker.audit.store import AuditStore
from broker.decoding import decode_untrusted

_DECODER = msgspec.json.Decoder(dict[str, object])


@dataclass
class CrossCheck:
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # One line per instance both copies hold and agree on, and per instance in one only.
    lines: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def vouched_starts(files: list[AuditFile], store: AuditStore) -> dict[str, tuple[int, str]]:
    """For each chain whose files begin after its first file (pruned once shipped, with
    ``prune_shipped_files``), where the files begin: if the store holds the line just
    before, with the hash the files' first line links to, the store vouches for what was
    pruned (``verify --database`` proves the store's copy), and the files are verified
    from there. Otherwise the chain is left to fail on its missing files."""
    firsts: dict[str, AuditFile] = {}
    for audit_file in files:
        if (
            audit_file.instance not in firsts
            or audit_file.segment < firsts[audit_file.instance].segment
        ):
            firsts[audit_file.instance] = audit_file
    starts: dict[str, tuple[int, str]] = {}
    for instance, audit_file in firsts.items():
        if audit_file.segment == 1:
            continue
        line = first_line(audit_file)
        try:
            record = decode_untrusted(_DECODER, line) if line is not None else {}
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        seq, prev = record.get("seq"), record.get("prev")
        if (
            not isinstance(seq, int)
            or isinstance(seq, bool)
            or seq < 2
            or not isinstance(prev, str)
        ):
            continue
        if _stored_hash(store, instance, seq - 1) == prev:
            starts[instance] = (seq, prev)
    return starts


def cross_check(
    files: list[AuditFile],
    file_chains: list[ChainSummary],
    store: AuditStore,
    store_chains: list[ChainSummary],
) -> CrossCheck:
    """Hold the chains found in ``files`` against those the store holds (both verified)."""
    result = CrossCheck()
    in_store = {chain.instance: chain for chain in store_chains}
    in_files = {chain.instance: chain for chain in file_chains}
    for instance, chain in in_files.items():
        stored = in_store.get(instance)
        if stored is None:
            result.warnings.append(
                f"instance {instance!r} (seq {chain.first_seq}..{chain.last_seq} in the files) "
                "is not in the store: never shipped, or deleted from the store"
            )
            continue
        own_files = [f for f in files if f.instance == instance]
        _compare(instance, chain, own_files, stored, store, result)
    for instance, stored in in_store.items():
        if instance not in in_files:
            result.lines.append(
                f"  store only: {instance}: seq {stored.first_seq}..{stored.last_seq} "
                "(another replica's files, or files not given)"
            )
    return result


def _compare(
    instance: str,
    chain: ChainSummary,
    files: list[AuditFile],
    stored: ChainSummary,
    store: AuditStore,
    result: CrossCheck,
) -> None:
    both = min(chain.last_seq, stored.last_seq)
    if both < max(chain.first_seq, stored.first_seq):
        result.warnings.append(
            f"instance {instance!r}: the files (seq {chain.first_seq}..{chain.last_seq}) and "
            f"the store (seq {stored.first_seq}..{stored.last_seq}) share no record, so "
            "neither can vouch for the other"
        )
        return
    in_files = chain.last_hash if both == chain.last_seq else line_hash_at(files, both)
    in_store = stored.last_hash if both == stored.last_seq else _stored_hash(store, instance, both)
    if in_files != in_store:
        result.failures.append(
            f"instance {instance!r}: the files and the store differ at seq {both} or before: "
            "one copy's records were rewritten and linked again (only records after the last "
            "signed checkpoint can be), or two brokers wrote under one instance id"
        )
        return
    if stored.last_seq > chain.last_seq:
        result.failures.append(
            f"instance {instance!r}: the store holds seq {chain.last_seq + 1}..{stored.last_seq}, "
            f"which the files lack: records were cut from the end of its files, or not all "
            "of its files were given"
        )
        return
    behind = chain.last_seq - stored.last_seq
    lag = f"; the store is {behind} record(s) behind (shipping)" if behind else ""
    result.lines.append(f"  agree: {instance}: files and store, seq ..{both}{lag}")


def _stored_hash(store: AuditStore, instance: str, seq: int) -> str | None:
    for row in store.chain(instance, first=seq, last=seq):
        return hashlib.sha256(row.line).hexdigest()
    return None
