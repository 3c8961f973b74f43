"""A network that can be cut: a namespace of its own joined to this one by a veth pair, and
a forwarder on this side to a loopback server. A client run in the namespace reaches the
server through the veth; ``cut`` takes this side's end down, so that every packet is lost
without a reset, as in a partition or with a server host that died (a loopback forwarder
alone cannot show that: its kernel acknowledges everything).

Needs root and iproute2's ``ip`` (the CI machine has both).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


@dataclass
class Partition:
    namespace: str
    link: str
    address: str
    port: int
    _listener: socket.socket
    _sockets: list[socket.socket] = field(default_factory=list)

    def cut(self) -> None:
        _ip("link", "set", self.link, "down")

    def heal(self) -> None:
        _ip("link", "set", self.link, "up")

    def run(self, *argv: str, **options: object) -> subprocess.Popen[str]:
        """Start ``argv`` inside the namespace (text streams; ``options`` as Popen's)."""
        return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
            ["ip", "netns", "exec", self.namespace, *argv], text=True, **options
        )

    def _forward(self, target_port: int) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(("127.0.0.1", target_port))
            self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(source, sink), daemon=True).start()


@contextlib.contextmanager
def partitionable(target_port: int) -> Iterator[Partition]:
    """A path to ``127.0.0.1:target_port`` from a namespace of its own: connect there to
    ``partition.address:partition.port``."""
    if shutil.which("ip") is None:
        raise RuntimeError("iproute2's ip is needed for the partition tests")
    suffix = secrets.token_hex(3)
    namespace, here, there = f"part-{suffix}", f"vp{suffix}a", f"vp{suffix}b"
    # A /30 of its own in 10.200.0.0/16, so that tests in parallel do not collide.
    block = secrets.randbelow(16384) * 4
    near = f"10.200.{block // 256}.{block % 256 + 1}"
    far = f"10.200.{block // 256}.{block % 256 + 2}"
    _ip("netns", "add", namespace)
    try:
        _ip("link", "add", here, "type", "veth", "peer", "name", there)
        _ip("link", "set", there, "netns", namespace)
        _ip("addr", "add", f"{near}/30", "dev", here)
        _ip("link", "set", here, "up")
        _ip("netns", "exec", namespace, "ip", "addr", "add", f"{far}/30", "dev", there)
        _ip("netns", "exec", namespace, "ip", "link", "set", there, "up")
        listener = socket.socket()
        listener.bind((near, 0))
        listener.listen()
        partition = Partition(namespace, here, near, listener.getsockname()[1], listener)
        threading.Thread(target=partition._forward, args=(target_port,), daemon=True).start()
        try:
            yield partition
        finally:
            listener.close()
            for opened in partition._sockets:
                opened.close()
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", here)
        _ip("netns", "del", namespace)
