"""Caller-JWT verification in-process, against the test identity provider's real JWKS endpoint:
hostile tokens and hostile key sets are refusals with a reason, never an exception."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from structlog.testing import capture_logs

from broker.config import IssuerSettings
from broker.federation import InvalidCallerToken, VerifiedCaller, VerifiedTokens
from tests.conftest import AUDIENCE
from tests.support.federation import caller_verifier
from tests.support.idp import BROKER_AUDIENCE, IdentityProvider, LocalCA


@pytest.fixture(scope="module")
def provider() -> Iterator[IdentityProvider]:
    started = IdentityProvider()
    yield started
    started.close()


@pytest.fixture
def idp(provider: IdentityProvider) -> IdentityProvider:
    provider.extra_jwks = []
    provider.split_jwks = False
    provider.raw_jwks = None
    return provider


def _verify(idp: IdentityProvider, token: str, **options: Any) -> VerifiedCaller | str:
    """The verified caller, or the refusal's reason."""

    async def run() -> VerifiedCaller | str:
        async with aiohttp.ClientSession() as session:
            verifier = caller_verifier(idp, session, **options)
            try:
                return await verifier.verify(token)
            except InvalidCallerToken as refused:
                return refused.reason

    return asyncio.run(run())


def _claims(idp: IdentityProvider, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": idp.issuer,
        "sub": "alice",
        "aud": BROKER_AUDIENCE,
        "iat": now,
        "exp": now + 300,
    } | overrides


def _ec_key(kid: str) -> tuple[ec.EllipticCurvePrivateKey, dict[str, Any]]:
    private = ec.generate_private_key(ec.SECP256R1())
    public: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(private.public_key()))
    return private, public | {"kid": kid, "use": "sig"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _raw_token(header: dict[str, Any], payload: Any) -> str:
    """A token with any header and payload, signed with nothing verifiable."""
    encoded = [_b64(json.dumps(part).encode()) for part in (header, payload)]
    return ".".join([*encoded, _b64(b"\x00" * 64)])


def test_a_valid_token_verifies(idp: IdentityProvider) -> None:
    verified = _verify(idp, idp.token("alice"))
    assert isinstance(verified, VerifiedCaller)
    assert verified.subject == "alice"


def test_an_ec_signature_on_an_rsa_kid_is_refused(idp: IdentityProvider) -> None:
    private, _ = _ec_key("unused")
    token = jwt.encode(_claims(idp), private, algorithm="ES256", headers={"kid": idp.key.kid})
    assert _verify(idp, token) == "algorithm_does_not_fit_key"


def test_an_rsa_signature_on_an_ec_kid_is_refused(idp: IdentityProvider) -> None:
    _, public = _ec_key("ec-key")
    idp.extra_jwks = [public]
    token = jwt.encode(_claims(idp), idp.key.private, algorithm="RS256", headers={"kid": "ec-key"})
    assert _verify(idp, token) == "algorithm_does_not_fit_key"


def test_an_ec_key_on_a_curve_no_allowed_algorithm_uses_is_never_loaded(
    idp: IdentityProvider,
) -> None:
    private = ec.generate_private_key(ec.SECP384R1())
    public = json.loads(ECAlgorithm.to_jwk(private.public_key())) | {"kid": "p384"}
    idp.extra_jwks = [public]
    token = _raw_token({"alg": "ES256", "kid": "p384"}, _claims(idp))
    assert _verify(idp, token) == "unknown_kid"


@pytest.mark.parametrize(
    "entry",
    [
        {"kty": "oct", "kid": "shared", "k": _b64(b"secret" * 8)},
        {"kty": "oct", "kid": "shared", "k": _b64(b"secret" * 8), "alg": "RS256"},
        {"kty": "RSA", "kid": "shared", "n": 5, "e": [1]},
        {"kty": "EC", "kid": "shared", "crv": {"x": 1}},
        {"kid": "shared"},
        "not an object",
    ],
)
def test_hostile_jwks_entries_are_never_used(idp: IdentityProvider, entry: Any) -> None:
    idp.extra_jwks = [entry]
    for algorithm in ("RS256", "HS256", "ES256"):
        token = _raw_token({"alg": algorithm, "kid": "shared"}, _claims(idp))
        assert _verify(idp, token) in ("unknown_kid", "algorithm_not_allowed")
    # The genuine key still works beside them.
    assert isinstance(_verify(idp, idp.token("alice")), VerifiedCaller)


@pytest.mark.parametrize(
    "document",
    [
        b'{"keys": ' + b"[" * 3000 + b"]" * 3000 + b"}",
        b'{"x": ' + b"[" * 3000 + b"]" * 3000 + b', "keys": []}',
        b'{"keys": [{"kty": "\xff"}]}',
    ],
)
def test_a_jwks_nested_deeper_than_a_decoder_recurses_is_a_failed_fetch(
    idp: IdentityProvider, document: bytes
) -> None:
    # msgspec raises RecursionError past ~1000 levels; the fetch must fail like any other
    # bad document (no keys, the token refused), not raise out of verification.
    idp.raw_jwks = document
    assert _verify(idp, idp.token("alice")) == "unknown_kid"


def _signed(idp: IdentityProvider, payload: Any) -> str:
    """Validly signed by the IdP's key, whatever the payload (PyJWT's encoder refuses some)."""
    return jwt.PyJWS().encode(
        json.dumps(payload).encode(),
        idp.key.private,
        algorithm="RS256",
        headers={"kid": idp.key.kid},
    )


@pytest.mark.parametrize("issuer", [["x"], {"a": 1}, 5, None, True, 1.5])
def test_a_non_string_issuer_is_untrusted(idp: IdentityProvider, issuer: Any) -> None:
    assert _verify(idp, _signed(idp, _claims(idp, iss=issuer))) == "untrusted_issuer"


@pytest.mark.parametrize(
    ("header", "payload"),
    [
        ({"alg": ["RS256"], "kid": "k"}, "claims"),
        ({"alg": {"a": 1}, "kid": "k"}, "claims"),
        ({"alg": "RS256", "kid": ["k"]}, "claims"),
        ({"alg": "RS256", "kid": {"k": 1}}, "claims"),
        ("not an object", "claims"),
        ({"alg": "RS256"}, ["a", "list"]),
        ({"alg": "RS256"}, "a string"),
        ({"alg": "RS256", "crit": ["exp"]}, "claims"),
    ],
)
def test_hostile_headers_and_payloads_are_refusals(
    idp: IdentityProvider, header: Any, payload: Any
) -> None:
    token = _raw_token(header, _claims(idp) if payload == "claims" else payload)
    assert isinstance(_verify(idp, token), str)


def _forged(idp: IdentityProvider, how: str) -> str:
    """A token for alice under the IdP's kid that the IdP never signed: the algorithm, the
    key or where to find it chosen by the token itself."""
    claims = json.dumps(_claims(idp)).encode()
    if how == "alg none":
        return f"{_b64(json.dumps({'alg': 'none', 'kid': idp.key.kid}).encode())}.{_b64(claims)}."
    if how == "HS256 keyed with the public key":
        pem = idp.key.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        header = _b64(json.dumps({"alg": "HS256", "kid": idp.key.kid}).encode())
        signing_input = f"{header}.{_b64(claims)}".encode()
        return f"{header}.{_b64(claims)}." + _b64(
            hmac.new(pem, signing_input, hashlib.sha256).digest()
        )
    # An RSA key of the forger's own, under the IdP's kid, named in the token itself.
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(RSAAlgorithm.to_jwk(private.public_key())) | {"kid": idp.key.kid}
    extra = {"jwk": public} if how == "its own jwk" else {"jku": "http://127.0.0.1:9/jwks"}
    return jwt.PyJWS().encode(
        claims, private, algorithm="RS256", headers={"kid": idp.key.kid, **extra}
    )


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("alg none", "algorithm_not_allowed"),
        ("HS256 keyed with the public key", "algorithm_not_allowed"),
        # The key in the token, or at the URL it names, is never used: the IdP's key for
        # that kid is, and the forger's signature does not verify with it.
        ("its own jwk", "bad_signature"),
        ("its own jku", "bad_signature"),
    ],
)
def test_a_token_that_chooses_its_own_algorithm_or_key_is_refused(
    idp: IdentityProvider, how: str, reason: str
) -> None:
    assert isinstance(_verify(idp, idp.token("alice")), VerifiedCaller)  # the control
    assert _verify(idp, _forged(idp, how)) == reason


def test_an_encrypted_token_is_refused(idp: IdentityProvider) -> None:
    # Five parts (JWE compact form): never decrypted, never read as a signed token.
    header = _b64(json.dumps({"alg": "RSA-OAEP", "enc": "A256GCM", "kid": idp.key.kid}).encode())
    assert _verify(idp, ".".join([header, "a", "b", "c", "d"])) == "malformed_jwt"


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": "soon"},
        {"exp": [1]},
        {"iat": {"a": 1}},
        {"nbf": "now"},
        {"aud": 5},
        {"aud": [["nested"]]},
        {"sub": 5},
        {"sub": ["alice"]},
    ],
)
def test_hostile_claims_in_a_well_signed_token_are_refusals(
    idp: IdentityProvider, claims: dict[str, Any]
) -> None:
    assert isinstance(_verify(idp, _signed(idp, _claims(idp, **claims))), str)


@pytest.mark.parametrize(
    "claims",
    [
        # Verified by PyJWT, then too large for a float: was an OverflowError (a 500).
        {"exp": 10**400},
        {"exp": 1e308},
        # PyJWT takes whatever int() takes.
        {"exp": str(int(time.time()) + 300)},
        {"nbf": str(int(time.time()) - 5)},
        {"iat": str(int(time.time()))},
        {"exp": 253_402_300_800},
    ],
)
def test_time_claims_must_be_json_numbers_of_real_dates(
    idp: IdentityProvider, claims: dict[str, Any]
) -> None:
    assert _verify(idp, _signed(idp, _claims(idp, **claims))) == "invalid_time_claim"


def test_a_fractional_exp_still_verifies(idp: IdentityProvider) -> None:
    exp = time.time() + 300.5
    verified = _verify(idp, _signed(idp, _claims(idp, exp=exp)))
    assert isinstance(verified, VerifiedCaller)
    assert verified.expires_at == exp


def test_a_jwks_that_arrives_in_two_segments_is_read_whole(idp: IdentityProvider) -> None:
    idp.split_jwks = True
    verified = _verify(idp, idp.token("alice"))
    assert isinstance(verified, VerifiedCaller)


def _rsa_jwk(kid: str, bits: int, exponent: int = 65537) -> dict[str, Any]:
    """An RSA public JWK with a modulus of ``bits`` bits (not a real key: it need not be)."""
    modulus = (1 << (bits - 1)) | 1
    return {
        "kty": "RSA",
        "kid": kid,
        "n": _b64(modulus.to_bytes(bits // 8, "big")),
        "e": _b64(exponent.to_bytes((exponent.bit_length() + 7) // 8, "big")),
    }


@pytest.mark.parametrize(
    ("bits", "exponent"),
    [
        (1024, 65537),
        (16384, 65537),
        # A forged token's verification under a 2048-bit exponent cost 20 times 65537's.
        (2048, (1 << 2046) + 1),
        (2048, (1 << 256) + 1),
    ],
)
def test_rsa_keys_too_weak_or_too_costly_are_never_used(
    idp: IdentityProvider, bits: int, exponent: int
) -> None:
    idp.extra_jwks = [_rsa_jwk("odd-size", bits, exponent)]
    token = _raw_token({"alg": "RS256", "kid": "odd-size"}, _claims(idp))
    assert _verify(idp, token) == "unknown_kid"


def test_an_rsa_key_with_an_exponent_within_bounds_is_used(idp: IdentityProvider) -> None:
    # Not a real key, so the signature fails: but the key is there to fail it.
    idp.extra_jwks = [_rsa_jwk("bounded", 2048, (1 << 255) + 1)]
    token = _raw_token({"alg": "RS256", "kid": "bounded"}, _claims(idp))
    assert _verify(idp, token) == "bad_signature"


@pytest.fixture(scope="module")
def local_ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    return LocalCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def cluster_idp(local_ca: LocalCA) -> Iterator[IdentityProvider]:
    """Like a cluster's API server: https under a private CA, a JWKS that wants a token."""
    provider = IdentityProvider(tls=local_ca.server_context())
    provider.bearer = "cluster-token-1"
    yield provider
    provider.close()


def test_an_https_issuers_discovery_cannot_send_the_key_fetch_over_http(
    local_ca: LocalCA, idp: IdentityProvider
) -> None:
    # Fetched in clear, the keys that verify every caller token could be replaced by
    # whoever is on the way; a configured http jwks_url is warned of at start, a discovered
    # one was fetched without a word.
    secure = IdentityProvider(tls=local_ca.server_context())
    secure.jwks_uri = idp.issuer + "/jwks.json"  # a plain-http JWKS serving the same key
    secure.keys = idp.keys
    fetched_before = idp.jwks_fetches
    try:
        with capture_logs() as logs:
            refused = _verify(
                secure, secure.token("alice"), jwks_url=None, jwks_ca_file=str(local_ca.ca_file)
            )
    finally:
        secure.close()
    assert refused == "unknown_kid"
    assert idp.jwks_fetches == fetched_before
    [failed] = [entry for entry in logs if entry["event"] == "jwks_fetch_failed"]
    assert failed["reason"] == "discovery document's jwks_uri is not https, for an https issuer"
    # Discovery itself works: the same provider naming its own https JWKS verifies.
    secure_again = IdentityProvider(tls=local_ca.server_context())
    try:
        verified = _verify(
            secure_again,
            secure_again.token("alice"),
            jwks_url=None,
            jwks_ca_file=str(local_ca.ca_file),
        )
    finally:
        secure_again.close()
    assert isinstance(verified, VerifiedCaller)


def test_a_jwks_behind_a_private_ca_and_a_bearer_token(
    cluster_idp: IdentityProvider, local_ca: LocalCA, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("cluster-token-1\n")
    options = {"jwks_ca_file": str(local_ca.ca_file), "jwks_bearer_token_file": str(token_file)}
    assert isinstance(_verify(cluster_idp, cluster_idp.token("alice"), **options), VerifiedCaller)
    # The token file is read at each fetch: a rotated token is used from then on.
    token_file.write_text("cluster-token-2\n")
    cluster_idp.bearer = "cluster-token-2"
    assert isinstance(_verify(cluster_idp, cluster_idp.token("alice"), **options), VerifiedCaller)
    assert cluster_idp.authorizations[-1] == "Bearer cluster-token-2"


def test_a_bearer_token_file_that_is_a_fifo_fails_the_fetch_without_blocking(
    cluster_idp: IdentityProvider, local_ca: LocalCA, tmp_path: Path
) -> None:
    import os

    # Read on the event loop at each fetch: a FIFO used to block the whole broker there.
    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    options = {"jwks_ca_file": str(local_ca.ca_file), "jwks_bearer_token_file": str(fifo)}
    fetches = cluster_idp.jwks_fetches
    assert _verify(cluster_idp, cluster_idp.token("alice"), **options) == "unknown_kid"
    assert cluster_idp.jwks_fetches == fetches


def test_without_the_ca_or_the_token_the_jwks_cannot_be_fetched(
    cluster_idp: IdentityProvider, local_ca: LocalCA, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("cluster-token-1")
    untrusted = _verify(
        cluster_idp, cluster_idp.token("alice"), jwks_bearer_token_file=str(token_file)
    )
    assert untrusted == "unknown_kid"
    fetches = cluster_idp.jwks_fetches
    no_token = _verify(cluster_idp, cluster_idp.token("alice"), jwks_ca_file=str(local_ca.ca_file))
    assert no_token == "unknown_kid"
    assert cluster_idp.jwks_fetches > fetches
    assert cluster_idp.authorizations[-1] is None


def test_the_bearer_token_goes_only_to_the_configured_origin(
    idp: IdentityProvider, tmp_path: Path
) -> None:
    from broker.config import ConfigError, parse_settings

    token_file = tmp_path / "token"
    token_file.write_text("secret-token")
    with pytest.raises(ConfigError) as error:
        parse_settings(
            f"""
[upstream]
api_key_env = "K"

[[issuers]]
id = "plain"
issuer = "{idp.issuer}"
audience = "x"
audiences = ["{AUDIENCE}"]
jwks_bearer_token_file = "{token_file}"
"""
        )
    assert "only over https" in str(error.value)


def test_a_verified_token_is_remembered_until_its_exp(idp: IdentityProvider) -> None:
    async def run() -> tuple[object, object, object]:
        async with aiohttp.ClientSession() as session:
            verifier = caller_verifier(idp, session, leeway_seconds=0)
            token = idp.token("alice", exp=int(time.time()) + 2)
            first = await verifier.verify(token)
            fetches = idp.jwks_fetches
            second = await verifier.verify(token)
            assert idp.jwks_fetches == fetches
            await asyncio.sleep(2.2)
            try:
                third: object = await verifier.verify(token)
            except InvalidCallerToken as refused:
                third = refused.reason
            return first, second, third

    first, second, third = asyncio.run(run())
    assert isinstance(first, VerifiedCaller)
    assert second is first
    assert third == "expired"


def _verified(subject: str, expires_at: float) -> VerifiedCaller:
    settings = msgspec.convert(
        {"id": "idp", "issuer": "https://idp.example", "audience": "x", "audiences": [AUDIENCE]},
        IssuerSettings,
    )
    return VerifiedCaller(settings, subject, {}, expires_at=expires_at)


def test_verified_tokens_are_kept_until_their_exp_and_the_oldest_go_first() -> None:
    tokens = VerifiedTokens(max_entries=3)
    later = time.time() + 60
    for n in range(3):
        tokens.keep(b"%d" % n, _verified(f"s{n}", later))
    assert tokens.get(b"0") is not None
    tokens.keep(b"3", _verified("s3", later))  # full: the oldest kept goes, looked up or not
    assert tokens.get(b"0") is None
    assert [getattr(tokens.get(b"%d" % n), "subject", None) for n in (1, 2, 3)] == [
        "s1",
        "s2",
        "s3",
    ]
    assert len(tokens) == 3
    tokens.keep(b"1", _verified("s1", later))  # kept again: now the newest
    tokens.keep(b"4", _verified("s4", later))
    assert tokens.get(b"2") is None
    assert tokens.get(b"1") is not None


def test_a_verified_token_past_its_exp_is_gone_at_once() -> None:
    tokens = VerifiedTokens(max_entries=10)
    tokens.keep(b"old", _verified("s", time.time() - 0.001))
    tokens.keep(b"new", _verified("s", time.time() + 60))
    assert tokens.get(b"old") is None
    assert len(tokens) == 1  # dropped, not just hidden
    assert tokens.get(b"new") is not None


def _remembered_across_a_refetch(idp: IdentityProvider, *, rotate: bool) -> list[object]:
    """What a remembered token gets: fresh, then at the first use past the key set's
    lifetime (which starts a refetch), then after that refetch."""

    async def run() -> list[object]:
        async with aiohttp.ClientSession() as session:
            verifier = caller_verifier(
                idp, session, jwks_cache_seconds=1, jwks_min_refresh_seconds=0
            )
            token = idp.token("alice")
            first = await verifier.verify(token)
            if rotate:
                idp.rotate()
            seen: list[object] = [verifier.known(token) is first]
            await asyncio.sleep(1.1)
            fetches = idp.jwks_fetches
            seen.append(verifier.known(token) is first)  # answered now; refetch started
            for _ in range(100):
                if idp.jwks_fetches > fetches:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.05)
            seen.append(verifier.known(token) is first)
            try:
                again: object = await verifier.verify(token)
                seen.append(again is first)
            except InvalidCallerToken as refused:
                seen.append(refused.reason)
            return seen

    return asyncio.run(run())


def test_a_remembered_token_is_refused_once_its_key_is_withdrawn(idp: IdentityProvider) -> None:
    # A rotation after a compromise: tokens the withdrawn key verified (a forger's, with
    # an exp of his choosing) were accepted from memory until their exp.
    try:
        assert _remembered_across_a_refetch(idp, rotate=True) == [True, True, False, "unknown_kid"]
    finally:
        idp.rotate()  # the module's provider signs with a key of its own again


def test_a_refetch_that_publishes_the_same_key_keeps_what_it_verified(
    idp: IdentityProvider,
) -> None:
    assert _remembered_across_a_refetch(idp, rotate=False) == [True, True, True, True]
