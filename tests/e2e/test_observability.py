"""No secret in any output: a full end-to-end run, every line the servers printed, checked."""

from __future__ import annotations

import json

from tests.conftest import AUDIENCE, BrokerFactory, Simulator
from tests.support import loopback


def test_no_key_or_token_appears_in_any_output(
    start_broker: BrokerFactory, simulator: Simulator
) -> None:
    broker = start_broker(name="no-secrets")
    tokens: list[str] = []
    for body in (
        {"audience": AUDIENCE, "externalUserId": "user_1", "expiresIn": 600},
        {"audience": AUDIENCE, "externalUserId": "user_2", "permissions": ["read:responses"]},
    ):
        response = broker.post_token(body=body)
        assert response.status_code == 200
        tokens.append(response.json()["token"])
    # A caller that sends a JWT-looking or key-looking credential, valid or not.
    broker.post_token(client=None, headers={"Authorization": f"Bearer {tokens[0]}"})
    broker.post_token(client=None, headers={"Authorization": "Bearer bk_" + "s" * 43})
    broker.post_token(body={"audience": AUDIENCE, "externalUserId": tokens[1][:150]})
    for fault in (
        {"status": 401},
        {"status": 400, "body": json.dumps({"message": f"bad key {simulator.api_key}"})},
        {"status": 500},
        {"token": "wrong_aud"},
        {"delay_seconds": 3},
    ):
        simulator.fault(**fault, times=1)
        assert broker.post_token(fresh=True).status_code >= 400
    loopback.get(broker.url + "/nope")
    assert broker.server.stopped_cleanly()

    output = broker.server.output() + simulator.server.output()
    audit = "".join(path.read_text() for path in broker.audit_dir.glob("*.jsonl"))
    assert '"event":"request"' in output
    secrets = [simulator.api_key, "bk_" + "s" * 43]
    secrets += [client.key for client in broker.clients.values()]
    for token in tokens:
        secrets += [token, token.split(".")[2]]
    for secret in secrets:
        assert secret not in output
        assert secret not in audit
    # Every line is one JSON object carrying a level (structured logs, nothing raw).
    for line in broker.server.output().splitlines():
        assert "level" in json.loads(line)
    assert any(
        json.loads(line).get("request_id")
        for line in broker.server.output().splitlines()
        if '"event":"request"' in line
    )
