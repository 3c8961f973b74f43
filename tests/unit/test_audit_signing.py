"""Checkpoint keys: what the auditor's public key path may be."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from broker.audit.signing import SigningKeyError, generate_key_pair, load_public_key


def test_a_public_key_loads(tmp_path: Path) -> None:
    _, public = generate_key_pair(tmp_path / "keys")
    load_public_key(public)


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
