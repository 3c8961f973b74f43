"""The audit line's exact bytes and what a checkpoint signs, pinned: trails written by earlier
releases must verify with this one, so a field renamed, reordered or newly spelled out in
these is a format change (a new ``v``), never a refactor."""

from __future__ import annotations

import hashlib

import msgspec

from broker.audit.records import (
    CHECKPOINT_DOMAIN,
    GENESIS,
    SCHEMA_VERSION,
    AuditEvent,
    ChainHeader,
    CheckpointHead,
    checkpoint_line,
    encode_line,
    fingerprint,
    names_a_token,
)

_ENCODER = msgspec.json.Encoder()


def test_a_decision_line_is_its_chain_header_then_its_camel_case_fields_unset_ones_as_null() -> (
    None
):
    event = AuditEvent(
        time="2026-12-07T12:00:00.000Z",
        request_id="req-1",
        outcome="issued",
        code="issued",
        status=200,
        caller="svc",
        external_user_id="user_123",
        permissions=["read:responses"],
        token_sha256="ab" * 32,
    )
    header = ChainHeader(v=SCHEMA_VERSION, type="decision", instance="host-1", seq=7, prev=GENESIS)
    assert encode_line(header, _ENCODER.encode(event)) == (
        b'{"v":1,"type":"decision","instance":"host-1","seq":7,"prev":"' + GENESIS.encode() + b'",'
        b'"time":"2026-12-07T12:00:00.000Z","requestId":"req-1","outcome":"issued",'
        b'"code":"issued","status":200,"caller":"svc","authMethod":null,"sourceAddress":null,'
        b'"externalUserId":"user_123","audience":null,"permissions":["read:responses"],'
        b'"requestedExpiresIn":null,"grantedExpiresIn":null,"expiresAt":null,'
        b'"upstreamStatus":null,"upstreamLatencyMs":null,"tokenSha256":"' + b"ab" * 32 + b'",'
        b'"tokenId":null,"cache":null,"reason":null,"unrecordedBefore":null,"sharedState":null}'
    )


def test_a_line_with_an_empty_body_is_its_header_alone() -> None:
    header = ChainHeader(v=1, type="start", instance="i", seq=1, prev=GENESIS)
    assert encode_line(header, b"{}") == _ENCODER.encode(header)


def test_a_checkpoint_signs_the_domain_then_its_head_in_a_fixed_order() -> None:
    head = CheckpointHead(
        instance="host-1",
        file="audit-0001.jsonl",
        seq=41,
        hash="cd" * 32,
        reason="count",
        time="2026-12-07T12:00:01.000Z",
        next=None,
    )
    assert CHECKPOINT_DOMAIN == b"mka1-token-broker/audit-checkpoint/v1\n"
    assert head.message() == CHECKPOINT_DOMAIN + (
        b'{"instance":"host-1","file":"audit-0001.jsonl","seq":41,"hash":"' + b"cd" * 32 + b'",'
        b'"reason":"count","time":"2026-12-07T12:00:01.000Z","next":null}'
    )
    line = checkpoint_line("host-1", 42, "ef" * 32, head.body("key-1", "c2ln"))
    assert line == (
        b'{"v":1,"type":"checkpoint","instance":"host-1","seq":42,"prev":"' + b"ef" * 32 + b'",'
        b'"time":"2026-12-07T12:00:01.000Z","reason":"count","file":"audit-0001.jsonl",'
        b'"headSeq":41,"headHash":"' + b"cd" * 32 + b'","next":null,"keyId":"key-1","sig":"c2ln"}'
    )


def test_a_tokens_fingerprint_is_the_sha256_of_its_text() -> None:
    token = "eyJhbGciOiJFUzI1NiJ9.e30.c2ln"
    assert fingerprint(token) == hashlib.sha256(token.encode()).hexdigest()
    # A token is ASCII; anything else is fingerprinted with "?" in its place, never raised.
    assert fingerprint("a\u00e9b") == hashlib.sha256(b"a?b").hexdigest()


def test_a_record_names_a_token_when_it_issues_one_or_withdraws_one() -> None:
    assert names_a_token({"outcome": "issued", "code": "issued"})
    assert names_a_token({"outcome": "failed", "code": "audit_unavailable"})
    assert not names_a_token({"outcome": "failed", "code": "upstream_error"})
    assert not names_a_token({"outcome": "denied", "code": "audit_unavailable"})
    assert not names_a_token({})
