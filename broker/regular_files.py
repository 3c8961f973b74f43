"""Opening files the broker does not control (settings, secrets, keys, audit files) as
regular files only, and reading the small ones with a bound.

``Path.read_text`` reads whatever the path opens: ``/dev/zero`` or a runaway file until
memory runs out, and a FIFO that no one writes blocks the reader (the process at start, a
reload, the event loop fetching a JWKS, an auditor's ``verify``). Anything that is not a
regular file, or a small file grown past its bound, is an error that says so, before any of
it is read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

# Settings with thousands of clients stay well below this.
SETTINGS_MAX_BYTES = 16 * 1024 * 1024
# A key, a URL, a PEM: a few hundred bytes.
SECRET_MAX_BYTES = 64 * 1024


class FileRefused(OSError):
    """Not a regular file, or larger than allowed (``strerror`` says which)."""


def _open_regular_fd(path: str | os.PathLike[str]) -> int:
    # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below); on a
    # regular file it changes nothing.
    fd = os.open(Path(path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise FileRefused(0, "is not a regular file")
    return fd


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """The regular file at ``path``, open for reading in binary (FileRefused if it is a
    FIFO, a device or a directory)."""
    return os.fdopen(_open_regular_fd(path), "rb")


def read_small_file(path: str | os.PathLike[str], limit: int) -> bytes:
    """The whole content of the regular file at ``path``, at most ``limit`` bytes."""
    fd = _open_regular_fd(path)
    try:
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, min(limit + 1 - size, 1024 * 1024)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise FileRefused(0, f"is larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_secret_text(path: str | os.PathLike[str]) -> str:
    """A secret file's text (a key, a URL), stripped: UTF-8, at most SECRET_MAX_BYTES."""
    return read_small_file(path, SECRET_MAX_BYTES).decode("utf-8").strip()
