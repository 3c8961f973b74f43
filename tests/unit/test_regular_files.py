"""The bounded reader for settings and secret files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from broker.regular_files import FileRefused, read_small_file


def test_a_file_up_to_the_limit_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 3_000_000)
    assert read_small_file(path, 3_000_000) == b"x" * 3_000_000
    with pytest.raises(FileRefused, match="is larger than 2999999 bytes"):
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
    with pytest.raises(FileRefused, match="is not a regular file"):
        read_small_file(path, 1024)


def test_a_missing_file_is_an_ordinary_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_small_file(tmp_path / "missing", 10)


def test_open_regular_reads_a_regular_file_and_refuses_a_fifo(tmp_path: Path) -> None:
    from broker.regular_files import open_regular

    path = tmp_path / "lines"
    path.write_bytes(b"a\nb\n")
    with open_regular(path) as handle:
        assert handle.readline() == b"a\n"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(FileRefused, match="is not a regular file"):
        open_regular(fifo)
