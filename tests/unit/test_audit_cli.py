"""``broker audit`` in-process, on trails the real writer made: what ``find-token`` prints and
exits with for an issued token and for one whose issued record a later one withdraws; and
what every reader does with a hostile file beside a trail."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from broker.audit.cli import token_jti
from broker.audit.reader import Located, discover, iter_decisions
from broker.audit.records import (
    WITHHELD_CODE,
    WITHHELD_REASON,
    AuditEvent,
    UnrecordedBody,
    UnrecordedCount,
)
from broker.audit.signing import generate_key_pair
from broker.audit.writer import AuditWriter
from broker.cli import main
from broker.config import AuditSettings
from tests.support.trails import new_signer, newer_broker_trail, store_of, write_trail

LATE, KEPT = "ab" * 32, "cd" * 32


def _decision(request_id: str, sha256: str, *, withheld: bool = False) -> AuditEvent:
    return AuditEvent(
        time="2026-12-03T10:00:00.000Z",
        request_id=request_id,
        outcome="failed" if withheld else "issued",
        code=WITHHELD_CODE if withheld else "issued",
        status=503 if withheld else 200,
        caller="billing",
        external_user_id="u1",
        token_sha256=sha256,
        token_id=f"jti-{sha256[:4]}",
        reason=WITHHELD_REASON if withheld else None,
    )


@pytest.fixture
def trail(tmp_path: Path) -> Path:
    """r1: issued and handed out. r2: issued late, then withheld. r3: withheld only (its
    issued line was cut away with a failed write)."""
    directory = tmp_path / "audit"
    writer = AuditWriter(AuditSettings(dir=str(directory), fsync=False), instance_id="cli")
    write_trail(
        writer,
        [
            _decision("r1", KEPT),
            _decision("r2", LATE),
            _decision("r2", LATE, withheld=True),
            _decision("r3", "ef" * 32, withheld=True),
        ],
    )
    return directory


def _store(trail: Path) -> str:
    lines = [(p, p.read_bytes().splitlines()) for p in sorted(trail.glob("*.jsonl"))]
    return store_of(trail.parent / "store.sqlite3", lines)


def _edited_store(trail: Path, edit: str, *params: object) -> str:
    """The trail's store, then changed by hand as someone with the disk could."""
    import sqlite3

    database = _store(trail)
    with sqlite3.connect(database) as connection:
        connection.execute(edit, params)
    return database


@pytest.mark.parametrize("source", ["files", "database"])
def test_find_token_shows_a_withheld_token_and_says_it_never_left(
    trail: Path, source: str, capsys: pytest.CaptureFixture[str]
) -> None:
    where = [str(trail)] if source == "files" else ["--database", _store(trail)]

    def find(sha256: str) -> tuple[int, list[dict[str, object]], str]:
        status = main(["audit", "find-token", *where, "--sha256", sha256, "--format", "json"])
        printed = capsys.readouterr()
        return status, [json.loads(line) for line in printed.out.splitlines()], printed.err

    status, records, said = find(KEPT)
    assert status == 0
    assert [(r["requestId"], r["outcome"]) for r in records] == [("r1", "issued")]
    assert "withheld" not in said

    status, records, said = find(LATE)
    assert status == 0  # an issuance record matches: the auditor sees it, and what follows
    assert [(r["requestId"], r["outcome"]) for r in records] == [
        ("r2", "issued"),
        ("r2", "failed"),
    ]
    assert "matched by tokenSha256" in said
    assert "withheld: request r2 was answered 503 and this token never left" in said

    status, records, said = find("ef" * 32)
    assert status == 1
    assert [(r["requestId"], r["outcome"]) for r in records] == [("r3", "failed")]
    assert "withheld: request r3" in said
    assert "no issuance record matches" in said


# Nested deeper than msgspec (or any recursive decoder) can follow.
DEEP = b"[" * 3000 + b"]" * 3000


@pytest.mark.parametrize("payload", [DEEP, b'"\xff"'], ids=["nested too deeply", "not UTF-8"])
def test_every_reader_takes_a_line_nested_too_deeply_or_not_utf8_as_malformed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], payload: bytes
) -> None:
    signer, public = new_signer(tmp_path / "keys")
    trail = tmp_path / "audit"
    settings = AuditSettings(dir=str(trail), fsync=False)

    async def write(instance: str, events: int) -> None:
        writer = AuditWriter(settings, signer, instance_id=instance)
        await writer.start()
        for n in range(events):
            await writer.append(_decision(f"r{n}", KEPT))
        await writer.close()

    asyncio.run(write("good", 2))
    # Another chain whose last line is hostile: a record with a field nested deeply, or a
    # string that is not UTF-8 (msgspec raised UnicodeDecodeError: a traceback from verify).
    hostile = trail / "audit-evil-000001.jsonl"
    hostile.write_bytes(
        b'{"v":1,"type":"decision","instance":"evil","seq":1,"prev":"'
        + b"0" * 64
        + b'","time":"2026-12-03T10:00:00.000Z","outcome":"issued","x":'
        + payload
        + b"}\n"
    )
    hostile.chmod(0o640)
    capsys.readouterr()  # the writer's own log lines

    # What can be read is answered, and the line that cannot is said: no traceback.
    assert main(["audit", "query", str(trail), "--format", "json"]) == 1
    printed = capsys.readouterr()
    assert [json.loads(line)["requestId"] for line in printed.out.splitlines()] == ["r0", "r1"]
    assert f"{hostile}:1: not a valid JSON object" in printed.err
    assert main(["audit", "find-token", str(trail), "--sha256", KEPT]) == 0
    assert "passed over 1 line(s) that are not records" in capsys.readouterr().err
    assert main(["audit", "verify", str(trail), "--public-key", str(public)]) == 1
    said = capsys.readouterr().out
    assert "FAILED: " in said
    assert "audit-evil-000001.jsonl:1: not a valid JSON object" in said
    # A writer starting beside it names the newest chain it can read as its predecessor,
    # and starts.
    asyncio.run(write("next", 1))
    starts = [
        json.loads(line)
        for path in sorted(trail.glob("audit-next-*.jsonl"))
        for line in path.read_bytes().splitlines()
        if b'"type":"start"' in line
    ]
    assert len(starts) == 1


def test_a_token_from_the_wild_nested_too_deeply_has_no_jti() -> None:
    import base64

    def part(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    token = ".".join([part(b'{"alg":"ES256"}'), part(b'{"jti":' + DEEP + b"}"), part(b"sig")])
    assert token_jti(token) is None


@pytest.mark.parametrize("source", ["files", "database"])
def test_verify_adds_up_the_refusals_counted_without_a_record_of_their_own(
    tmp_path: Path, source: str, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "audit"
    signer, public = new_signer(tmp_path / "keys")
    writer = AuditWriter(
        AuditSettings(dir=str(directory), fsync=False), signer, instance_id="counts"
    )
    limited = AuditEvent(
        time="2026-12-06T10:00:00.000Z",
        request_id="r1",
        outcome="denied",
        code="rate_limited",
        status=429,
        caller="billing",
        unrecorded_before=3,
    )

    async def write() -> None:
        await writer.start()
        await writer.append(limited)
        counts = [
            UnrecordedCount(kind="rate_limited", count=5, like_request_id="r1"),
            UnrecordedCount(kind="unauthenticated", count=2),
        ]
        body = UnrecordedBody(time="2026-12-06T10:00:01.000Z", counts=counts)
        await writer.append_record("unrecorded", body)
        await writer.close()

    asyncio.run(write())
    where = [str(directory)] if source == "files" else ["--database", _store(directory)]
    assert main(["audit", "verify", *where, "--public-key", str(public)]) == 0
    printed = capsys.readouterr().out
    assert "2 record(s)" in printed
    assert "and 10 refusal(s) counted in them, not recorded one by one" in printed


@pytest.mark.parametrize("command", ["export", "verify", "query"])
def test_a_database_that_cannot_be_opened_is_a_usage_error_saying_why(
    command: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, public = generate_key_pair(tmp_path / "keys")
    extra = {
        "export": ["--out", str(tmp_path / "out")],
        # Beside files: both copies, held against each other.
        "verify": [str(tmp_path), "--public-key", str(public)],
        "query": [],
    }[command]
    monkeypatch.delenv("NO_SUCH_URL_VAR", raising=False)
    assert main(["audit", command, *extra, "--database", "env:NO_SUCH_URL_VAR"]) == 2
    said = capsys.readouterr().err
    assert f"broker audit {command}: --database:" in said
    assert "unset or empty" in said


def _cut(path: Path, *, tail: bytes) -> None:
    path.write_bytes(path.read_bytes() + tail)


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


@pytest.mark.parametrize(
    ("spoil", "said"),
    [
        (lambda path: _cut(path, tail=b'{"v":1,"type":"deci'), ":{line}: a partial last line"),
        (lambda path: _cut(path, tail=b"not json\n"), ":{line}: not a valid JSON object"),
        (
            lambda path: _cut(path, tail=b"x" * (1024 * 1024 + 10) + b"\n"),
            ":{line}: a line longer than 1048576 bytes is not an audit record",
        ),
        (_fifo, "cannot read: is not a regular file"),
    ],
    ids=["partial last line", "not JSON", "a line too long", "a FIFO"],
)
def test_query_and_find_token_say_what_they_passed_over_and_query_exits_1(
    trail: Path, capsys: pytest.CaptureFixture[str], spoil: Any, said: str
) -> None:
    # A second chain beside the first: its own file spoiled, the other read whole.
    other = trail / "audit-other-000001.jsonl"
    shutil.copyfile(next(trail.glob("audit-cli-*.jsonl")), other)
    said = said.format(line=len(other.read_bytes().splitlines()) + 1)
    spoil(other)
    capsys.readouterr()

    assert main(["audit", "query", str(trail), "--format", "json"]) == 1
    printed = capsys.readouterr()
    found = [json.loads(line)["requestId"] for line in printed.out.splitlines()]
    # The spoiled file's own records are read up to the place it is spoiled (not a FIFO's).
    assert found[:4] == ["r1", "r2", "r2", "r3"]
    assert said in printed.err
    assert "this answer is from what could be read" in printed.err

    # Found is found: the record read is the answer, and the passing over is said.
    assert main(["audit", "find-token", str(trail), "--sha256", KEPT]) == 0
    assert said in capsys.readouterr().err
    assert main(["audit", "find-token", str(trail), "--jti", "no-such-jti"]) == 1
    assert "no issuance record matches in what could be read" in capsys.readouterr().err


def test_query_of_whole_files_exits_0_and_says_nothing_on_stderr(
    trail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert main(["audit", "query", str(trail), "--format", "json"]) == 0
    printed = capsys.readouterr()
    assert len(printed.out.splitlines()) == 4
    assert printed.err == ""


def test_what_a_file_holds_is_printed_with_its_control_characters_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A forged file: its fields would clear the auditor's screen, or print a line of their
    # own that reads as the tool's.
    trail = tmp_path / "audit"
    trail.mkdir()
    record = {
        "v": 1,
        "type": "decision",
        "instance": "evil",
        "seq": 1,
        "time": "2026-12-03T10:00:00.000Z",
        "requestId": "r\x1b[2J",
        "outcome": "failed",
        "code": WITHHELD_CODE,
        "caller": "svc\nOK: 9 file(s), 0 instance(s)",
        "externalUserId": "\x1b[31mred",
        "tokenSha256": KEPT,
    }
    (trail / "audit-evil-000001.jsonl").write_text(json.dumps(record) + "\n")

    assert main(["audit", "query", str(trail)]) == 0
    printed = capsys.readouterr().out
    assert "\x1b" not in printed
    assert "\\x1b[31mred" in printed
    assert "svc\\nOK: 9 file(s)" in printed
    assert not any(line.startswith("OK") for line in printed.splitlines())
    # The columns stay aligned: every row as wide as the header, up to its last cell.
    header, row = printed.splitlines()
    assert header.index("externalUserId") == row.index("\\x1b[31mred")

    assert main(["audit", "find-token", str(trail), "--sha256", KEPT]) == 1
    said = capsys.readouterr().err
    assert "\x1b" not in said
    assert "withheld: request r\\x1b[2J was answered 503" in said


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "soon"])
def test_a_quiet_time_that_is_not_a_finite_number_of_seconds_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    # nan compares false with every silence: the check for deleted chains would be off.
    database = ["--database", str(tmp_path / "s.sqlite3"), "--public-key", "k"]
    with pytest.raises(SystemExit) as exited:
        main(["audit", "verify", *database, "--quiet-seconds", value])
    assert exited.value.code == 2
    assert f"must be a finite number of seconds, 0 or more: {value!r}" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../outside", "a/b", ".", "..", "", "-rf"])
def test_keygen_takes_a_name_not_a_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    out = tmp_path / "keys"
    with pytest.raises(SystemExit) as exited:
        main(["audit", "keygen", "--out", str(out), f"--name={name}"])
    assert exited.value.code == 2
    assert "(a name, not a path)" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing written, inside --out or beside it


def test_keygen_where_it_cannot_write_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert main(["audit", "keygen", "--out", str(a_file)]) == 2
    assert capsys.readouterr().err == f"broker audit keygen: {a_file} is not a directory\n"
    below = a_file / "keys"
    assert main(["audit", "keygen", "--out", str(below)]) == 2
    assert capsys.readouterr().err == (
        f"broker audit keygen: cannot write in {below}: Not a directory\n"
    )


def test_export_where_it_cannot_write_is_one_line_not_a_traceback(
    trail: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = ["audit", "export", "--database", _store(trail), "--out"]
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    capsys.readouterr()
    assert main([*database, str(a_file)]) == 2
    assert capsys.readouterr().err == f"broker audit export: {a_file} is not a directory\n"
    below = a_file / "out"
    assert main([*database, str(below)]) == 1
    assert (
        capsys.readouterr().err == f"broker audit export: cannot write {below}: Not a directory\n"
    )
    out = tmp_path / "out"
    assert main([*database, str(out)]) == 0
    capsys.readouterr()
    assert main([*database, str(out)]) == 2  # never over what is there
    (first,) = sorted(out.iterdir())
    assert capsys.readouterr().err == (
        f"broker audit export: {first} exists: export into an empty directory\n"
    )


def test_export_and_verify_say_where_a_line_is_not_bytes_and_write_nothing_of_it(
    trail: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Ten digits in the line column: bytes() of it was a gigabyte, written out as a file.
    database = _edited_store(trail, "UPDATE audit_records SET line = 1000000000 WHERE seq = 2")
    _, public = generate_key_pair(trail.parent / "keys")
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["audit", "export", "--database", database, "--out", str(out)]) == 1
    said = "instance 'cli' seq 2: the store holds a line that is not bytes (edited)"
    assert capsys.readouterr().err == f"broker audit export: {said}\n"
    assert sum(path.stat().st_size for path in out.iterdir()) < 4096
    assert main(["audit", "verify", "--database", database, "--public-key", str(public)]) == 1
    printed = capsys.readouterr()
    assert f"FAILED: {said}" in printed.out
    assert "Traceback" not in printed.err


def test_export_writes_a_row_whose_instance_names_no_file_inside_out(
    trail: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = _edited_store(
        trail, "UPDATE audit_records SET instance = '../x' || char(0) WHERE seq = 2"
    )
    out = tmp_path / "deep" / "out"
    assert main(["audit", "export", "--database", database, "--out", str(out)]) == 0
    names = sorted(path.name for path in out.iterdir())
    assert names == ["audit-cli-000001.jsonl", "audit-x0-unnamed-2.jsonl"]
    assert sorted(path.name for path in (tmp_path / "deep").iterdir()) == ["out"]


def test_verify_says_where_a_store_holds_a_row_longer_than_any_line(
    trail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = _edited_store(
        trail, "UPDATE audit_records SET line = ? WHERE seq = 2", b"x" * (2 * 1024 * 1024)
    )
    _, public = generate_key_pair(trail.parent / "keys")
    capsys.readouterr()
    assert main(["audit", "verify", "--database", database, "--public-key", str(public)]) == 1
    said = capsys.readouterr()
    assert "FAILED: instance 'cli' seq 2: the store holds a line longer than 1048576 bytes" in (
        said.out
    )
    assert "Traceback" not in said.err


def test_verify_says_a_store_error_met_mid_way_instead_of_a_traceback(
    trail: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A retention record too long to be one, of a chain of its own: met while reading the
    # retention records, after the rows' summaries were read.
    import sqlite3

    database = _store(trail)
    with sqlite3.connect(database) as connection:
        columns = [c[1] for c in connection.execute("PRAGMA table_info(audit_records)")]
        first = connection.execute("SELECT * FROM audit_records").fetchone()
        row = dict(zip(columns, first, strict=True))
        row |= {"instance": "other", "seq": 1, "type": "retention"}
        row |= {"file": "audit-other-000001.jsonl", "line": b"x" * (2 * 1024 * 1024)}
        marks = ", ".join("?" * len(columns))
        connection.execute(
            f"INSERT INTO audit_records ({', '.join(columns)}) VALUES ({marks})",  # noqa: S608
            [row[name] for name in columns],
        )
    _, public = generate_key_pair(trail.parent / "keys")
    capsys.readouterr()
    assert main(["audit", "verify", "--database", database, "--public-key", str(public)]) == 1
    said = capsys.readouterr()
    assert "FAILED: the store holds a line longer than 1048576 bytes" in said.out
    assert "Traceback" not in said.err


def test_find_token_reads_the_token_from_standard_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A live token on the command line is in the process list and the shell's history.
    import base64
    import io

    from broker.audit.records import fingerprint

    def part(value: dict[str, str]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    token = f"{part({'alg': 'ES256'})}.{part({'jti': 'jti-stdin'})}.c2ln"
    directory = tmp_path / "audit"
    writer = AuditWriter(AuditSettings(dir=str(directory), fsync=False), instance_id="stdin")
    found = _decision("r9", fingerprint(token))
    write_trail(writer, [msgspec.structs.replace(found, token_id="jti-stdin")])
    capsys.readouterr()

    monkeypatch.setattr("sys.stdin", io.StringIO(token + "\n"))
    assert main(["audit", "find-token", str(directory), "--token", "-", "--format", "json"]) == 0
    printed = capsys.readouterr()
    assert [json.loads(line)["requestId"] for line in printed.out.splitlines()] == ["r9"]
    assert "matched by tokenSha256" in printed.err

    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["audit", "find-token", str(directory), "--token", "-"]) == 2
    assert "--token: give a JWT of 1 to 65536 characters" in capsys.readouterr().err


def test_verify_names_the_record_types_it_does_not_know(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trail, public = newer_broker_trail(tmp_path)
    assert main(["audit", "verify", str(trail), "--public-key", str(public)]) == 0
    said = capsys.readouterr().out
    assert "OK: 1 file(s), 1 instance(s), 3 record(s)" in said
    assert "of types this tool does not know: future_kind (1); written by a newer broker" in said


@pytest.mark.parametrize("command", ["export", "query", "find-token", "verify"])
def test_a_store_with_an_endless_view_is_refused_at_once_not_read_until_interrupted(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3

    database = tmp_path / "store.sqlite3"
    with sqlite3.connect(database) as connection:
        connection.execute(
            "CREATE VIEW audit_records AS WITH RECURSIVE n(x) AS "
            "(SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT 'cli' AS instance, x AS seq, "
            "'audit-cli-000001.jsonl' AS file, x'7b7d' AS line FROM n"
        )
    _, public = generate_key_pair(tmp_path / "keys")
    extra = {
        "export": ["--out", str(tmp_path / "out")],
        "query": [],
        "find-token": ["--jti", "j"],
        "verify": ["--public-key", str(public)],
    }[command]
    code = main(["audit", command, "--database", str(database), *extra])
    printed = capsys.readouterr()
    assert code == 1
    assert (
        "it holds a view named 'audit_records', which no broker makes" in printed.out + printed.err
    )
    assert "Traceback" not in printed.err


def test_the_auditor_commands_leave_the_store_they_read_as_it_was(
    trail: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Opened as the broker opens it, a store in rollback-journal mode (as `sqlite3 .backup`
    # and VACUUM INTO make a copy) was turned to write-ahead logging by a read.
    import hashlib
    import sqlite3

    database = _store(trail)
    with sqlite3.connect(database) as connection:
        connection.execute("PRAGMA journal_mode=DELETE")
    _, public = generate_key_pair(tmp_path / "keys")
    before = hashlib.sha256(Path(database).read_bytes()).hexdigest()
    beside = sorted(Path(database).parent.glob("store.sqlite3*"))  # no -wal, no -shm
    reads = {
        "query": [],
        "find-token": ["--sha256", KEPT],
        "verify": ["--public-key", str(public)],
        "export": ["--out", str(tmp_path / "exported")],
    }
    for command, extra in reads.items():
        main(["audit", command, "--database", database, *extra])
        assert "Traceback" not in capsys.readouterr().err, command
        assert hashlib.sha256(Path(database).read_bytes()).hexdigest() == before, command
        assert sorted(Path(database).parent.glob("store.sqlite3*")) == beside, command


def test_a_store_no_one_can_write_to_is_read_as_it_is(
    trail: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Evidence made immutable (chattr +i), or on a read-only mount: even root cannot write
    # it or make a file beside it. It was refused: "Operation not permitted".
    import subprocess

    database = _store(trail)
    directory = Path(database).parent
    subprocess.run(["chattr", "+i", database, str(directory)], check=True)
    try:
        assert main(["audit", "query", "--database", database]) == 0
        assert main(["audit", "find-token", "--database", database, "--sha256", KEPT]) == 0
        printed = capsys.readouterr()
        assert "matched by tokenSha256" in printed.err
        assert "jti-cdcd" in printed.out  # r1, the token KEPT fingerprints
    finally:
        subprocess.run(["chattr", "-i", database, str(directory)], check=True)


def test_a_query_prints_each_record_as_it_is_read(
    trail: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is gathered first: a failure part of the way through comes after what was
    read, and a broad query over a long trail holds one record at a time, not all of its
    matches (2.3 GB for a million before)."""
    from broker.audit import cli

    def matches(*_: object, **__: object) -> Iterator[Located]:
        yield from list(iter_decisions(discover([trail])))[:3]
        raise RuntimeError("a disk that fails part of the way through")

    monkeypatch.setattr(cli, "query", matches)
    capsys.readouterr()
    with pytest.raises(RuntimeError):
        main(["audit", "query", str(trail), "--format", "json"])
    assert len(capsys.readouterr().out.splitlines()) == 3


def test_a_tables_columns_are_as_wide_as_its_first_rows_need(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from broker.audit import cli

    monkeypatch.setattr(cli, "_TABLE_SAMPLE", 2)
    users = ["u1", "u2", "u3", "a-much-longer-end-user-id", "u5"]
    cli._print(
        ({"time": "t", "externalUserId": user, "audience": "aud"} for user in users), "table"
    )
    header, *rows = capsys.readouterr().out.splitlines()
    column = header.index("audience")
    # The first rows set the widths; every row but the longer one stays aligned with them,
    # and that one is widened on its own line, never cut.
    assert [row.index("aud") for row in rows] == [
        column,
        column,
        column,
        column + len("a-much-longer-end-user-id") - len("externalUserId"),
        column,
    ]
    assert "a-much-longer-end-user-id" in rows[3]
