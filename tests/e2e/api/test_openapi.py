"""The committed OpenAPI document is what the app serves and what the code generates."""

from __future__ import annotations

import json

from broker.api.openapi import render_openapi
from tests.conftest import Broker
from tests.support import loopback
from tests.support.paths import REPOSITORY

COMMITTED = REPOSITORY / "openapi" / "openapi.json"


def test_committed_document_has_not_drifted() -> None:
    assert COMMITTED.read_text() == render_openapi(), (
        "openapi/openapi.json is stale: run `make openapi` and commit it"
    )


def test_served_document_matches_and_describes_the_contract(broker: Broker) -> None:
    served = loopback.get(broker.url + "/openapi.json").json()
    assert served == json.loads(COMMITTED.read_text())
    operation = served["paths"]["/tokens"]["post"]
    assert operation["security"] == [{"clientKey": []}]
    assert served["components"]["securitySchemes"]["clientKey"]["scheme"] == "bearer"
    schema = served["components"]["schemas"]["TokenRequest"]
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["audience"]
    expires = schema["properties"]["expiresIn"]
    assert (expires["type"], expires["minimum"], expires["maximum"]) == ("integer", 300, 2592000)
    for status in ("400", "401", "403", "413", "415", "502", "503", "504"):
        content = operation["responses"][status]["content"]
        assert "application/problem+json" in content
    assert "TokenResponse" in served["components"]["schemas"]
