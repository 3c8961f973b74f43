"""Reading the operator's small files (settings, secrets) with a bound.

``Path.read_text`` reads whatever the path opens: ``/dev/zero`` or a runaway file until
memory runs out, a FIFO that no one writes blocks the process at start or at a reload. These
files are a few kilobytes; anything that is not a regular file of sensible size is an error
that names the problem, before any of it is read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

# Settings with thousands of clients stay well below this.
SETTINGS_MAX_BYTES = 16 * 1024 * 1024
# A key, a URL, a PEM: a few hundred bytes.
SECRET_MAX_BYTES = 64 * 1024


class NotASmallFile(OSError):
    """The path is not a regular file, or it is larger than allowed (``strerror`` says)."""


def read_small_file(path: str | os.PathLike[str], limit: int) -> bytes:
    """The whole content of the regular file at ``path``, at most ``limit`` bytes."""
    # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below).
    fd = os.open(Path(path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):
            raise NotASmallFile(0, "is not a regular file")
        chunks: list[bytes] = []
        size = 0
        while chunk := os.read(fd, min(limit + 1 - size, 1024 * 1024)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise NotASmallFile(0, f"is larger than {limit} bytes")
        return b"".join(chunks)
    finally:
        os.close(fd)
