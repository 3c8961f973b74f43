"""Servers for the tests, forked from a process that has already imported the broker.

Every broker the suite starts used to be a new interpreter (``python -m broker serve``),
and more than half of what it cost was importing: a start and a stop took 0.8 s of CPU
and 0.58 s to the first answer, forked from a process that had imported the broker
0.37 s and 0.16 s (medians of 8 of each). The suite starts about ninety on two cores, and
runs about seventy-five ``broker audit`` commands.

``python -m tests.support.forkserver FD`` is that process, one per pytest worker: it
imports what ``broker serve`` imports, then waits on the socket ``FD`` for requests, each
an argument list, an environment, a working directory and the descriptor for the server's
output. For each it forks a child, which takes that output as its stdout and stderr,
that environment and directory, closes every other descriptor, and runs ``broker`` as
``python -m broker`` does (``runpy``), so the broker's ``__main__`` runs from its first
statement and the interpreter exits as it would. The fork server reaps its children and
reports their exit statuses; ``ForkedProcess`` offers the part of ``subprocess.Popen`` the
tests use.

What differs from a new interpreter, and why it does not matter here: the interpreter's own
settings (``PYTHON*`` variables, ``-X`` options) are the fork server's, so a server asked
for with different ones is started the usual way (``can_fork``); the modules the fork
server imported are not imported again, and run their fork hooks instead
(``os.register_at_fork``: the broker's request id prefix, ``random``'s seed), as granian's
forked workers do in production.

This module imports only the standard library, so that the fork server holds nothing the
deployed broker would not (the servers' ``PYTHONPATH`` leaves out the test-only packages).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import runpy
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from tests.support.signal_masks import signal_masks

# What ``broker serve`` and ``broker sim`` import before their first answer.
PRELOADED = ("broker.cli", "broker.app", "broker.server", "broker.runtime", "broker.sim.app")
_MAX_MESSAGE = 1 << 20


def _interpreter_settings(environment: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name, value in environment.items() if name.startswith("PYTHON")}


class ForkedProcess:
    """A server forked by the fork server: ``pid``, ``stdout``, ``returncode``, ``poll``,
    ``wait``, ``send_signal``, ``terminate`` and ``kill`` as ``subprocess.Popen`` has them."""

    def __init__(
        self, server: ForkServer, pid: int, stdout: IO[bytes], stderr: IO[bytes] | None = None
    ) -> None:
        self._server = server
        self.pid = pid
        self.stdout = stdout
        self.stderr = stderr
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._server.status(self.pid, timeout=0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self._server.status(self.pid, timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired(["broker", str(self.pid)], timeout or 0)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            # ProcessLookupError: it has exited since, and its status is on its way.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkServer:
    """The test side: starts the fork server, asks it for servers, keeps their statuses."""

    def __init__(self, environment: Mapping[str, str]) -> None:
        self._settings = _interpreter_settings(environment)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._socket = ours
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.forkserver", str(theirs.fileno())],
            env=dict(environment),
            # Nothing of the pytest worker's: its stdio may be its channel to pytest.
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            pass_fds=[theirs.fileno()],
        )
        theirs.close()
        self._asking = threading.Lock()
        self._changed = threading.Condition()
        self._started: list[int] = []
        self._statuses: dict[int, int] = {}
        self._gone = False
        self._listener = threading.Thread(target=self._listen, daemon=True)
        self._listener.start()

    def can_fork(self, environment: Mapping[str, str]) -> bool:
        return not self._gone and _interpreter_settings(environment) == self._settings

    def spawn(
        self,
        args: list[str],
        environment: Mapping[str, str],
        cwd: Path,
        *,
        stderr_apart: bool = False,
    ) -> ForkedProcess:
        """``python ARGS`` (``args`` starts with ``-m``), forked; its stderr goes with its
        stdout unless ``stderr_apart``."""
        pipes = [os.pipe() for _ in range(2 if stderr_apart else 1)]
        try:
            request = json.dumps(
                {
                    "args": args,
                    "env": dict(environment),
                    "cwd": str(cwd),
                    "signals": _signals_here(),
                }
            )
            with self._asking, self._changed:
                socket.send_fds(self._socket, [request.encode()], [w for _, w in pipes])
                while not self._started and not self._gone:
                    self._changed.wait()
                if not self._started:
                    raise RuntimeError("the fork server has exited")
                pid = self._started.pop()
        except BaseException:
            for read, _ in pipes:
                os.close(read)
            raise
        finally:
            for _, write in pipes:
                os.close(write)
        outputs = [os.fdopen(read, "rb") for read, _ in pipes]
        return ForkedProcess(self, pid, *outputs)

    def run(
        self, args: list[str], environment: Mapping[str, str], cwd: Path, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        """As ``subprocess.run(..., capture_output=True, text=True, timeout=...)``."""
        process = self.spawn(args, environment, cwd, stderr_apart=True)
        errors = process.stderr
        assert errors is not None
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            process.kill()

        timer = threading.Timer(timeout, expire)
        timer.start()
        said: list[bytes] = []
        reader = threading.Thread(target=lambda: said.append(errors.read()))
        reader.start()
        try:
            output = process.stdout.read()
            reader.join()
            status = process.wait()
        finally:
            timer.cancel()
            process.stdout.close()
            errors.close()
        if expired.is_set():
            raise subprocess.TimeoutExpired(args, timeout, output, said[0])
        return subprocess.CompletedProcess(args, status, output.decode(), said[0].decode())

    def status(self, pid: int, timeout: float | None) -> int | None:
        """The exit status of ``pid`` once it is known, within ``timeout``; else None."""
        with self._changed:
            self._changed.wait_for(lambda: pid in self._statuses or self._gone, timeout)
            if pid not in self._statuses and self._gone:
                raise RuntimeError(f"the fork server has exited; the status of {pid} is lost")
            return self._statuses.get(pid)

    def _listen(self) -> None:
        while message := self._socket.recv(_MAX_MESSAGE):
            report = json.loads(message)
            with self._changed:
                if "started" in report:
                    self._started.append(report["started"])
                else:
                    self._statuses[report["exited"]] = report["status"]
                self._changed.notify_all()
        with self._changed:
            self._gone = True
            self._changed.notify_all()

    def close(self) -> None:
        # shutdown, not close: the listening thread's recv holds the socket open.
        self._socket.shutdown(socket.SHUT_RDWR)
        self._process.wait(timeout=15)
        self._listener.join(timeout=5)
        self._socket.close()


def _signals_here() -> dict[str, Any]:
    """What a process started from this thread now would inherit: the signals this process
    ignores (an ignored signal stays ignored across exec) and this thread blocks. Both
    change during the session (a test that runs the app in-process leaves SIGHUP ignored),
    so the fork server's own, from when it started, would not do."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    return {"ignored": signal_masks()["SigIgn"], "blocked": sorted(map(int, blocked))}


def _signals_as_after_exec(signals: dict[str, Any]) -> None:
    """In the child: the dispositions a new interpreter started by the test would have.
    exec keeps what is ignored and resets what is caught; Popen first resets SIGPIPE and
    SIGXFSZ; the interpreter then ignores those two and catches SIGINT, unless ignored."""
    ignored: int = signals["ignored"]
    for signum in signal.valid_signals():
        if signum in (signal.SIGKILL, signal.SIGSTOP):
            continue
        with contextlib.suppress(OSError, ValueError):  # the C library's own
            signal.signal(signum, signal.SIG_IGN if ignored >> (signum - 1) & 1 else signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if not ignored >> (signal.SIGINT - 1) & 1:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, signals["blocked"])


def _serve(control: socket.socket) -> dict[str, Any] | None:
    """Fork a child per request and report each one's end; in a child, return its request.
    Returns None when the tests have gone (their end of the socket closed)."""
    children: dict[int, int] = {}  # pidfd -> pid
    while True:
        waited: list[socket.socket | int] = [control, *children]
        ready, _, _ = select.select(waited, [], [])
        for pidfd in (fd for fd in ready if fd in children):
            pid = children.pop(pidfd)
            os.close(pidfd)
            _, status = os.waitpid(pid, 0)
            report = {"exited": pid, "status": os.waitstatus_to_exitcode(status)}
            if not _report(control, report):
                return None
        if control not in ready:
            continue
        message, fds, _, _ = socket.recv_fds(control, _MAX_MESSAGE, 2)
        if not message:
            return None
        pid = os.fork()
        if pid == 0:
            os.dup2(fds[0], 1)
            os.dup2(fds[-1], 2)
            for fd in fds:
                os.close(fd)
            # Closed through its object, which would otherwise close its number again
            # when collected, by then perhaps one of the server's own descriptors.
            control.close()
            request: dict[str, Any] = json.loads(message)
            return request
        for fd in fds:
            os.close(fd)
        children[os.pidfd_open(pid)] = pid
        if not _report(control, {"started": pid}):
            return None


def _report(control: socket.socket, report: dict[str, int]) -> bool:
    """Whether the tests are still there to be told."""
    try:
        control.send(json.dumps(report).encode())
    except OSError:
        return False
    return True


def _become(request: dict[str, Any]) -> None:
    """In the child: the server asked for, as ``python ARGS`` would run it."""
    for name in os.listdir("/proc/self/fd"):
        if int(name) > 2:
            with contextlib.suppress(OSError):  # the listing's own descriptor
                os.close(int(name))
    _signals_as_after_exec(request["signals"])
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    args: list[str] = request["args"]
    if args[:1] != ["-m"] or len(args) < 2:
        raise SystemExit(f"fork server: only -m MODULE is supported, not {args!r}")
    sys.argv = [args[1], *args[2:]]
    runpy.run_module(args[1], run_name="__main__", alter_sys=True)


def main() -> None:
    control = socket.socket(fileno=int(sys.argv[1]))
    # A Ctrl-C reaches the whole process group: the servers stop, and this process stays
    # to report how, until the tests have gone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for module in PRELOADED:
        importlib.import_module(module)
    # What the children share stays shared: the collector need not visit (and so copy) it.
    gc.collect()
    gc.freeze()
    request = _serve(control)
    if request is None:
        return
    _become(request)


_shared: ForkServer | None = None
_creating = threading.Lock()


def shared(environment: Mapping[str, str]) -> ForkServer | None:
    """This pytest worker's fork server, started on first use, if it can start a server
    with ``environment``; None if not, or if ``TESTS_EXEC_SERVERS=1`` asks for new
    interpreters throughout (to compare, or to rule the fork server out)."""
    global _shared
    if os.environ.get("TESTS_EXEC_SERVERS") == "1":
        return None
    with _creating:
        if _shared is None:
            _shared = ForkServer(environment)
    return _shared if _shared.can_fork(environment) else None


def close_shared() -> None:
    global _shared
    with _creating:
        if _shared is not None:
            _shared.close()
            _shared = None


if __name__ == "__main__":
    main()
