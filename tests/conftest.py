"""Real servers on loopback: the MKA1 simulator and the broker, each its own process."""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support import forkserver, loopback
from tests.support.paths import deployed_environment
from tests.support.postgres import PostgresServer
from tests.support.redis import RedisServer
from tests.support.waiting import free_port, listening

AUDIENCE = "https://api.example.com"
OTHER_AUDIENCE = "https://files.example.com"


@dataclass
class ServerProcess:
    """A ``broker`` subprocess whose whole output is kept for inspection."""

    args: list[str]
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    ready_path: str = "/healthz"
    preexec: Callable[[], None] | None = None
    # Run this instead of ``python -m broker ARGS`` (``make dev``, say), in a process group
    # of its own so that ``interrupt`` reaches every process in it, as Ctrl-C does.
    command: list[str] | None = None
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | forkserver.ForkedProcess | None = None
    _copier: threading.Thread = field(init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict[str, str]:
        """What the server runs with: this process's environment, ``env``, and the path
        that leaves out the test-only packages (``AS_DEPLOYED``)."""
        return deployed_environment(self.env)

    def start(self, timeout: float = 60.0) -> ServerProcess:
        environment = self.environment()
        forks = None
        if self.command is None and self.preexec is None:
            forks = forkserver.shared(environment)
        if forks is not None:
            self.process = forks.spawn(
                ["-m", "broker", *self.args], environment, self.cwd or Path.cwd()
            )
        else:
            self.process = subprocess.Popen(
                self.command or [sys.executable, "-m", "broker", *self.args],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=environment,
                preexec_fn=self.preexec,
                cwd=self.cwd,
                start_new_session=self.command is not None,
            )
        # Copied by a thread, so a file-size limit set on the server does not reach its log.
        self._copier = threading.Thread(target=self._copy_output, daemon=True)
        self._copier.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.output()}")
            try:
                loopback.get(self.url + self.ready_path, timeout=0.5)
            except httpx.TransportError:
                time.sleep(0.05)
                continue
            if listening(self.process.pid, self.port):
                return self
            # Another server answered on this port: this one cannot bind it, and exits.
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not start:\n{self.output()}")

    def _copy_output(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        with self.log_path.open("ab") as log:
            for line in self.process.stdout:
                log.write(line)
                log.flush()

    def interrupt(self, timeout: float = 15) -> int | None:
        """Ctrl-C: SIGINT to the whole process group, then the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            self.process.wait(timeout=timeout)
        self._copier.join(timeout=5)
        return self.process.returncode

    def terminate(self) -> None:
        """SIGTERM, without waiting: the server shuts down while the tests go on (``stop``
        waits for it, at the latest when the session ends)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> int | None:
        """SIGTERM, then the exit status: 0, or -SIGTERM as uvicorn re-raises the signal
        once it has shut down cleanly (see ``stopped_cleanly``)."""
        return self._stop()

    def stopped_cleanly(self) -> bool:
        return self._stop() in (0, -signal.SIGTERM)

    def _stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._copier.join(timeout=5)
        return self.process.returncode

    def wait_for_output(self, text: str, timeout: float = 5.0) -> str:
        """The output once it contains ``text`` (it is copied by a thread, so it can lag);
        fails the test if ``text`` never comes."""
        deadline = time.monotonic() + timeout
        while text not in (output := self.output()):
            if time.monotonic() >= deadline:
                raise AssertionError(f"{text!r} not in the output within {timeout} s:\n{output}")
            time.sleep(0.02)
        return output

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def stop_all(servers: list[ServerProcess]) -> None:
    """SIGTERM every server at once, then wait for each: stopping dozens one after another
    cost seconds per test session."""
    for server in servers:
        if server.process is not None and server.process.poll() is None:
            server.process.send_signal(signal.SIGTERM)
    for server in servers:
        server.stop()


@dataclass
class Simulator:
    server: ServerProcess
    api_key: str

    @property
    def url(self) -> str:
        return self.server.url

    def fault(self, **fault: Any) -> None:
        loopback.post(self.url + "/_sim/fault", json=fault).raise_for_status()

    def clear(self) -> None:
        loopback.delete(self.url + "/_sim/fault").raise_for_status()
        loopback.delete(self.url + "/_sim/requests").raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = loopback.get(self.url + "/_sim/requests").json()["requests"]
        return seen

    def exchanges(self) -> int:
        count: int = loopback.get(self.url + "/_sim/requests").json()["exchanges"]
        return count


@pytest.fixture(scope="session", autouse=True)
def _fork_server() -> Iterator[None]:
    """Set up first, so torn down last: after every server it started has stopped."""
    yield
    forkserver.close_shared()


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


def new_api_key() -> str:
    return "mka1_test_" + secrets.token_urlsafe(24)


SimulatorFactory = Callable[..., Simulator]


@pytest.fixture(scope="session")
def start_simulator(artifacts: Path) -> Iterator[SimulatorFactory]:
    started: list[ServerProcess] = []

    def start(*extra_keys: str) -> Simulator:
        api_key = new_api_key()
        port = free_port()
        args = ["sim", "--port", str(port), "--api-key-env", "SIM_API_KEY", "--faults"]
        for key in extra_keys:
            args += ["--api-key", key]
        server = ServerProcess(
            args,
            port,
            artifacts / f"sim-{port}.log",
            env={"SIM_API_KEY": api_key},
            ready_path="/.well-known/jwks.json",
        ).start()
        started.append(server)
        return Simulator(server, api_key)

    yield start
    stop_all(started)


@pytest.fixture(scope="session")
def simulator(start_simulator: SimulatorFactory) -> Simulator:
    return start_simulator()


@pytest.fixture(autouse=True)
def _clean_simulator(request: pytest.FixtureRequest) -> None:
    if "simulator" in request.fixturenames:
        request.getfixturevalue("simulator").clear()


@dataclass(frozen=True)
class Client:
    id: str
    key: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.key.encode()).hexdigest()

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", **extra}


def new_client(client_id: str) -> Client:
    return Client(client_id, "bk_" + secrets.token_urlsafe(32))


CLIENT_BLOCKS: dict[str, str] = {
    "billing": f"""
audiences = ["{AUDIENCE}", "{OTHER_AUDIENCE}"]
subjects = "any"
max_expires_in = 2592000
default_expires_in = 900
permissions = ["read:responses", "write:responses", "read:files"]
""",
    "tenant-app": f"""
audiences = ["{AUDIENCE}"]
subjects = ["tenant-a:*", "admin"]
max_expires_in = 3600
""",
    "self-service": f"""
audiences = ["{AUDIENCE}"]
subjects = "self"
max_expires_in = 600
""",
    "auditor": f"""
audiences = ["{AUDIENCE}"]
subjects = "self"
roles = ["auditor"]
""",
    "uncached": f"""
audiences = ["{AUDIENCE}"]
subjects = "any"
cache = false
""",
    "admin": f"""
audiences = ["{AUDIENCE}"]
subjects = "self"
roles = ["admin"]
""",
}


# Out of the way of tests that are not about rate limits.
GENEROUS_LIMITS = """
per_caller = { rate_per_second = 100000, burst = 100000 }
per_end_user = { rate_per_second = 100000, burst = 100000 }
auth_failures = { rate_per_second = 1000, burst = 100000 }
unauthenticated_records = { rate_per_second = 1000, burst = 100000 }
"""


# The product's 2 s write deadline is about a disk that hangs; the CI host's disk stalls for
# seconds under the suite's own load (three workers, PostgreSQL, Chromium: an fsync there
# once turned a fuzzed GET /audit/events into a 503 audit_unavailable). The tests that are
# about the deadline set their own; the rest are not about disk latency.
TEST_WRITE_TIMEOUT = "write_timeout_seconds = 15.0"


def broker_config(
    upstream_url: str,
    clients: dict[str, Client],
    audit_dir: Path,
    *,
    api_key_setting: str = 'api_key_env = "TEST_MKA1_API_KEY"',
    port: int,
    signing_key: Path,
    extra_upstream: str = "",
    extra_audit: str = "",
    rate_limits: str = GENEROUS_LIMITS,
    extra_server: str = "",
) -> str:
    blocks = "".join(
        f'\n[[clients]]\nid = "{client.id}"\nkey_sha256 = "{client.sha256}"\n' + CLIENT_BLOCKS[name]
        for name, client in clients.items()
    )
    return f"""
[server]
host = "127.0.0.1"
port = {port}
{extra_server}

[upstream]
base_url = "{upstream_url}"
{api_key_setting}
{"" if "timeout_seconds" in extra_upstream else "timeout_seconds = 1.5"}
{extra_upstream}

[tokens]
default_expires_in = 3600

[audit]
dir = "{audit_dir}"
signing_key_file = "{signing_key}"
{"" if "write_timeout_seconds" in extra_audit else TEST_WRITE_TIMEOUT}
{extra_audit}

[rate_limits]
{rate_limits}
{blocks}
"""


@dataclass
class Broker:
    server: ServerProcess
    clients: dict[str, Client]
    audit_dir: Path
    config_path: Path

    def metric(self, name: str, **labels: str) -> float:
        """One sample from /metrics (0 when absent)."""
        from prometheus_client.parser import text_string_to_metric_families

        text = loopback.get(self.url + "/metrics").text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return 0.0

    @property
    def url(self) -> str:
        return self.server.url

    def settled_output(self) -> str:
        """The output once every line of the requests made so far is in: a marker request's
        access line comes after theirs (one process, one stdout)."""
        marker = f"/settled-{secrets.token_hex(6)}"
        loopback.get(self.url + marker)
        return self.server.wait_for_output(marker)

    def post_token(
        self,
        client: str | Client | None = "billing",
        body: Any = None,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        fresh: bool = False,
    ) -> httpx.Response:
        """POST /tokens; ``fresh`` asks for a new mint (``Cache-Control: no-cache``)."""
        sent: dict[str, str] = {"Content-Type": "application/json"}
        if fresh:
            sent["Cache-Control"] = "no-cache"
        if isinstance(client, str):
            sent |= self.clients[client].headers()
        elif isinstance(client, Client):
            sent |= client.headers()
        sent |= headers or {}
        if content is None:
            payload = {"audience": AUDIENCE, "externalUserId": "user_123"} if body is None else body
            return loopback.post(self.url + "/tokens", json=payload, headers=sent, timeout=10)
        return loopback.post(self.url + "/tokens", content=content, headers=sent, timeout=10)

    def audit_records(self, *, killed: bool = False) -> list[dict[str, Any]]:
        """Every record, checkpoints included, in chain order. A broker ``killed`` may have
        been stopped mid-write: the last line of a file may then be a record cut off, which
        is no record (and which ``verify --allow-crash-tail`` accepts); anywhere else, a
        line that is not a record fails the test."""
        import json

        lines: list[dict[str, Any]] = []
        for path in sorted(self.audit_dir.glob("*.jsonl")):
            text = path.read_text().splitlines()
            for number, line in enumerate(text, 1):
                if not line:
                    continue
                try:
                    lines.append(json.loads(line))
                except json.JSONDecodeError:
                    if not killed or number != len(text):
                        raise
        return lines

    def audit_lines(self, *, killed: bool = False) -> list[dict[str, Any]]:
        """The decision records, in chain order."""
        records = self.audit_records(killed=killed)
        return [record for record in records if record["type"] == "decision"]


BrokerFactory = Callable[..., Broker]


@dataclass(frozen=True)
class AuditKeys:
    private: Path
    public: Path


@pytest.fixture(scope="session")
def audit_keys(artifacts: Path) -> AuditKeys:
    from broker.audit.signing import generate_key_pair

    private, public = generate_key_pair(artifacts / "audit-keys")
    return AuditKeys(private, public)


@pytest.fixture(scope="session")
def launch_broker(
    artifacts: Path, simulator: Simulator, audit_keys: AuditKeys
) -> Iterator[BrokerFactory]:
    """Start a broker; every one started is stopped when the session ends, at the latest.
    Tests take theirs from ``start_broker`` (or ``start_module_broker``), which stop them
    as soon as they are done with them."""
    started: list[ServerProcess] = []

    def start(
        *,
        upstream_url: str | None = None,
        api_key: str | None = None,
        extra_upstream: str = "",
        extra_audit: str = "",
        audit_dir: Path | None = None,
        name: str = "broker",
        preexec: Callable[[], None] | None = None,
        api_key_setting: str | None = None,
        extra: str = "",
        rate_limits: str = GENEROUS_LIMITS,
        extra_server: str = "",
        serve_args: tuple[str, ...] = (),
    ) -> Broker:
        clients = {name: new_client(f"{name}-svc") for name in CLIENT_BLOCKS}
        port = free_port()
        directory = artifacts / f"{name}-{port}"
        directory.mkdir()
        audit = audit_dir or directory / "audit"
        config = directory / "broker.toml"
        config.write_text(
            broker_config(
                upstream_url or simulator.url,
                clients,
                audit,
                port=port,
                signing_key=audit_keys.private,
                extra_upstream=extra_upstream,
                extra_audit=extra_audit,
                rate_limits=rate_limits,
                extra_server=extra_server,
                **({"api_key_setting": api_key_setting} if api_key_setting else {}),
            )
            + extra
        )
        server = ServerProcess(
            ["serve", "--config", str(config), *serve_args],
            port,
            directory / "output.log",
            env={"TEST_MKA1_API_KEY": api_key or simulator.api_key},
            preexec=preexec,
        ).start()
        started.append(server)
        return Broker(server, clients, audit, config)

    yield start
    stop_all(started)


def _stopped_after(launch: BrokerFactory) -> Iterator[BrokerFactory]:
    """A factory whose brokers are told to stop when its fixture ends: an idle broker and
    its shipping process still cost about 6 ms of CPU a second, and the suite starts dozens
    of brokers on two cores. Not waited for: they stop while the next tests run."""
    started: list[Broker] = []

    def start(**options: Any) -> Broker:
        broker = launch(**options)
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.server.terminate()


@pytest.fixture
def start_broker(launch_broker: BrokerFactory) -> Iterator[BrokerFactory]:
    """Brokers for one test."""
    yield from _stopped_after(launch_broker)


@pytest.fixture(scope="module")
def start_module_broker(launch_broker: BrokerFactory) -> Iterator[BrokerFactory]:
    """Brokers for the tests of one module (its module-scoped fixtures)."""
    yield from _stopped_after(launch_broker)


@pytest.fixture(scope="session")
def broker(launch_broker: BrokerFactory) -> Broker:
    return launch_broker(name="shared")


class BackgroundLoad:
    """Eight threads asking for tokens for ever-new end users (or, with ``hits``, one end
    user each, so that all but the first are cache hits) until stopped or the broker goes
    away; keeps the fingerprint and request id of every token received and every other
    status."""

    def __init__(self, broker: Broker, workers: int = 8, *, hits: bool = False) -> None:
        self.received: list[str] = []
        self.request_ids: list[str] = []
        self.refused: list[int] = []
        self._hits = hits
        self._broker = broker
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(workers)
        ]

    def _run(self, worker: int) -> None:
        headers = self._broker.clients["billing"].headers()
        with httpx.Client(timeout=10) as client:
            index = 0
            while not self._stop.is_set():
                index += 1
                user = f"load{worker}" if self._hits else f"load{worker}-{index}"
                body = {"audience": AUDIENCE, "externalUserId": user}
                try:
                    response = client.post(self._broker.url + "/tokens", json=body, headers=headers)
                except httpx.TransportError:
                    return
                with self._lock:
                    if response.status_code == 200:
                        self.received.append(response.json()["tokenSha256"])
                        self.request_ids.append(response.headers["x-request-id"])
                    else:
                        self.refused.append(response.status_code)

    def __enter__(self) -> BackgroundLoad:
        for thread in self._threads:
            thread.start()
        return self

    def wait_for(self, tokens: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < tokens and time.monotonic() < deadline:
            time.sleep(0.01)

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for this test session (worker), on a free port."""
    with PostgresServer.running() as server:
        yield server


def store_config(url_file: Path, *, mode: str = "async", timeout: float = 2.0) -> str:
    """The [audit.store] table for a PostgreSQL store whose URL is in ``url_file``."""
    return (
        f'\n[audit.store]\nbackend = "postgresql"\nurl_file = "{url_file}"\n'
        f'mode = "{mode}"\ntimeout_seconds = {timeout}\n'
    )


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real Redis server for this test session (worker), on a free port."""
    with RedisServer.running() as server:
        yield server


def shared_state_config(directory: Path, url: str, *, replicas: int = 2, prefix: str) -> str:
    """The [shared_state] table: URL and encryption key in files (mode 0600) in ``directory``."""
    import base64

    directory.mkdir(parents=True, exist_ok=True)
    url_file, key_file = directory / "shared-url", directory / "shared-key"
    if not key_file.exists():
        key_file.write_text(base64.b64encode(secrets.token_bytes(32)).decode() + "\n")
    url_file.write_text(url + "\n")
    for path in (url_file, key_file):
        path.chmod(0o600)
    return (
        f'\n[shared_state]\nurl_file = "{url_file}"\nencryption_key_file = "{key_file}"\n'
        f'replicas = {replicas}\nkey_prefix = "{prefix}"\ntimeout_ms = 500\n'
        "revocation_refresh_seconds = 0.2\n"
    )
