"""A test identity provider on loopback: OpenID discovery, a JWKS, keys it can rotate, a switch
to take its JWKS down, and a ``/token`` endpoint a browser page can call. Also a tiny server
for the browser test's page, so the same page can be served from several origins."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import RSAAlgorithm

BROKER_AUDIENCE = "mka1-token-broker"


@dataclass
class SigningKey:
    kid: str
    private: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )

    def jwk(self) -> dict[str, Any]:
        public: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self.private.public_key()))
        return public | {"kid": self.kid, "alg": "RS256", "use": "sig"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class IdentityProvider:
    """Plain http by default; with ``tls`` (a server context) https, and with ``bearer`` set
    its JWKS answers 401 unless that exact bearer token comes with the request."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.keys = [SigningKey(kid=uuid.uuid4().hex)]
        self.jwks_down = False
        self.jwks_fetches = 0
        self.bearer: str | None = None
        self.authorizations: list[str | None] = []
        # Published beside the signing keys (hostile or foreign entries for tests).
        self.extra_jwks: list[dict[str, Any]] = []
        # Send the JWKS in two writes, a pause apart: two TCP segments.
        self.split_jwks = False
        # When set, served as the JWKS document instead (bytes no JSON encoder would make).
        self.raw_jwks: bytes | None = None
        # When set, the jwks_uri its discovery document names instead of its own JWKS.
        self.jwks_uri: str | None = None
        self._server = _Server(("127.0.0.1", 0), self._handler())
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self.issuer = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def key(self) -> SigningKey:
        return self.keys[-1]

    def rotate(self) -> SigningKey:
        """A new key signs from now on; the JWKS serves only the new one."""
        self.keys = [SigningKey(kid=uuid.uuid4().hex)]
        return self.key

    def token(self, subject: str = "alice", **overrides: Any) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": BROKER_AUDIENCE,
            "iat": now,
            "nbf": now,
            "exp": now + 300,
        }
        headers = {"kid": overrides.pop("kid", self.key.kid)}
        claims |= overrides
        claims = {name: value for name, value in claims.items() if value is not None}
        return jwt.encode(claims, self.key.private, algorithm="RS256", headers=headers)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _json(self, status: int, body: Any, *, split: bool = False) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                # The browser page, on another origin, asks for its caller token here.
                self.send_header("Access-Control-Allow-Origin", "*")
                self.end_headers()
                if split:
                    self.wfile.write(data[:10])
                    self.wfile.flush()
                    time.sleep(0.1)
                    data = data[10:]
                self.wfile.write(data)

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path == "/.well-known/openid-configuration":
                    jwks_uri = idp.jwks_uri or idp.issuer + "/jwks.json"
                    self._json(200, {"issuer": idp.issuer, "jwks_uri": jwks_uri})
                elif url.path == "/jwks.json":
                    idp.jwks_fetches += 1
                    authorization = self.headers.get("Authorization")
                    idp.authorizations.append(authorization)
                    if idp.bearer is not None and authorization != f"Bearer {idp.bearer}":
                        self._json(401, {"error": "unauthorized"})
                    elif idp.jwks_down:
                        self._json(503, {"error": "down"})
                    elif idp.raw_jwks is not None:
                        self._json(200, idp.raw_jwks)
                    else:
                        keys = [key.jwk() for key in idp.keys] + idp.extra_jwks
                        self._json(200, {"keys": keys}, split=idp.split_jwks)
                elif url.path == "/token":
                    user = parse_qs(url.query).get("user", ["alice"])[0]
                    self._json(200, {"token": idp.token(user)})
                else:
                    self._json(404, {"error": "not found"})

        return Handler


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>session token</title></head>
<body>
<p id="out">pending</p>
<script>
(async () => {
  const params = new URLSearchParams(location.search);
  const out = document.getElementById("out");
  try {
    const caller = await (await fetch(params.get("idp") + "/token?user=alice")).json();
    const reply = await fetch(params.get("broker") + "/tokens", {
      method: "POST",
      headers: {"Authorization": "Bearer " + caller.token, "Content-Type": "application/json"},
      body: JSON.stringify({audience: params.get("audience")}),
    });
    const body = await reply.json();
    out.textContent = reply.ok ? "token:" + body.token : "refused:" + body.code;
  } catch (error) {
    out.textContent = "blocked:" + error.name;
  }
})();
</script>
</body></html>
"""


class PageServer:
    """Serves the page above from its own origin."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                data = PAGE.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = _Server(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class LocalCA:
    """A certificate authority of the test's own, and a server certificate for 127.0.0.1."""

    directory: Path

    def __post_init__(self) -> None:
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker test CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        server = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca_file = self.directory / "ca.crt"
        self.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self._cert = self.directory / "server.crt"
        self._cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
        self._key = self.directory / "server.key"
        self._key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self._cert, self._key)
        return context
