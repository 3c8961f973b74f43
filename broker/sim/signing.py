"""The simulator's signing key: a fresh P-256 key per process, published as a JWKS."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm


class SigningKey:
    algorithm = "ES256"

    def __init__(self) -> None:
        self._private = ec.generate_private_key(ec.SECP256R1())
        public_jwk: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(self._private.public_key()))
        # RFC 7638 thumbprint: the members in lexicographic order, no whitespace.
        canonical = json.dumps(
            {name: public_jwk[name] for name in ("crv", "kty", "x", "y")},
            separators=(",", ":"),
            sort_keys=True,
        ).encode()
        self.kid = (
            base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()
        )
        self.public_jwk = public_jwk | {"kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(
            claims, self._private, algorithm=self.algorithm, headers={"kid": self.kid}
        )

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk]}

    def verify(self, token: str) -> dict[str, Any]:
        """The claims of a token this key signed that has not expired; raises
        jwt.InvalidTokenError for anything else."""
        claims: dict[str, Any] = jwt.decode(
            token,
            self._private.public_key(),
            algorithms=[self.algorithm],
            options={"verify_aud": False, "require": ["exp", "sub"]},
        )
        return claims
