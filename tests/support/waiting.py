"""Ports and waits shared by the tests that start real servers."""

from __future__ import annotations

import contextlib
import itertools
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


# Ports for the servers the tests start come from below the kernel's ephemeral range, a
# block of its own for each xdist worker, in turn. A port the kernel picks (bind to port 0)
# is ephemeral: between free_port() and the server's bind, the kernel could give it to an
# outgoing connection, and another worker (or the benchmark's servers) could be given it
# too. Only the tests take ports from these blocks: a worker runs one test at a time, and a
# process that test starts with the worker's environment (the benchmark's Redis) skips the
# ports its servers hold.
_BLOCK = 2000
_FIRST = 10000
_turns = itertools.count()


def _ephemeral_start() -> int:
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _worker_block() -> int | None:
    """The first port of this worker's block, or None when the blocks do not fit below the
    ephemeral range."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) if worker.isdigit() else 0
    first = _FIRST + index * _BLOCK
    return first if first + _BLOCK <= _ephemeral_start() else None


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A port nothing on the machine listens on, for a server about to start."""
    first = _worker_block()
    if first is not None:
        for _ in range(_BLOCK):
            port = first + next(_turns) % _BLOCK
            if _bindable(port):
                return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        chosen: int = sock.getsockname()[1]
        return chosen


def eventually(check: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Return once ``check()`` holds; fail the test if it does not within ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def until_stored(page: Callable[[], list[str]], expected: list[str]) -> None:
    """Return once ``page()`` (what a GET /audit/events page shows) is ``expected``. A page
    waits at most a second for its own replica's records, and a shipping process just
    started (a fresh interpreter, then the store's schema) may take longer on a loaded
    machine: that page shows what the store has so far, and a later one has the rest."""
    eventually(lambda: page() == expected, timeout=30.0, what=f"{expected} in the store")
