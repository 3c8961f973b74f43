"""``broker audit verify PATH --database SOURCE``, in-process, on a trail the real writer
made and a SQLite store filled from it: each copy verified, then held against the other.
A copy's unsigned tail (the records after its last signed checkpoint) verifies alone
however it was cut or rewritten; beside the other copy it does not."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from broker.audit.signing import generate_key_pair, load_private_key
from broker.audit.writer import AuditWriter
from broker.cli import main
from broker.config import AuditSettings
from tests.support.audit_replica import event
from tests.support.trails import store_of, write_trail


@dataclass
class Trail:
    directory: Path
    public_key: Path

    @property
    def file(self) -> Path:
        (only,) = self.directory.glob("*.jsonl")
        return only

    def lines(self) -> list[bytes]:
        return self.file.read_bytes().splitlines()

    def keep(self, lines: list[bytes]) -> None:
        self.file.write_bytes(b"".join(line + b"\n" for line in lines))


def _write(
    directory: Path, private_key: Path, instance: str, decisions: int, rotate_bytes: int = 1 << 26
) -> None:
    writer = AuditWriter(
        AuditSettings(
            dir=str(directory),
            fsync=False,
            checkpoint_interval_seconds=3600,
            rotate_bytes=rotate_bytes,
        ),
        load_private_key(private_key.read_bytes()),
        instance_id=instance,
    )
    write_trail(writer, (event(n, "user-") for n in range(decisions)))


@pytest.fixture
def trail(tmp_path: Path) -> Trail:
    """start, start checkpoint, five decisions (seq 3..7), shutdown checkpoint (seq 8)."""
    private, public = generate_key_pair(tmp_path / "keys")
    directory = tmp_path / "audit"
    _write(directory, private, "cc", 5)
    return Trail(directory, public)


def _verify(trail: Trail, capsys: pytest.CaptureFixture[str], *where: str) -> tuple[int, str]:
    status = main(["audit", "verify", *where, "--public-key", str(trail.public_key)])
    return status, capsys.readouterr().out


def _crash_tail_beside(
    trail: Trail, capsys: pytest.CaptureFixture[str], database: str
) -> tuple[int, str]:
    """Verify files that end in an unsigned tail: alone (accepted: a crash looks so), then
    beside the store."""
    alone, printed = _verify(trail, capsys, str(trail.directory), "--allow-crash-tail")
    assert alone == 0, printed  # the files alone cannot tell
    return _verify(
        trail, capsys, str(trail.directory), "--allow-crash-tail", "--database", database
    )


def test_files_and_a_store_that_agree_verify_together(
    trail: Trail, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = store_of(tmp_path / "store.sqlite3", [(trail.file, trail.lines())])
    status, printed = _verify(trail, capsys, str(trail.directory), "--database", database)
    assert status == 0, printed
    assert "agree: cc: files and store, seq ..8\n" in printed
    assert "FAILED" not in printed
    assert "WARNING" not in printed


def test_records_cut_from_the_files_unsigned_tail_are_found_in_the_store(
    trail: Trail, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = store_of(tmp_path / "store.sqlite3", [(trail.file, trail.lines())])
    # The seal and the last two decisions cut: what is left ends in unsigned records after
    # the start checkpoint, as a crash leaves it.
    trail.keep(trail.lines()[:-3])
    status, printed = _crash_tail_beside(trail, capsys, database)
    assert status == 1
    assert (
        "FAILED: instance 'cc': the store holds seq 6..8, which the files lack: records were "
        "cut from the end of its files, or not all of its files were given"
    ) in printed


def test_a_tail_rewritten_in_the_files_differs_from_the_store(
    trail: Trail, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = trail.lines()
    database = store_of(tmp_path / "store.sqlite3", [(trail.file, lines[:-1])])
    # The seal cut, and the last decision (seq 7, unsigned now) says another end user: the
    # last line, so no later link gives it away.
    forged = lines[-2].replace(b'"user-4"', b'"user-9"')
    assert forged != lines[-2]
    trail.keep([*lines[:-2], forged])
    status, printed = _crash_tail_beside(trail, capsys, database)
    assert status == 1
    assert "FAILED: instance 'cc': the files and the store differ at seq 7 or before" in printed


def test_a_store_behind_the_files_is_said_and_is_no_failure(
    trail: Trail, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = store_of(tmp_path / "store.sqlite3", [(trail.file, trail.lines()[:-2])])
    status, printed = _verify(trail, capsys, str(trail.directory), "--database", database)
    assert status == 0, printed
    assert "agree: cc: files and store, seq ..6; the store is 2 record(s) behind" in printed


def test_an_instance_in_one_copy_only_is_named(
    trail: Trail, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Another replica's chain, in the store only; and a third in the files only.
    other = tmp_path / "other"
    private = tmp_path / "keys" / "audit-signing.key"
    _write(other, private, "replica-b", 2)
    (other_file,) = other.glob("*.jsonl")
    database = store_of(
        tmp_path / "store.sqlite3",
        [(trail.file, trail.lines()), (other_file, other_file.read_bytes().splitlines())],
    )
    _write(trail.directory, private, "unshipped", 1)
    status, printed = _verify(trail, capsys, str(trail.directory), "--database", database)
    assert status == 0, printed
    assert "store only: replica-b: seq 1..5 (another replica's files, or files not given)" in (
        printed
    )
    assert (
        "WARNING: instance 'unshipped' (seq 1..4 in the files) is not in the store: never "
        "shipped, or deleted from the store"
    ) in printed


def test_a_copy_that_fails_alone_fails_before_any_comparison(
    trail: Trail, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = trail.lines()
    database = store_of(tmp_path / "store.sqlite3", [(trail.file, lines)])
    record = json.loads(lines[3])
    record["externalUserId"] = "someone-else"  # a signed record changed: the links break
    trail.keep([*lines[:3], json.dumps(record, separators=(",", ":")).encode(), *lines[4:]])
    status, printed = _verify(trail, capsys, str(trail.directory), "--database", database)
    assert status == 1
    assert "prev is not the hash of the record before it" in printed
    assert "held against the store" not in printed


def test_a_store_behind_by_files_is_held_against_the_file_that_holds_its_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private, public = generate_key_pair(tmp_path / "keys")
    directory = tmp_path / "audit"
    # Six files of 7-9 lines: the store's last line is the first of a file mid-trail.
    _write(directory, private, "rotated", 40, rotate_bytes=4096)
    files = sorted(directory.glob("*.jsonl"))
    assert len(files) > 5
    lines = [(f, f.read_bytes().splitlines()) for f in files]
    kept = len(files) // 2
    stored = [*lines[:kept], (lines[kept][0], lines[kept][1][:1])]
    last_seq = json.loads(lines[kept][1][0])["seq"]
    database = store_of(tmp_path / "store.sqlite3", stored)
    status = main(
        ["audit", "verify", str(directory), "--database", database, "--public-key", str(public)]
    )
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert f"agree: rotated: files and store, seq ..{last_seq}; the store is" in printed
