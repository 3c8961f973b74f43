"""The official MKA1 SDK against the simulator, so the simulator stays faithful to the API."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from meetkai_mka1 import SDK, errors

from tests.conftest import AUDIENCE, Broker, Simulator
from tests.support import loopback


def _sdk(simulator: Simulator, api_key: str | None = None) -> SDK:
    return SDK(bearer_auth=api_key or simulator.api_key, server_url=simulator.url)


def _verified(simulator: Simulator, token: str, audience: str) -> dict[str, object]:
    jwks = jwt.PyJWKClient(simulator.url + "/.well-known/jwks.json")
    key = jwks.get_signing_key_from_jwt(token)
    claims: dict[str, object] = jwt.decode(
        token, key.key, algorithms=["ES256"], audience=audience, issuer=simulator.url
    )
    return claims


def test_documented_path_gives_a_verifiable_token(simulator: Simulator) -> None:
    with _sdk(simulator) as sdk:
        result = sdk.auth.api_key.get_jwt_from_key(
            audience=AUDIENCE,
            external_user_id="user_123",
            x_on_behalf_of="user_123",
            expires_in=600,
            permissions=["read:responses"],
            retries=None,
        )
    claims = _verified(simulator, result.token, AUDIENCE)
    assert claims["sub"] == "user_123"
    assert claims["permissions"] == ["read:responses"]
    assert isinstance(claims["exp"], int)
    assert isinstance(claims["iat"], int)
    assert claims["exp"] - claims["iat"] == 600
    assert claims["nbf"] == claims["iat"]
    assert claims["iat"] <= time.time() + 1
    assert isinstance(claims["jti"], str)
    (seen,) = simulator.requests()
    # The SDK sends expiresIn as a float; the upstream (and so the simulator) accepts it.
    assert seen["body"]["expiresIn"] == 600.0
    assert seen["onBehalfOf"] == "user_123"


def test_sdk_default_lifetime_is_an_hour(simulator: Simulator) -> None:
    with _sdk(simulator) as sdk:
        token = sdk.auth.api_key.get_jwt_from_key(
            audience=AUDIENCE, external_user_id="u", retries=None
        ).token
    claims = _verified(simulator, token, AUDIENCE)
    assert claims["exp"] - claims["iat"] == 3600  # type: ignore[operator]


def test_newer_path_gives_a_token(simulator: Simulator) -> None:
    with _sdk(simulator) as sdk:
        result = sdk.auth.api_keys.exchange_token(
            audience=AUDIENCE, external_user_id="user_9", expires_in=300, retries=None
        )
    claims = _verified(simulator, result.token, AUDIENCE)
    assert claims["sub"] == "user_9"
    assert simulator.requests()[0]["path"] == "/api/v1/authentication/api-keys/exchange-token"


@pytest.mark.parametrize(
    ("kwargs", "path"),
    [
        ({"expires_in": 299}, "expiresIn"),
        ({"expires_in": 2592001}, "expiresIn"),
        ({"expires_in": 300.5}, "expiresIn"),
        ({"external_user_id": "*"}, "externalUserId"),
        ({"external_user_id": "x" * 151}, "externalUserId"),
        ({"audience": "not a url"}, "audience"),
        ({"permissions": ["admin:everything"]}, "permissions.0"),
    ],
)
def test_documented_path_400_has_details(
    simulator: Simulator, kwargs: dict[str, object], path: str
) -> None:
    arguments: dict[str, object] = {"audience": AUDIENCE, "external_user_id": "u"} | kwargs
    with _sdk(simulator) as sdk, pytest.raises(errors.GetJwtFromKeyBadRequestError) as caught:
        sdk.auth.api_key.get_jwt_from_key(**arguments, retries=None)
    assert caught.value.data.message
    assert [detail.path for detail in caught.value.data.details] == [path]


def test_newer_path_400_is_a_bare_message(simulator: Simulator) -> None:
    with _sdk(simulator) as sdk, pytest.raises(errors.ExchangeAPIKeyTokenBadRequestError) as caught:
        sdk.auth.api_keys.exchange_token(audience=AUDIENCE, external_user_id="*", retries=None)
    assert "externalUserId" in caught.value.data.message


def test_unknown_key_is_401_on_both_paths(simulator: Simulator) -> None:
    with _sdk(simulator, "mka1_not_a_key") as sdk:
        with pytest.raises(errors.GetJwtFromKeyUnauthorizedError) as documented:
            sdk.auth.api_key.get_jwt_from_key(audience=AUDIENCE, external_user_id="u", retries=None)
        with pytest.raises(errors.ExchangeAPIKeyTokenUnauthorizedError) as newer:
            sdk.auth.api_keys.exchange_token(audience=AUDIENCE, external_user_id="u", retries=None)
    assert documented.value.data.message
    assert newer.value.data.message


def test_injected_429_is_the_sdks_rate_limit_error(simulator: Simulator) -> None:
    simulator.fault(status=429, retry_after="3", times=1)
    with (
        _sdk(simulator) as sdk,
        pytest.raises(errors.ExchangeAPIKeyTokenTooManyRequestsError) as caught,
    ):
        sdk.auth.api_keys.exchange_token(audience=AUDIENCE, external_user_id="u", retries=None)
    assert caught.value.raw_response.headers["retry-after"] == "3"


def test_a_broker_token_works_through_the_sdk_in_place_of_the_api_key(
    broker: Broker, simulator: Simulator
) -> None:
    """The seed's last step: use the JWT where the API key went."""
    issued = broker.post_token(body={"audience": AUDIENCE, "externalUserId": "user_123"})
    assert issued.status_code == 200, issued.text
    with _sdk(simulator, issued.json()["token"]) as sdk:
        answer = sdk.llm.responses.create(model="auto", input="Say hello")
    assert answer.status == "completed"
    assert answer.model == "auto"
    assert answer.user == "user_123"
    (message,) = answer.output
    assert "user_123" in message.content[0].text
    # The API key itself works too, for whom X-On-Behalf-Of names.
    with _sdk(simulator) as sdk:
        direct = sdk.llm.responses.create(model="auto", input="Say hello", x_on_behalf_of="u9")
    assert direct.user == "u9"


@pytest.mark.parametrize("kind", ["expired", "foreign", "garbage", "tampered"])
def test_anything_else_is_401_in_the_apis_error_shape(
    broker: Broker, simulator: Simulator, kind: str
) -> None:
    token = broker.post_token(body={"audience": AUDIENCE, "externalUserId": "user_123"}).json()[
        "token"
    ]
    if kind == "expired":
        # Signed by the simulator's own key, but expired: straight from its exchange.
        simulator.fault(token="expired", times=1)
        minted = loopback.post(
            simulator.url + "/api/v1/authentication/api-key/exchange-token",
            json={"audience": AUDIENCE, "externalUserId": "user_123"},
            headers={"Authorization": f"Bearer {simulator.api_key}"},
        )
        token = minted.json()["token"]
    elif kind == "foreign":
        token = jwt.encode(
            {"sub": "user_123", "exp": int(time.time()) + 600},
            ec.generate_private_key(ec.SECP256R1()),
            algorithm="ES256",
        )
    elif kind == "garbage":
        token = "not-a-token"
    else:
        header, payload, signature = token.split(".")
        token = f"{header}.{payload}x.{signature}"
    with _sdk(simulator, token) as sdk, pytest.raises(errors.SDKDefaultError) as refused:
        sdk.llm.responses.create(model="auto", input="Say hello")
    assert refused.value.status_code == 401
    assert "message" in refused.value.body
