"""The bounded reader for settings and secret files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from broker.small_files import NotASmallFile, read_small_file


def test_a_file_up_to_the_limit_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 3_000_000)
    assert read_small_file(path, 3_000_000) == b"x" * 3_000_000
    with pytest.raises(NotASmallFile, match="is larger than 2999999 bytes"):
        read_small_file(path, 2_999_999)


def test_an_empty_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.touch()
    assert read_small_file(path, 10) == b""


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_what_is_not_a_regular_file_is_refused_unread(tmp_path: Path, kind: str) -> None:
    path = {"fifo": tmp_path / "p", "directory": tmp_path, "device": Path("/dev/zero")}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    with pytest.raises(NotASmallFile, match="is not a regular file"):
        read_small_file(path, 1024)


def test_a_missing_file_is_an_ordinary_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_small_file(tmp_path / "missing", 10)
