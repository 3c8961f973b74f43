"""``broker audit export``: the store's chains written back as the files they came from."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from broker.audit.reader import parse_name
from broker.audit.store import INSTANCE, AuditStore


@dataclass(frozen=True)
class Exported:
    files: int
    records: int


def export_chains(store: AuditStore, out: Path) -> Exported:
    """Each instance's rows, in seq order, into the file each row names: byte for byte the
    lines the broker wrote, so that ``verify`` checks them offline as it checks any trail.
    Never overwrites (FileExistsError)."""
    out.mkdir(parents=True, exist_ok=True)
    files = records = 0
    for summary in store.instances():
        for name, first, last in store.files_of(summary.instance):
            parsed = parse_name(Path(name))
            if parsed is None or parsed.instance != summary.instance or "/" in name:
                # A row naming a path elsewhere is written nowhere but here, as what it is;
                # and so is one whose instance column could not name a file (a "/", a NUL).
                label = summary.instance if INSTANCE.fullmatch(summary.instance) else f"x{files}"
                name = f"audit-{label}-unnamed-{first}.jsonl"
            fd = os.open(out / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
            with os.fdopen(fd, "wb") as handle:
                for stored in store.chain(summary.instance, first=first, last=last):
                    handle.write(stored.line + b"\n")
                    records += 1
            files += 1
    return Exported(files, records)
