"""The audit writer in-process, on a temp dir: rotation with and without a signing key, the
seal at every clean stop, and key generation that no planted link or umask can subvert."""

from __future__ import annotations

import asyncio
import os
import resource
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from broker.audit.reader import verify
from broker.audit.records import AuditEvent
from broker.audit.signing import CheckpointVerifier, generate_key_pair, load_public_key
from broker.audit.writer import AuditUnavailable, AuditWriter, WrittenLine
from broker.config import AuditSettings
from tests.support.audit_replica import json_lines
from tests.support.trails import new_signer, write_trail


def _event(n: int) -> AuditEvent:
    return AuditEvent(
        time="2026-11-28T00:00:00.000Z",
        request_id=f"r{n}",
        outcome="denied",
        code="unauthenticated",
        status=401,
        reason="x" * 200,
    )


def _run(writer: AuditWriter, events: int) -> None:
    write_trail(writer, (_event(n) for n in range(events)))


def _signed_writer(tmp_path: Path, instance: str) -> tuple[AuditWriter, Path, CheckpointVerifier]:
    """A writer with a signing key, its trail directory, and the key that verifies it."""
    signer, public = new_signer(tmp_path / "keys")
    trail = tmp_path / "trail"
    writer = AuditWriter(AuditSettings(dir=str(trail), fsync=False), signer, instance_id=instance)
    return writer, trail, load_public_key(public)


def _assert_sealed_and_intact(trail: Path, verifier: CheckpointVerifier) -> None:
    assert json_lines(trail)[-1]["reason"] == "shutdown"
    assert verify([trail], verifier).ok


def _failing_once() -> tuple[Callable[[str, list[WrittenLine]], None], list[Exception]]:
    """A follower of the writer (as the shipper's notify is) that raises once: a bug."""
    faults: list[Exception] = [RuntimeError("a follower's bug")]

    def follower(file: str, lines: list[WrittenLine]) -> None:
        if faults:
            raise faults.pop()

    return follower, faults


async def _outcomes(writer: AuditWriter, numbers: Iterable[int]) -> list[str]:
    """Append each event in turn: whether each was made durable or refused."""
    outcomes = []
    for n in numbers:
        try:
            await writer.append(_event(n))
            outcomes.append("durable")
        except AuditUnavailable:
            outcomes.append("refused")
    return outcomes


def test_rotation_without_a_signing_key_moves_on_to_the_next_file(tmp_path: Path) -> None:
    settings = AuditSettings(dir=str(tmp_path), rotate_bytes=4096, fsync=False)
    _run(AuditWriter(settings, instance_id="unsigned"), 60)
    files = sorted(tmp_path.glob("*.jsonl"))
    assert 4 <= len(files) <= 12
    assert all(path.stat().st_size > 0 for path in files)
    seqs = [record["seq"] for record in json_lines(tmp_path)]
    assert seqs == list(range(1, 62))


def test_rotation_with_a_key_names_each_next_file(tmp_path: Path) -> None:
    signer, _ = new_signer(tmp_path / "keys")
    trail = tmp_path / "trail"
    settings = AuditSettings(dir=str(trail), rotate_bytes=4096, fsync=False)
    _run(AuditWriter(settings, signer, instance_id="signed"), 60)
    files = sorted(trail.glob("*.jsonl"))
    rotations = [r for r in json_lines(trail) if r.get("reason") == "rotation"]
    assert [r["next"] for r in rotations] == [path.name for path in files[1:]]


@pytest.mark.parametrize("events", [0, 1, 5])
def test_every_clean_stop_seals(tmp_path: Path, events: int) -> None:
    signer, _ = new_signer(tmp_path / "keys")
    settings = AuditSettings(dir=str(tmp_path / "trail"), checkpoint_every_records=5, fsync=False)
    _run(AuditWriter(settings, signer, instance_id="sealing"), events)
    records = json_lines(tmp_path / "trail")
    assert records[0]["type"] == "start"
    assert records[-1]["reason"] == "shutdown"


def test_keygen_never_writes_through_a_planted_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "audit-signing.pub").symlink_to(victim)
    with pytest.raises(FileExistsError):
        generate_key_pair(keys)
    assert victim.read_text() == "precious"
    assert not (keys / "audit-signing.key").exists()
    (keys / "dangling.pub").symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        generate_key_pair(keys, "dangling")
    assert not (tmp_path / "nowhere").exists()


def test_keygen_modes_ignore_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        private, public = generate_key_pair(tmp_path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644


def test_verify_refuses_a_line_longer_than_any_record_without_reading_it_whole(
    tmp_path: Path,
) -> None:
    from broker.audit.reader import verify
    from broker.audit.records import MAX_LINE_BYTES
    from broker.audit.signing import load_public_key

    _, public = generate_key_pair(tmp_path / "keys")
    trail = tmp_path / "trail"
    trail.mkdir()
    (trail / "audit-huge-000001.jsonl").write_bytes(b"{" + b" " * (MAX_LINE_BYTES * 3) + b"}\n")
    report = verify([trail], load_public_key(public))
    assert report.failure is not None
    assert "longer than" in report.failure


def test_a_stop_during_a_checkpoint_never_reuses_its_seq(tmp_path: Path) -> None:
    # The writer task used to be cancelled mid-write by close(): its checkpoint landed in
    # the file without the chain moving on, and the seal took the same seq (found by the
    # store's shipper, which refuses a seq out of order). Racy by nature: many short runs.
    signer, _ = new_signer(tmp_path / "keys")
    for run in range(60):
        trail = tmp_path / f"run{run}"
        settings = AuditSettings(
            dir=str(trail), fsync=False, rotate_bytes=4096, checkpoint_every_records=5
        )
        _run(AuditWriter(settings, signer, instance_id="racy"), 25)
        seqs = [record["seq"] for record in json_lines(trail)]
        assert seqs == list(range(1, len(seqs) + 1)), f"run {run}: {seqs}"


@pytest.mark.parametrize("signed", [False, True])
def test_an_idle_writer_sleeps_until_a_record_comes(tmp_path: Path, signed: bool) -> None:
    """Past its checkpoint interval a writer with nothing to checkpoint (no key, or no record
    since the last checkpoint) must not wake: it once woke every millisecond, which cost a
    busy broker a tenth of its throughput once it had been up for a minute."""
    signer = None
    if signed:
        signer, _ = new_signer(tmp_path / "keys")
    settings = AuditSettings(
        dir=str(tmp_path / "trail"), fsync=False, checkpoint_interval_seconds=0.05
    )
    writer = AuditWriter(settings, signer, instance_id="idle")
    flushes = 0
    flush = writer._flush

    async def counted(batch: object) -> None:
        nonlocal flushes
        flushes += 1
        await flush(batch)  # type: ignore[arg-type]

    writer._flush = counted  # type: ignore[method-assign]

    async def run() -> None:
        await writer.start()
        await writer.append(_event(1))
        await asyncio.sleep(0.6)  # twelve intervals
        await writer.close()

    asyncio.run(run())
    # The record's batch, the interval checkpoint after it (signed), the close: not hundreds.
    assert flushes <= 4
    checkpoints = [r for r in json_lines(tmp_path / "trail") if r["type"] == "checkpoint"]
    if signed:
        assert [r["reason"] for r in checkpoints] == ["start", "interval", "shutdown"]
    else:
        assert checkpoints == []


@pytest.mark.parametrize("signed", [False, True])
def test_an_idle_writer_signs_its_head_again_every_heartbeat(tmp_path: Path, signed: bool) -> None:
    """While no records come, a signed writer still signs its chain head every heartbeat:
    the signed time of a live chain's last checkpoint is how verify --database tells a
    quiet replica from one whose tail was cut (a store's own times can be edited)."""
    signer = None
    if signed:
        signer, _ = new_signer(tmp_path / "keys")
    settings = AuditSettings(
        dir=str(tmp_path / "trail"),
        fsync=False,
        checkpoint_interval_seconds=60,
        heartbeat_seconds=0.05,
    )
    writer = AuditWriter(settings, signer, instance_id="alive")

    async def run() -> None:
        await writer.start()
        await asyncio.sleep(0.4)
        await writer.append(_event(1))
        await asyncio.sleep(0.4)
        await writer.close()

    asyncio.run(run())
    records = json_lines(tmp_path / "trail")
    if not signed:
        # Nothing to sign with: an idle writer writes nothing at all.
        assert [r["type"] for r in records] == ["start", "decision"]
        return
    kinds = [r["reason"] if r["type"] == "checkpoint" else r["type"] for r in records]
    decision = kinds.index("decision")
    assert kinds[:2] == ["start", "start"]
    assert "heartbeat" in kinds[2:decision]
    # With a record since the last checkpoint, the next is due no later than a heartbeat
    # would be, though the interval is a minute.
    assert kinds[decision + 1] == "interval"
    assert "heartbeat" in kinds[decision + 2 : -1]
    assert kinds[-1] == "shutdown"
    assert set(kinds[2:-1]) == {"heartbeat", "decision", "interval"}
    # Woken by each heartbeat, not every millisecond.
    assert len(kinds) < 40
    public = load_public_key(tmp_path / "keys" / "audit-signing.pub")
    assert verify([tmp_path / "trail"], public).ok


def test_submit_tells_each_waiter_once_after_the_line_is_durable(tmp_path: Path) -> None:
    writer = AuditWriter(AuditSettings(dir=str(tmp_path), fsync=True), instance_id="told")
    told: list[tuple[int, bool | None, bool]] = []

    def waiter(n: int) -> Callable[[bool | None], None]:
        def done(ok: bool | None) -> None:
            on_disk = f'"requestId":"r{n}"' in "".join(
                p.read_text() for p in tmp_path.glob("*.jsonl")
            )
            told.append((n, ok, on_disk))

        return done

    async def run() -> None:
        await writer.start()
        for n in range(5):
            writer.submit(_event(n), waiter(n))
        await writer.append(_event(5))  # the same batch or the next: all told by now
        await writer.close()

    asyncio.run(run())
    assert told == [(n, True, True) for n in range(5)]


def test_a_fault_in_writing_a_batch_refuses_it_and_the_writer_goes_on(tmp_path: Path) -> None:
    # It ended the writer's task: every record after it waited out its deadline until a
    # restart, nothing was said, and close() raised it instead of sealing the chain.
    writer, trail, verifier = _signed_writer(tmp_path, "on")
    follower, faults = _failing_once()

    async def run() -> list[str]:
        await writer.start()
        writer.on_durable = follower
        outcomes = await _outcomes(writer, range(3))
        await writer.close()
        return outcomes

    with capture_logs() as logs:
        outcomes = asyncio.run(run())
    # The first record landed, but its batch met the fault: refused (a token would have its
    # withheld record); every record after it is durable, and the chain is sealed.
    assert faults == []
    assert outcomes == ["refused", "durable", "durable"]
    assert [entry["event"] for entry in logs if entry["log_level"] == "error"] == [
        "audit_writer_fault"
    ]
    assert writer._metrics.registry.get_sample_value("broker_audit_write_failures_total") == 1
    _assert_sealed_and_intact(trail, verifier)


def test_a_fault_in_the_last_batch_at_close_still_seals_the_chain(tmp_path: Path) -> None:
    writer, trail, verifier = _signed_writer(tmp_path, "end")
    follower, faults = _failing_once()

    async def run() -> None:
        await writer.start()
        writer.on_durable = follower
        writer.submit(_event(0), lambda ok: None)  # pending when close() flushes it
        await writer.close()

    asyncio.run(run())
    assert faults == []
    _assert_sealed_and_intact(trail, verifier)


def test_a_file_deleted_while_open_takes_no_more_records(tmp_path: Path) -> None:
    # Its records went into an inode no one could read, each acknowledged, until the next
    # rotation (a day by default).
    writer, trail, verifier = _signed_writer(tmp_path, "gone")

    async def run() -> list[str]:
        await writer.start()
        await writer.append(_event(0))
        [first] = trail.glob("*.jsonl")
        first.unlink()
        outcomes = await _outcomes(writer, (1, 2))
        await writer.close()
        return outcomes

    assert asyncio.run(run()) == ["refused", "durable"]
    records = json_lines(trail)
    assert records[0]["seq"] > 2  # the chain goes on in a new file, after the deleted one
    assert [r["requestId"] for r in records if r["type"] == "decision"] == ["r2"]
    result = verify([trail], verifier)
    assert result.failure is not None  # the gap is the trail's to show
    assert result.failure.endswith("missing file before it: audit-gone-000001.jsonl")


def test_a_hung_write_tells_its_waiters_no_once_and_never_yes(tmp_path: Path) -> None:
    settings = AuditSettings(dir=str(tmp_path), fsync=False, write_timeout_seconds=0.2)
    writer = AuditWriter(settings, instance_id="hung")
    durably = writer._write_durably
    told: list[bool | None] = []

    def slow(data: bytes) -> None:
        time.sleep(0.5)  # longer than the write timeout; then the write succeeds
        durably(data)

    async def run() -> None:
        await writer.start()
        writer._write_durably = slow  # type: ignore[method-assign]
        writer.submit(_event(1), told.append)
        await asyncio.sleep(0.3)
        assert told == [False]  # the deadline, while the write still hangs
        with pytest.raises(AuditUnavailable):
            await writer.append(_event(2))  # behind the hung one, it times out too
        await writer.close()

    asyncio.run(run())
    assert told == [False]


def test_a_record_behind_a_batch_that_waited_out_its_deadline_is_told_no_at_once(
    tmp_path: Path,
) -> None:
    # One write hangs; the batch behind it waits its whole deadline without being taken.
    # A record that comes after that must not join it (that batch has told its waiters and
    # would never tell this one: the request would hang), nor queue up for as long as the
    # disk hangs: it is told None, never queued. A record nobody waits for still goes in,
    # after the batch's own.
    settings = AuditSettings(dir=str(tmp_path), fsync=False, write_timeout_seconds=0.2)
    writer = AuditWriter(settings, instance_id="stalled")
    durably = writer._write_durably
    told: list[tuple[int, bool | None]] = []

    def slow(data: bytes) -> None:
        time.sleep(1.0)
        durably(data)

    async def run() -> None:
        await writer.start()
        writer._write_durably = slow  # type: ignore[method-assign]
        writer.submit(_event(1), lambda ok: told.append((1, ok)))
        await asyncio.sleep(0.05)
        writer.submit(_event(2), lambda ok: told.append((2, ok)))
        await asyncio.sleep(0.3)
        assert told == [(1, False), (2, False)]
        writer.submit(_event(3), lambda ok: told.append((3, ok)))
        writer.submit_unwaited(_event(4))
        await asyncio.sleep(0.01)
        assert told[2:] == [(3, None)]
        await writer.close()

    asyncio.run(run())
    assert told == [(1, False), (2, False), (3, None)]
    # The hung writes landed in the end; the refused record never did.
    decisions = [r["requestId"] for r in json_lines(tmp_path) if r["type"] == "decision"]
    assert decisions == ["r1", "r2", "r4"]


# A writer in a process of its own whose files may not grow past 2500 bytes (RLIMIT_FSIZE:
# writes past it fail with EFBIG, as on a full disk; Python ignores SIGXFSZ): each batch of
# eight records is larger than any file may be, so it fails in whichever file it goes to.
_FULL_DISK = """
import asyncio, sys
from broker.audit.records import AuditEvent
from broker.audit.signing import load_private_key
from broker.audit.writer import AuditUnavailable, AuditWriter, WrittenLine
from broker.config import AuditSettings

def event(n):
    return AuditEvent(time="2026-11-28T00:00:00.000Z", request_id=f"r{n}", outcome="denied",
                      code="unauthenticated", status=401, reason="x" * 200)

async def main():
    signer = load_private_key(open(sys.argv[2], "rb").read()) if len(sys.argv) > 2 else None
    writer = AuditWriter(AuditSettings(dir=sys.argv[1], fsync=False), signer, instance_id="full")
    await writer.start()
    for attempt in range(10):
        for batch in range(2):  # the second fails in a new file, which it leaves empty
            results = await asyncio.gather(
                *(writer.append(event(n)) for n in range(8)), return_exceptions=True
            )
            assert all(isinstance(r, AuditUnavailable) for r in results), results
        await writer.probe()  # as /readyz does while the log fails
    await writer.append(event(99))  # small enough: the log works again
    await writer.close()

asyncio.run(main())
"""


@pytest.mark.parametrize("signed", [False, True])
def test_a_disk_that_stays_full_gets_no_new_empty_file_per_try(
    tmp_path: Path, signed: bool
) -> None:
    # Each try after a failed write opened a new segment: on a disk that stayed full, an
    # empty file for every batch and every readiness probe (51 after 36 requests, on a full
    # tmpfs), until the inodes ran out too. Now the file a failed write left empty is used
    # again, and the trail stays whole.
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (2500, 2500))

    trail = tmp_path / "trail"
    key: list[str] = []
    if signed:
        private, public = generate_key_pair(tmp_path / "keys")
        key = [str(private)]
    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(trail), *key],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limit,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    files = sorted(trail.glob("*.jsonl"))
    assert all(path.stat().st_size > 0 for path in files)
    records = json_lines(trail)
    assert [record["seq"] for record in records] == list(range(1, len(records) + 1))
    assert [r["requestId"] for r in records if r["type"] == "decision"] == ["r99"]
    if not signed:
        assert [path.name for path in files] == [
            "audit-full-000001.jsonl",
            "audit-full-000002.jsonl",
        ]
        return
    # Each probe's recovery checkpoint fits, and names the file it went to: the one left
    # empty by the batch before it, or the trail would not verify.
    reasons = [r["reason"] for r in records if r["type"] == "checkpoint"]
    assert reasons.count("recovery") == 10
    assert verify([trail], load_public_key(public)).ok
