"""``broker audit keygen | verify | query | find-token``: the auditor's tools, offline."""

from __future__ import annotations

import argparse
import base64
import sys
import textwrap
from datetime import datetime
from pathlib import Path

import msgspec

from broker.audit.reader import (
    COMPLETENESS,
    AuditFile,
    Filters,
    Located,
    discover,
    find_token,
    query,
    verify,
)
from broker.audit.records import fingerprint
from broker.audit.signing import SigningKeyError, generate_key_pair, load_public_key

EXIT_FAILED = 1
EXIT_USAGE = 2
_TABLE_COLUMNS = ("time", "outcome", "code", "caller", "externalUserId", "audience", "tokenId")


def _timestamp(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time: {value!r}") from None
    if parsed.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give a UTC offset or Z: {value!r}")
    return parsed


def cmd_keygen(args: argparse.Namespace) -> int:
    try:
        private_path, public_path = generate_key_pair(Path(args.out), args.name)
    except FileExistsError:
        print(f"broker audit keygen: a key named {args.name} exists in {args.out}", file=sys.stderr)
        return EXIT_USAGE
    print(f"private key (configure as audit.signing_key_file; keep secret): {private_path}")
    print(f"public key (give to auditors): {public_path}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    try:
        verifier = load_public_key(args.public_key)
    except SigningKeyError as exc:
        print(f"broker audit verify: {exc}", file=sys.stderr)
        return EXIT_USAGE
    report = verify(args.paths, verifier, allow_crash_tail=args.allow_crash_tail)
    for warning in report.warnings:
        print(f"WARNING: {warning}")
    if not report.ok:
        print(f"FAILED: {report.failure}")
        return EXIT_FAILED
    print(
        f"OK: {report.files} file(s), {report.instances} instance(s), "
        f"{report.records} record(s), {report.checkpoints} signed checkpoint(s)"
    )
    for chain in report.chains:
        state = "sealed" if chain.sealed else "NOT sealed (running or crashed)"
        follows = f", follows {chain.predecessor}" if chain.predecessor else ""
        head = "" if chain.followed else "  [lineage head]"
        print(
            f"  {chain.instance}: seq {chain.first_seq}..{chain.last_seq} in {chain.files} "
            f"file(s), last at {chain.last_time or '-'}, {state}{follows}{head}"
        )
    print(textwrap.fill(COMPLETENESS, width=100))
    return 0


def _print(found: list[Located], output_format: str) -> None:
    if output_format == "json":
        for located in found:
            sys.stdout.write(msgspec.json.encode(located.record).decode() + "\n")
        return
    rows = [
        [str(located.record.get(column) or "-") for column in _TABLE_COLUMNS] for located in found
    ]
    widths = [
        max([len(column), *(len(row[index]) for row in rows)])
        for index, column in enumerate(_TABLE_COLUMNS)
    ]
    print(
        "  ".join(column.ljust(width) for column, width in zip(_TABLE_COLUMNS, widths, strict=True))
    )
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def _discover(args: argparse.Namespace, command: str) -> list[AuditFile] | None:
    try:
        return discover(args.paths)
    except ValueError as exc:
        print(f"broker audit {command}: {exc}", file=sys.stderr)
        return None


def cmd_query(args: argparse.Namespace) -> int:
    if (files := _discover(args, "query")) is None:
        return EXIT_USAGE
    filters = Filters(
        subject=args.subject,
        audience=args.audience,
        caller=args.caller,
        outcome=args.outcome,
        since=args.since,
        until=args.until,
    )
    _print(list(query(files, filters)), args.format)
    return 0


def cmd_find_token(args: argparse.Namespace) -> int:
    if (files := _discover(args, "find-token")) is None:
        return EXIT_USAGE
    sha256, jti = args.sha256, args.jti
    if args.token is not None:
        token = args.token.strip()
        # The same fingerprint the broker puts in tokenSha256; and the jti, because an ECDSA
        # signature can be re-encoded into other bytes that verify just the same.
        sha256, jti = fingerprint(token), token_jti(token)
    found = find_token(files, sha256=sha256, jti=jti)
    if not found:
        print("no issuance record matches", file=sys.stderr)
        return EXIT_FAILED
    for _, matched in found:
        if matched == "tokenSha256":
            print("matched by tokenSha256: these exact token bytes were issued", file=sys.stderr)
        else:
            print(
                "matched by tokenId (jti) only: a token with this jti was issued, but its "
                "bytes differ (a re-encoded signature, or a forgery reusing the jti)",
                file=sys.stderr,
            )
    _print([located for located, _ in found], args.format)
    return 0


def token_jti(token: str) -> str | None:
    """The ``jti`` claim of a JWT, read without verifying it (None if it has none)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = msgspec.json.decode(payload)
    except (ValueError, msgspec.DecodeError):
        return None
    jti = claims.get("jti") if isinstance(claims, dict) else None
    return jti if isinstance(jti, str) else None


def add_audit_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    audit = commands.add_parser(
        "audit", help="audit trail tools: keygen, verify, query, find-token"
    )
    sub = audit.add_subparsers(dest="audit_command", required=True)

    keygen = sub.add_parser("keygen", help="write an Ed25519 key pair for signing checkpoints")
    keygen.add_argument("--out", default=".", help="directory for NAME.key and NAME.pub")
    keygen.add_argument("--name", default="audit-signing")
    keygen.set_defaults(func=cmd_keygen)

    check = sub.add_parser("verify", help="check the chain and checkpoint signatures offline")
    check.add_argument("paths", nargs="+", help="audit files or directories")
    check.add_argument("--public-key", required=True, help="the checkpoint signing public key")
    check.add_argument(
        "--allow-crash-tail",
        action="store_true",
        help="accept a partial last line and unsigned records after the last checkpoint "
        "(a broker that was killed); they are reported as warnings",
    )
    check.set_defaults(func=cmd_verify)

    ask = sub.add_parser("query", help="list decisions matching filters")
    ask.add_argument("paths", nargs="+")
    ask.add_argument("--subject", help="the end user (externalUserId)")
    ask.add_argument("--audience")
    ask.add_argument("--caller")
    ask.add_argument("--outcome", choices=["issued", "denied", "rejected", "failed"])
    ask.add_argument("--since", type=_timestamp, help="RFC 3339, inclusive")
    ask.add_argument("--until", type=_timestamp, help="RFC 3339, exclusive")
    ask.add_argument("--format", choices=["table", "json"], default="table")
    ask.set_defaults(func=cmd_query)

    find = sub.add_parser("find-token", help="find the issuance record of a token")
    find.add_argument("paths", nargs="+")
    which = find.add_mutually_exclusive_group(required=True)
    which.add_argument("--token", help="the JWT itself (hashed locally, never stored)")
    which.add_argument("--sha256", help="the token's SHA-256 (tokenSha256)")
    which.add_argument("--jti", help="the token's jti (tokenId)")
    find.add_argument("--format", choices=["table", "json"], default="json")
    find.set_defaults(func=cmd_find_token)
