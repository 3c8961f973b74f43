"""``broker audit keygen | verify | query | find-token``: the auditor's tools, offline."""

from __future__ import annotations

import argparse
import base64
import itertools
import math
import os
import re
import sys
import textwrap
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec

from broker.audit.anchors import (
    Anchors,
    AnchorsUnusable,
    HashAt,
    file_hashes,
    missing,
    read_anchors,
)
from broker.audit.cross_check import cross_check, vouched_starts
from broker.audit.export import export_chains
from broker.audit.reader import (
    COMPLETENESS,
    STORE_COMPLETENESS,
    AuditFile,
    Broken,
    Filters,
    Unread,
    VerifyReport,
    discover,
    find_token,
    query,
    verify,
)
from broker.audit.records import fingerprint
from broker.audit.signing import (
    CheckpointVerifier,
    SigningKeyError,
    generate_key_pair,
    load_public_key,
)
from broker.audit.store import AuditStore, StoreError, StoreFilters, open_url
from broker.audit.store_verify import StoreVerifyReport, verify_store
from broker.clock import parse_rfc3339
from broker.regular_files import read_secret_text
from broker.terminal import printing, say, shown

EXIT_FAILED = 1
EXIT_USAGE = 2
# Longer than any token the exchange mints; what --token - reads at most.
_MAX_TOKEN = 64 * 1024
_TABLE_COLUMNS = ("time", "outcome", "code", "caller", "externalUserId", "audience", "tokenId")
# Rows read before a table's column widths are set (and held meanwhile).
_TABLE_SAMPLE = 1000


def _timestamp(value: str) -> datetime:
    if (parsed := parse_rfc3339(value)) is None:
        raise argparse.ArgumentTypeError(
            f"not an RFC 3339 time with a UTC offset or Z (within years 1-9999): {value!r}"
        )
    return parsed


_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _key_name(value: str) -> str:
    """A file name stem, never a path: ``../x`` wrote the key pair outside ``--out``."""
    if _KEY_NAME.fullmatch(value) is None:
        raise argparse.ArgumentTypeError(
            f"must be 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or "
            f"digit (a name, not a path): {value!r}"
        )
    return value


def _seconds(value: str) -> float:
    """A finite number of seconds, at least 0: ``nan`` (which compares false with every
    time) would have turned the check it bounds off without a word."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(
            f"must be a finite number of seconds, 0 or more: {value!r}"
        )
    return seconds


DATABASE_HELP = (
    "read the audit store instead of files: env:VAR (a postgresql:// URL in that environment "
    "variable), file:PATH (the URL in that file), or the path of a SQLite store "
    "(audit-store.sqlite3 in the broker's audit.dir); never the URL itself, which would put "
    "its password in the process list"
)


class SourceError(Exception):
    pass


def open_database(source: str, *, timeout_seconds: float = 10.0) -> AuditStore:
    """The store a ``--database`` argument names (see DATABASE_HELP), for reading only: the
    auditor's commands never change what they check."""
    if source.startswith(("postgresql://", "postgres://")):
        raise SourceError(
            "give the URL as env:VAR or file:PATH, not on the command line (its password "
            "would show in the process list and the shell history)"
        )
    if source.startswith("env:"):
        name = source[4:]
        url = os.environ.get(name, "").strip()
        if not url:
            raise SourceError(f"environment variable {name} is unset or empty")
    elif source.startswith("file:"):
        try:
            url = read_secret_text(source[5:])
        except (OSError, UnicodeDecodeError):
            raise SourceError(f"cannot read {source[5:]}") from None
    else:
        path = Path(source)
        if not path.is_file():
            raise SourceError(f"{path}: no such SQLite store")
        return AuditStore.sqlite(path, timeout_seconds=timeout_seconds, read_only=True)
    try:
        return open_url(url, timeout_seconds=timeout_seconds, pool_size=1, read_only=True)
    except StoreError as exc:
        raise SourceError(str(exc)) from None


def _sources(args: argparse.Namespace, command: str) -> AuditStore | list[AuditFile] | None:
    """The store named by --database, or the files named by the paths; None after saying
    what is wrong."""
    if args.database is not None and args.paths:
        say(f"broker audit {command}: give paths or --database, not both", file=sys.stderr)
        return None
    if args.database is not None:
        return _database(args, command)
    if not args.paths:
        say(f"broker audit {command}: give audit paths or --database", file=sys.stderr)
        return None
    return _discover(args, command)


def _database(args: argparse.Namespace, command: str) -> AuditStore | None:
    """The store --database names; None after saying why it cannot be opened."""
    try:
        return open_database(args.database)
    except SourceError as exc:
        say(f"broker audit {command}: --database: {exc}", file=sys.stderr)
        return None


def cmd_keygen(args: argparse.Namespace) -> int:
    try:
        private_path, public_path = generate_key_pair(Path(args.out), args.name)
    except FileExistsError as exc:
        # The directory, or a file or link where a key would go.
        said = (
            f"{args.out} is not a directory"
            if exc.filename == args.out
            else f"a key named {args.name} exists in {args.out}"
        )
        say(f"broker audit keygen: {said}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        where = exc.filename if exc.filename is not None else args.out
        say(f"broker audit keygen: cannot write in {where}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    say(f"private key (configure as audit.signing_key_file; keep secret): {private_path}")
    say(f"public key (give to auditors): {public_path}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        verifier = load_public_key(args.public_key)
    except SigningKeyError as exc:
        say(f"broker audit verify: {exc}", file=sys.stderr)
        return EXIT_USAGE
    anchors = None
    if args.anchors is not None:
        try:
            anchors = read_anchors(args.anchors)
        except AnchorsUnusable as exc:
            say(f"broker audit verify: --anchors: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.database is not None and args.paths:
        return _verify_both(args, verifier, anchors)
    source = _sources(args, "verify")
    if source is None:
        return EXIT_USAGE
    if isinstance(source, AuditStore):
        try:
            code, stored = _verified_store(source, verifier, args.quiet_seconds)
            if code or anchors is None:
                return code
            return _held_against(
                anchors,
                _instances(stored.report),
                [source.line_sha256_at],
                source.retained_through,
            )
        finally:
            source.close()
    report = verify(args.paths, verifier, allow_crash_tail=args.allow_crash_tail)
    code = _print_report(report)
    if code or anchors is None:
        return code
    return _held_against(anchors, _instances(report), [file_hashes(source)])


def _instances(report: VerifyReport) -> set[str]:
    return {chain.instance for chain in report.chains}


def _held_against(
    anchors: Anchors,
    instances: set[str],
    copies: list[HashAt],
    retained: Callable[[str], int] | None = None,
) -> int:
    """The logged heads held against the verified trail (whose chains are ``instances``):
    said, and the exit status."""
    try:
        failures = missing(anchors, *copies, retained=retained)
    except (StoreError, Broken) as exc:
        # The store went away, or a file changed, since it verified: nothing was checked.
        failures = [f"the trail could not be read to look the log's heads up: {exc}"]
    say(
        f"the log's checkpoints: {anchors.heads} head(s) of {len(anchors.newest)} instance(s) "
        f"({anchors.other_lines} other line(s) passed over); the newest of each instance must "
        "be in the trail, as logged"
    )
    for failure in failures:
        say(f"FAILED: {failure}")
    if failures:
        return EXIT_FAILED
    say("  all found: no chain the log saw was deleted or cut back below a signed checkpoint")
    if unlogged := sorted(instances - anchors.newest.keys()):
        # Their logs were not kept, or not collected here: the trail alone vouches for them.
        named = ", ".join(unlogged[:10]) + (
            f" and {len(unlogged) - 10} more" if len(unlogged) > 10 else ""
        )
        say(f"  not in the log, so checked by the trail alone: {len(unlogged)} chain(s): {named}")
    return 0


def _verified_store(
    store: AuditStore, verifier: CheckpointVerifier, quiet: float
) -> tuple[int, StoreVerifyReport]:
    try:
        result = verify_store(store, verifier, quiet_seconds=quiet)
    except StoreError as exc:
        # Mid-way (the store went away, or holds a row no writer writes): said, not a
        # traceback; and a failure, for nothing after it was checked.
        result = StoreVerifyReport(VerifyReport(failure=str(exc)))
    code = _print_report(result.report, store=True)
    for instance in result.instances:
        say(
            f"  stored: {instance.instance}: seq {instance.first_seq}..{instance.last_seq} "
            f"({instance.rows} rows), {instance.first_time} .. {instance.last_time}"
        )
    for message in result.quiet:
        say(f"FAILED: {message}")
    return (EXIT_FAILED if result.quiet else code), result


def _verify_both(
    args: argparse.Namespace, verifier: CheckpointVerifier, anchors: Anchors | None
) -> int:
    """The files and the store, each verified, then held against each other: either
    copy's unsigned tail is vouched for only by the other (broker/audit/cross_check.py)."""
    files = _discover(args, "verify")
    if files is None:
        return EXIT_USAGE
    store = _database(args, "verify")
    if store is None:
        return EXIT_USAGE
    try:
        starts = vouched_starts(files, store)
        report = verify(args.paths, verifier, allow_crash_tail=args.allow_crash_tail, starts=starts)
        files_code = _print_report(report)
        for instance, (seq, _) in sorted(starts.items()):
            say(f"  {instance}: seq 1..{seq - 1} only in the store (its files were pruned)")
        store_code, stored = _verified_store(store, verifier, args.quiet_seconds)
        if files_code or store_code:
            return EXIT_FAILED
        checked = cross_check(files, report.chains, store, stored.report.chains)
        say("the files held against the store:")
        for line in checked.lines:
            say(line)
        for warning in checked.warnings:
            say(f"WARNING: {warning}")
        for failure in checked.failures:
            say(f"FAILED: {failure}")
        if not checked.ok:
            return EXIT_FAILED
        if anchors is None:
            return 0
        # Held against both copies, verified and held against each other: a head either
        # holds as logged is on the trail.
        return _held_against(
            anchors,
            _instances(report) | _instances(stored.report),
            [file_hashes(files), store.line_sha256_at],
            store.retained_through,
        )
    finally:
        store.close()


def _print_report(report: VerifyReport, *, store: bool = False) -> int:
    for warning in report.warnings:
        say(f"WARNING: {warning}")
    if not report.ok:
        say(f"FAILED: {report.failure}")
        return EXIT_FAILED
    where = "in the store: " if store else ""
    say(
        f"OK: {where}{report.files} file(s), {report.instances} instance(s), "
        f"{report.records} record(s), {report.checkpoints} signed checkpoint(s)"
    )
    if report.counted:
        # Floods are recorded in part: the trail counts the rest (README, rate limits).
        say(f"  and {report.counted} refusal(s) counted in them, not recorded one by one")
    if report.unknown_types:
        kinds = ", ".join(
            f"{kind} ({count})" for kind, count in sorted(report.unknown_types.items())
        )
        say(
            f"  of types this tool does not know: {kinds}; written by a newer broker, they "
            "are chained and signed as the rest, and a newer tool reads what they say"
        )
    for chain in report.chains:
        # Unsealed: when its last checkpoint was signed tells a running broker (it signs
        # one at least every audit.heartbeat_seconds) from one that crashed long ago.
        state = (
            "sealed"
            if chain.sealed
            else f"NOT sealed (running or crashed), last signed at {chain.signed_time or '-'}"
        )
        follows = f", follows {chain.predecessor}" if chain.predecessor else ""
        head = "" if chain.followed else "  [lineage head]"
        say(
            f"  {chain.instance}: seq {chain.first_seq}..{chain.last_seq} in {chain.files} "
            f"file(s), last at {chain.last_time or '-'}, {state}{follows}{head}"
        )
    print(textwrap.fill(COMPLETENESS, width=100))
    if store:
        print(textwrap.fill(STORE_COMPLETENESS, width=100))
    return 0


def _print(found: Iterable[dict[str, Any]], output_format: str) -> None:
    """Each record as it is read: a broad query over a long trail held every match at once
    (2.3 GB for a million here). A table's columns are as wide as its first
    ``_TABLE_SAMPLE`` rows need; a longer cell further down widens its own line only."""
    if output_format == "json":
        for record in found:
            sys.stdout.write(msgspec.json.encode(record).decode() + "\n")
        return
    # Escaped before the widths are measured, so that the columns stay aligned.
    rows = (
        [shown(str(record.get(column) or "-")) for column in _TABLE_COLUMNS] for record in found
    )
    sample = list(itertools.islice(rows, _TABLE_SAMPLE))
    widths = [
        max([len(column), *(len(row[index]) for row in sample)])
        for index, column in enumerate(_TABLE_COLUMNS)
    ]
    say(
        "  ".join(column.ljust(width) for column, width in zip(_TABLE_COLUMNS, widths, strict=True))
    )
    for row in itertools.chain(sample, rows):
        say("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def _discover(args: argparse.Namespace, command: str) -> list[AuditFile] | None:
    try:
        return discover(args.paths)
    except ValueError as exc:
        say(f"broker audit {command}: {exc}", file=sys.stderr)
        return None


def cmd_query(args: argparse.Namespace) -> int:
    source = _sources(args, "query")
    if source is None:
        return EXIT_USAGE
    # The same filters for the store and for files.
    criteria = {
        "subject": args.subject,
        "audience": args.audience,
        "caller": args.caller,
        "outcome": args.outcome,
        "since": args.since,
        "until": args.until,
    }
    if isinstance(source, AuditStore):
        try:
            _print(source.matching(StoreFilters(**criteria)), args.format)
        except StoreError as exc:
            # After what was printed: a script must not take a partial answer as whole.
            say(f"broker audit query: {exc}", file=sys.stderr)
            return EXIT_FAILED
        finally:
            source.close()
        return 0
    unread = Unread()
    _print(
        (located.record for located in query(source, Filters(**criteria), unread=unread)),
        args.format,
    )
    if unread:
        # Printed, and still a failure: a script must not take a partial answer as whole.
        say(f"broker audit query: {unread.describe()}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def cmd_find_token(args: argparse.Namespace) -> int:
    source = _sources(args, "find-token")
    if source is None:
        return EXIT_USAGE
    sha256, jti = args.sha256, args.jti
    if args.token is not None:
        token = (sys.stdin.read(_MAX_TOKEN + 1) if args.token == "-" else args.token).strip()
        if not token or len(token) > _MAX_TOKEN:
            say(
                f"broker audit find-token: --token: give a JWT of 1 to {_MAX_TOKEN} characters",
                file=sys.stderr,
            )
            return EXIT_USAGE
        # The same fingerprint the broker puts in tokenSha256; and the jti, because an ECDSA
        # signature can be re-encoded into other bytes that verify just the same.
        sha256, jti = fingerprint(token), token_jti(token)
    found: list[tuple[dict[str, Any], str]]
    unread = Unread()
    if isinstance(source, AuditStore):
        try:
            found = source.find_token(sha256=sha256, jti=jti)
        except StoreError as exc:
            say(f"broker audit find-token: {exc}", file=sys.stderr)
            return EXIT_FAILED
        finally:
            source.close()
    else:
        found = [
            (located.record, matched)
            for located, matched in find_token(source, sha256=sha256, jti=jti, unread=unread)
        ]
        if unread:
            # A record that cannot be read may be the very one looked for.
            say(f"broker audit find-token: {unread.describe()}", file=sys.stderr)
    issued = False
    for record, matched in found:
        if record.get("outcome") != "issued":
            say(
                f"withheld: request {record.get('requestId')} was answered 503 and this token "
                "never left the broker (its issued record, if there is one, was written too "
                "late)",
                file=sys.stderr,
            )
            continue
        issued = True
        if matched == "tokenSha256":
            say("matched by tokenSha256: these exact token bytes were issued", file=sys.stderr)
        else:
            say(
                "matched by tokenId (jti) only: a token with this jti was issued, but its "
                "bytes differ (a re-encoded signature, or a forgery reusing the jti)",
                file=sys.stderr,
            )
    if found:
        _print([record for record, _ in found], args.format)
    if not issued:
        say(
            "no issuance record matches" + (" in what could be read" if unread else ""),
            file=sys.stderr,
        )
        return EXIT_FAILED
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    store = _database(args, "export")
    if store is None:
        return EXIT_USAGE
    out = Path(args.out)
    try:
        written = export_chains(store, out)
    except FileExistsError as exc:
        said = (
            f"{out} is not a directory"
            if exc.filename == str(out)
            else f"{exc.filename} exists: export into an empty directory"
        )
        say(f"broker audit export: {said}", file=sys.stderr)
        return EXIT_USAGE
    except StoreError as exc:
        say(f"broker audit export: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        where = exc.filename if exc.filename is not None else out
        say(f"broker audit export: cannot write {where}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        store.close()
    say(f"wrote {written.files} file(s), {written.records} record(s) to {out}")
    say(f"verify them offline: broker audit verify {out} --public-key PUBLIC_KEY.pem")
    return 0


def token_jti(token: str) -> str | None:
    """The ``jti`` claim of a JWT, read without verifying it (None if it has none)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = msgspec.json.decode(payload)
    except (ValueError, msgspec.DecodeError, RecursionError):
        # RecursionError: a payload nested deeper than msgspec recurses (a token from the
        # wild is anyone's).
        return None
    jti = claims.get("jti") if isinstance(claims, dict) else None
    return jti if isinstance(jti, str) else None


def _sha256(value: str) -> str:
    if len(value) != 64 or any(char not in "0123456789abcdefABCDEF" for char in value):
        raise argparse.ArgumentTypeError("must be 64 hexadecimal characters (a tokenSha256)")
    return value.lower()


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    example: str,
) -> argparse.ArgumentParser:
    return sub.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=f"example:\n  {example}",
        formatter_class=_HelpFormatter,
    )


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Defaults shown where there is one worth showing, and examples kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


_PATHS_HELP = "audit files, or directories holding them (audit-INSTANCE-NNNNNN.jsonl)"
_FORMAT_HELP = "table: aligned columns; json: JSON Lines, one whole record per line"


def add_audit_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = commands.add_parser(
        "audit",
        help="audit trail tools: keygen, verify, query, find-token, export",
        description="The auditor's tools. They read audit files offline, or the audit store "
        "(--database), and need nothing from the broker but its public key.",
    )
    sub = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")

    keygen = add_command(
        sub,
        "keygen",
        "write an Ed25519 key pair for signing checkpoints (NAME.key 0600, NAME.pub 0644)",
        "broker audit keygen --out /etc/broker --name audit-signing",
    )
    keygen.add_argument("--out", default=".", help="directory for NAME.key and NAME.pub")
    keygen.add_argument(
        "--name",
        type=_key_name,
        default="audit-signing",
        help="the key pair's file name stem (letters, digits, '.', '_', '-'; no path)",
    )
    keygen.set_defaults(func=cmd_keygen)

    check = add_command(
        sub,
        "verify",
        "check the chains, their checkpoint signatures and their completeness, offline",
        "broker audit verify var/audit --public-key audit-signing.pub",
    )
    check.add_argument("paths", nargs="*", metavar="PATH", help=_PATHS_HELP)
    check.add_argument(
        "--database",
        metavar="SOURCE",
        help=DATABASE_HELP + ". With PATHs too, both are verified and then held against "
        "each other: for each instance both hold, one copy must be the other's beginning, "
        "which vouches for the records after the last signed checkpoint",
    )
    check.add_argument(
        "--quiet-seconds",
        type=_seconds,
        default=3600.0,
        help="with --database: an unsealed chain whose last signed checkpoint is older is "
        "reported as a possible deletion (a running broker signs one every "
        "audit.heartbeat_seconds at least)",
    )
    check.add_argument(
        "--public-key", required=True, help="the checkpoint signing public key (PEM)"
    )
    check.add_argument(
        "--anchors",
        metavar="LOGFILE",
        help="the broker's JSON log lines, as collected off its host (other lines may be "
        "among them): the newest audit_checkpoint_signed head of each instance there must "
        "be in the trail with the hash logged, so that a chain deleted whole, or cut back "
        "below a checkpoint it had signed, is found",
    )
    check.add_argument(
        "--allow-crash-tail",
        action="store_true",
        help="accept a partial last line and unsigned records after the last signed "
        "checkpoint of an unsealed chain (a broker that was killed, or is still running); "
        "they are reported as warnings",
    )
    check.set_defaults(func=cmd_verify)

    ask = add_command(
        sub,
        "query",
        "list the decisions that match every filter given, oldest first",
        "broker audit query var/audit --subject user_123 --outcome issued "
        "--since 2026-11-01T00:00:00Z",
    )
    ask.add_argument("paths", nargs="*", metavar="PATH", help=_PATHS_HELP)
    ask.add_argument("--database", metavar="SOURCE", help=DATABASE_HELP)
    ask.add_argument("--subject", help="the end user (externalUserId)")
    ask.add_argument("--audience", help="the token audience, exactly")
    ask.add_argument("--caller", help="the caller id (a client id, or ISSUER/SUBJECT for a JWT)")
    ask.add_argument(
        "--outcome", choices=["issued", "denied", "rejected", "failed"], help="the outcome"
    )
    ask.add_argument("--since", type=_timestamp, help="RFC 3339 with an offset, inclusive")
    ask.add_argument("--until", type=_timestamp, help="RFC 3339 with an offset, exclusive")
    ask.add_argument("--format", choices=["table", "json"], default="table", help=_FORMAT_HELP)
    ask.set_defaults(func=cmd_query)

    find = add_command(
        sub,
        "find-token",
        "find the issuance record of a token seen in the wild (exit 1 if none)",
        "broker audit find-token var/audit --token - < token.txt",
    )
    find.add_argument("paths", nargs="*", metavar="PATH", help=_PATHS_HELP)
    find.add_argument("--database", metavar="SOURCE", help=DATABASE_HELP)
    which = find.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--token",
        help="the JWT itself (hashed locally, never stored; matched by hash and jti), or - to "
        "read it from standard input, which keeps a live token out of the process list and "
        "the shell's history",
    )
    which.add_argument("--sha256", type=_sha256, help="the token's SHA-256 (tokenSha256)")
    which.add_argument("--jti", help="the token's jti (tokenId)")
    find.add_argument("--format", choices=["table", "json"], default="table", help=_FORMAT_HELP)
    find.set_defaults(func=cmd_find_token)

    export = add_command(
        sub,
        "export",
        "write the audit store's chains as audit files that verify accepts offline",
        "broker audit export --database env:AUDIT_DATABASE_URL --out trail/",
    )
    export.add_argument("--database", metavar="SOURCE", required=True, help=DATABASE_HELP)
    export.add_argument("--out", required=True, help="an empty or new directory")
    export.set_defaults(func=cmd_export)


def main(argv: list[str]) -> int:
    """``broker audit ...`` on its own: the same commands as through ``broker.cli``."""
    parser = argparse.ArgumentParser(prog="broker")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_audit_commands(commands)
    args = parser.parse_args(argv)
    return printing(lambda: args.func(args))
