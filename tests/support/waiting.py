"""Ports and waits shared by the tests that start real servers."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path


def listening(pid: int, port: int) -> bool:
    """Whether process ``pid``, or one under it, holds the socket listening on ``port``. A
    port from ``free_port`` can be taken by another server before this one binds it; that
    server's answer must not pass for this one's (seen once: a test of the retry policy got
    another app's 404)."""
    owned = set()
    for process in _descendants(pid):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{process}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{process}/fd/{fd}")
                    if link.startswith("socket:["):
                        owned.add(link[len("socket:[") : -1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port and inode in owned:
                    return True
    return False


def _descendants(pid: int) -> list[int]:
    found = [pid]
    for process in found:  # grows as it goes
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{process}/task"):
                children = Path(f"/proc/{process}/task/{task}/children").read_text()
                found += [int(child) for child in children.split()]
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def eventually(check: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Return once ``check()`` holds; fail the test if it does not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)
