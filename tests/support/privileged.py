"""A broker app in-process with a reader, an auditor and an admin client, for the
privileged routes' tests (``/audit/events``, ``/admin/revocations``)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from broker.app import create_served
from broker.audit.ship_supervisor import ShipperProcess
from broker.config import parse_settings
from broker.runtime import Runtime
from tests.conftest import AUDIENCE
from tests.support.asgi import AsgiDriver
from tests.support.waiting import free_port

READER_KEY = "bk_reader_" + "r" * 32
AUDITOR_KEY = "bk_auditor_" + "a" * 32
ADMIN_KEY = "bk_admin_" + "d" * 32


def bearer(key: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {key}".encode())]


def privileged_client(name: str, key: str, roles: str) -> str:
    return f"""
[[clients]]
id = "{name}"
key_sha256 = "{hashlib.sha256(key.encode()).hexdigest()}"
audiences = ["{AUDIENCE}"]
subjects = "any"
roles = {roles}
"""


class Guarded:
    def __init__(
        self,
        directory: Path,
        per_caller: str = "{ rate_per_second = 1000, burst = 1000 }",
        *,
        extra: str = "",
    ) -> None:
        os.environ["PRIVILEGED_MKA1_KEY"] = "mka1_privileged_key"
        document = f"""
[upstream]
base_url = "http://127.0.0.1:{free_port()}"
api_key_env = "PRIVILEGED_MKA1_KEY"

[audit]
dir = "{directory}"
fsync = false

[rate_limits]
per_caller = {per_caller}
auth_failures = {{ rate_per_second = 0.01, burst = 8 }}
unauthenticated_records = {{ rate_per_second = 0.01, burst = 3 }}
{privileged_client("reader-svc", READER_KEY, "[]")}
{privileged_client("auditor-svc", AUDITOR_KEY, '["auditor"]')}
{privileged_client("admin-svc", ADMIN_KEY, '["admin"]')}
{extra}
"""
        served = create_served(parse_settings(document))
        self.runtime: Runtime = served.runtime
        self.driver = AsgiDriver(served.app)
        self.directory = directory

    def get(self, path: str, headers: list[tuple[bytes, bytes]] | None = None) -> int:
        return self.driver.request("GET", path, headers=headers).status

    @contextlib.contextmanager
    def shipping_stopped(self) -> Iterator[None]:
        """The shipping process frozen (SIGSTOP) for the block: the audit store lags."""
        shipper = self.runtime.shipper
        assert isinstance(shipper, ShipperProcess)
        stopped = shipper.pid
        assert stopped is not None
        os.kill(stopped, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(stopped, signal.SIGCONT)

    def revoke(self, body: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """POST /admin/revocations as the admin: the status and the answer's JSON."""
        response = self.driver.request(
            "POST",
            "/admin/revocations",
            headers=[*bearer(ADMIN_KEY), (b"content-type", b"application/json")],
            body=json.dumps(body).encode(),
        )
        answer: dict[str, Any] = json.loads(response.body)
        return response.status, answer

    def records(self, kind: str) -> list[dict[str, Any]]:
        found = []
        for path in sorted(self.directory.glob("audit-*.jsonl")):
            for line in path.read_text().splitlines():
                record = json.loads(line)
                if record["type"] == kind:
                    found.append(record)
        return found

    def refusals(self) -> list[dict[str, Any]]:
        return [record for record in self.records("decision") if "route" in record]
