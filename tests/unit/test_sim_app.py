"""The simulator's fault control route in-process: a fault it cannot apply is a 400 that
says why, and the exchange after it is unharmed (a 500 here read as the simulator's bug, and
a fault that failed only at the exchange made that exchange a 500)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from broker.sim.app import DOCUMENTED_PATH, SimulatorConfig, create_simulator
from tests.conftest import AUDIENCE
from tests.support.asgi import AsgiDriver, RawResponse

KEY = "mka1_sim_unit_key"
JSON = (b"content-type", b"application/json")


@pytest.fixture
def driver() -> Iterator[AsgiDriver]:
    running = AsgiDriver(create_simulator(SimulatorConfig(api_keys=(KEY,), faults=True)))
    running.start()
    yield running
    running.stop()


def _exchange(driver: AsgiDriver) -> RawResponse:
    body = json.dumps({"audience": AUDIENCE, "externalUserId": "u-1", "expiresIn": 300})
    headers = [JSON, (b"authorization", f"Bearer {KEY}".encode())]
    return driver.request("POST", DOCUMENTED_PATH, headers=headers, body=body.encode())


def _set_fault(driver: AsgiDriver, body: bytes) -> RawResponse:
    return driver.request("POST", "/_sim/fault", headers=[JSON], body=body)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"{", "truncated"),
        (b"\xff\xfe", "malformed"),
        (b"[]", "Expected `object`"),
        (b'{"nope": 1}', "unknown field"),
        (b'{"status": "500"}', "Expected `int"),
        (b'{"status": 42}', ">= 100"),
        (b'{"status": 600}', "<= 599"),
        (b'{"delay_seconds": -1}', ">= 0"),
        (b'{"delay_seconds": 1e9}', "<= 60"),
        (b'{"times": 0}', ">= 1"),
        (b'{"status": 200, "body_base64": "not base64!"}', "not base64"),
        (b'{"status": 302, "headers": {"Location": "x\\r\\nSet-Cookie: a=b"}}', "CR, LF or NUL"),
        (b'{"status": 429, "retry_after": "1\\r\\nX: y"}', "CR, LF or NUL"),
    ],
)
def test_a_fault_it_cannot_apply_is_a_400_that_says_why(
    driver: AsgiDriver, body: bytes, why: str
) -> None:
    refused = _set_fault(driver, body)
    assert refused.status == 400
    message: Any = json.loads(refused.body)["message"]
    assert message.startswith("Invalid fault")
    assert why in message
    # Nothing was set: the next exchange is answered as usual.
    assert _exchange(driver).status == 200


def test_a_valid_fault_is_applied_to_the_next_exchange_only(driver: AsgiDriver) -> None:
    assert _set_fault(driver, b'{"status": 503, "retry_after": "2", "times": 1}').status == 204
    faulted = _exchange(driver)
    assert (faulted.status, faulted.headers.get(b"retry-after")) == (503, b"2")
    assert _exchange(driver).status == 200
