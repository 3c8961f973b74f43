"""Checkpoint keys: what the auditor's public key path may be."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from broker.audit.signing import (
    SigningKeyError,
    generate_key_pair,
    load_private_key,
    load_public_key,
)


def test_a_generated_pair_loads_and_what_the_private_key_signs_the_public_key_verifies(
    tmp_path: Path,
) -> None:
    private, public = generate_key_pair(tmp_path / "keys")
    signer = load_private_key(private.read_bytes())
    verifier = load_public_key(public)
    assert verifier.key_id == signer.key_id
    signature = signer.sign(b"head")
    assert verifier.verify(b"head", signature)
    assert not verifier.verify(b"head.", signature)
    # Unpadded base64url, as the checkpoints carry it: a mangled one is False, not an error.
    assert not verifier.verify(b"head", signature[:-2])
    assert not verifier.verify(b"head", "!" + signature[1:])


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_public_key_path_that_is_not_a_regular_file_is_refused_unread(
    tmp_path: Path, kind: str
) -> None:
    path = tmp_path / "key.pub" if kind == "fifo" else Path("/dev/zero")
    if kind == "fifo":
        os.mkfifo(path)
    # `broker audit verify --public-key /dev/zero` read until memory ran out; a FIFO hung.
    with pytest.raises(SigningKeyError, match="is not a regular file"):
        load_public_key(path)
