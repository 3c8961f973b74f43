"""Ed25519 keys for signing audit checkpoints. The public key is all an auditor needs."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from broker.regular_files import SECRET_MAX_BYTES, read_small_file


class SigningKeyError(Exception):
    """The key cannot be read; the message never holds key material."""


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class CheckpointSigner:
    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self.key_id = key_id(private_key.public_key())

    def sign(self, message: bytes) -> str:
        return base64.urlsafe_b64encode(self._private_key.sign(message)).rstrip(b"=").decode()

    def __repr__(self) -> str:
        return f"CheckpointSigner(key_id={self.key_id!r})"


class CheckpointVerifier:
    def __init__(self, public_key: Ed25519PublicKey) -> None:
        self._public_key = public_key
        self.key_id = key_id(public_key)

    def verify(self, message: bytes, signature: str) -> bool:
        try:
            raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
            self._public_key.verify(raw, message)
        except (InvalidSignature, ValueError):
            return False
        return True


def load_private_key(pem: bytes) -> CheckpointSigner:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise SigningKeyError("not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError("not an Ed25519 private key")
    return CheckpointSigner(key)


def load_public_key(path: str | os.PathLike[str]) -> CheckpointVerifier:
    try:
        key = serialization.load_pem_public_key(read_small_file(path, SECRET_MAX_BYTES))
    except OSError as exc:
        raise SigningKeyError(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, TypeError):
        raise SigningKeyError(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"{path} is not an Ed25519 public key")
    return CheckpointVerifier(key)


def _create(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` anew with exactly ``mode``: never through a symlink planted there
    (O_EXCL refuses any existing name, a dangling link included), whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            fd = -1
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    finally:
        if fd >= 0:
            os.close(fd)


def generate_key_pair(directory: Path, name: str = "audit-signing") -> tuple[Path, Path]:
    """Write ``name.key`` (PKCS#8 PEM, mode 0600) and ``name.pub`` (PEM, mode 0644) into
    ``directory``. Raises FileExistsError if either name exists, as a file or a link."""
    directory.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    for path in (private_path, public_path):
        if os.path.lexists(path):
            raise FileExistsError(path)
    _create(
        private_path,
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    try:
        _create(
            public_path,
            private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            0o644,
        )
    except OSError:
        private_path.unlink()
        raise
    return private_path, public_path
