"""``POST /tokens`` over real loopback HTTP: the broker and the simulator as servers."""

from __future__ import annotations

import gzip
import json
from typing import Any

import pytest

from tests.conftest import AUDIENCE, OTHER_AUDIENCE, Broker, Client
from tests.support import http1, loopback
from tests.support.problems import assert_problem, claims


def test_issues_a_token_for_the_requested_audience_user_and_lifetime(broker: Broker) -> None:
    response = broker.post_token(
        body={
            "audience": AUDIENCE,
            "externalUserId": "user_123",
            "expiresIn": 1800,
            "permissions": ["read:responses"],
        }
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["pragma"] == "no-cache"
    assert response.headers["x-content-type-options"] == "nosniff"
    body = response.json()
    token = claims(body["token"])
    assert token["aud"] == AUDIENCE
    assert token["sub"] == "user_123"
    assert token["exp"] - token["iat"] == 1800
    assert token["permissions"] == ["read:responses"]
    assert body["tokenType"] == "Bearer"
    assert 1795 <= body["expiresIn"] <= 1800
    assert body["audience"] == AUDIENCE
    assert body["externalUserId"] == "user_123"
    assert body["permissions"] == ["read:responses"]
    assert body["tokenId"] == token["jti"]
    import hashlib

    assert body["tokenSha256"] == hashlib.sha256(body["token"].encode()).hexdigest()
    assert body["expiresAt"].endswith("Z")
    assert body["refreshAt"] < body["expiresAt"]


@pytest.mark.parametrize("lifetime", [300, 2592000])
def test_lifetime_bounds_are_inclusive(broker: Broker, lifetime: int) -> None:
    response = broker.post_token(
        body={"audience": AUDIENCE, "externalUserId": "user_123", "expiresIn": lifetime}
    )
    assert response.status_code == 200, response.text
    token = claims(response.json()["token"])
    assert token["exp"] - token["iat"] == lifetime


@pytest.mark.parametrize(
    "raw_value",
    ["299", "2592001", '"300"', "300.0", "3e2", "true", "null", "[300]", '{"v":300}', "-300"],
)
def test_expires_in_must_be_a_json_integer_in_range(broker: Broker, raw_value: str) -> None:
    content = f'{{"audience": "{AUDIENCE}", "externalUserId": "u", "expiresIn": {raw_value}}}'
    response = broker.post_token(content=content.encode())
    problem = assert_problem(response, 400, "invalid_request", "expiresIn")
    assert "300 to 2592000" in problem["errors"][0]["message"]


@pytest.mark.parametrize(
    ("user", "why"),
    [
        ("", "(has a length outside the allowed range)"),
        ("x" * 151, "(has a length outside the allowed range)"),
        ("*", "(is the wildcard '*')"),
        ("bad\u0007bell", "(contains a character outside 0x20 to 0x7E)"),
        ("tab\there", "(contains a character outside 0x20 to 0x7E)"),
        ("jos\u00e9", "(contains a character outside 0x20 to 0x7E)"),
    ],
)
def test_external_user_id_rules(broker: Broker, user: str, why: str) -> None:
    response = broker.post_token(body={"audience": AUDIENCE, "externalUserId": user})
    problem = assert_problem(response, 400, "invalid_request", "externalUserId")
    message = problem["errors"][0]["message"]
    assert "1 to 150 printable ASCII" in message
    assert message.endswith(why)


def test_external_user_id_of_150_printable_characters_is_accepted(broker: Broker) -> None:
    user = "tenant-a:" + "~" * 141
    response = broker.post_token(body={"audience": AUDIENCE, "externalUserId": user})
    assert response.status_code == 200, response.text
    assert claims(response.json()["token"])["sub"] == user


@pytest.mark.parametrize(
    "audience",
    [
        "api.example.com",
        "ftp://api.example.com",
        "https://",
        "https://user:pw@api.example.com",
        "https://api.example.com/#frag",
        "https://api.example.com/" + "a" * 2048,
        "https://api example.com",
        "https://api.example.com:99999",
    ],
)
def test_audience_must_be_an_absolute_http_url(broker: Broker, audience: str) -> None:
    response = broker.post_token(body={"audience": audience, "externalUserId": "u"})
    assert_problem(response, 400, "invalid_request", "audience")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"externalUserId": "u"}, "audience"),
        ({"audience": AUDIENCE, "externalUserId": "u", "scope": "all"}, "scope"),
        ({"audience": AUDIENCE, "externalUserId": "u", "permissions": "read"}, "permissions"),
        ({"audience": AUDIENCE, "externalUserId": "u", "permissions": ["a", "a"]}, "permissions"),
        ({"audience": AUDIENCE, "externalUserId": "u", "permissions": [""]}, "permissions[0]"),
        ({"audience": 7, "externalUserId": "u"}, "audience"),
        ([AUDIENCE], "(body)"),
    ],
)
def test_other_invalid_bodies_name_the_field(broker: Broker, body: Any, field: str) -> None:
    assert_problem(broker.post_token(body=body), 400, "invalid_request", field)


def test_malformed_and_deeply_nested_json_are_400_not_500(broker: Broker) -> None:
    assert_problem(broker.post_token(content=b"{not json"), 400, "malformed_json", "(body)")
    depth = 8000
    for nested, field in (
        (b"[" * depth + b"]" * depth, "(body)"),
        (b'{"audience": ' + b"[" * depth + b"]" * depth + b"}", "audience"),
        (b'{"permissions": [' + b"[" * depth + b"]" * depth + b"]}", "permissions[0]"),
        (b'{"audience": "' + AUDIENCE.encode() + b'", "x": ' + b"{" * depth, "x"),
    ):
        assert_problem(broker.post_token(content=nested), 400, "invalid_request", field)


def test_a_field_given_twice_is_400_and_never_minted(broker: Broker, simulator: Any) -> None:
    before = simulator.exchanges()
    twice = (
        b'{"audience": "' + AUDIENCE.encode() + b'", "externalUserId": "alice", '
        b'"externalUserId": "admin"}'
    )
    response = broker.post_token(content=twice)
    assert_problem(response, 400, "invalid_request", "externalUserId")
    assert response.json()["errors"][0]["message"] == (
        "is given more than once; send each field once"
    )
    assert simulator.exchanges() == before


def test_body_over_16_kib_is_413(broker: Broker) -> None:
    body = {"audience": AUDIENCE, "externalUserId": "u", "pad": "x" * 17000}
    assert_problem(broker.post_token(body=body), 413, "body_too_large")


def test_non_json_content_type_is_415(broker: Broker) -> None:
    response = broker.post_token(content=b"audience=x", headers={"Content-Type": "text/plain"})
    assert_problem(response, 415, "unsupported_media_type")


def test_json_with_charset_is_accepted(broker: Broker) -> None:
    content = json.dumps({"audience": AUDIENCE, "externalUserId": "u"}).encode()
    response = broker.post_token(
        content=content, headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert response.status_code == 200, response.text


def test_a_body_in_another_charset_or_compressed_is_415_and_never_minted(
    broker: Broker, simulator: Any
) -> None:
    content = json.dumps({"audience": AUDIENCE, "externalUserId": "user_415"}).encode()
    before_exchanges = simulator.exchanges()
    before_records = len(broker.audit_lines())
    cases = [
        ({"Content-Type": "application/json; charset=latin-1"}, content, "unsupported_media_type"),
        ({"Content-Type": 'application/json; Charset="UTF-16"'}, content, "unsupported_media_type"),
        ({"Content-Encoding": "gzip"}, gzip.compress(content), "unsupported_content_encoding"),
        # Labelled as compressed but sent plain: read as sent, it would be a different body.
        ({"Content-Encoding": "gzip"}, content, "unsupported_content_encoding"),
        ({"Content-Encoding": "identity, br"}, content, "unsupported_content_encoding"),
    ]
    for headers, body, code in cases:
        response = broker.post_token(content=body, headers=headers)
        field = "Content-Encoding" if "Content-Encoding" in headers else "Content-Type"
        problem = assert_problem(response, 415, code, field)
        assert problem["errors"][0]["message"].startswith("must "), problem
        if field == "Content-Encoding":
            assert response.headers["accept-encoding"] == "identity"
        else:
            assert "accept-encoding" not in response.headers
    assert simulator.exchanges() == before_exchanges
    records = broker.audit_lines()[before_records:]
    assert [(r["outcome"], r["code"]) for r in records] == [
        ("rejected", code) for _, _, code in cases
    ]


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": 'application/json; charset="utf-8"'},
        {"Content-Type": "APPLICATION/JSON;CHARSET=UTF-8"},
        {"Content-Encoding": "identity"},
        {"Content-Encoding": ""},
    ],
)
def test_json_in_utf_8_as_sent_is_accepted(broker: Broker, headers: dict[str, str]) -> None:
    content = json.dumps({"audience": AUDIENCE, "externalUserId": "u"}).encode()
    response = broker.post_token(content=content, headers=headers)
    assert response.status_code == 200, response.text


def test_other_methods_are_405(broker: Broker) -> None:

    for method in ("GET", "PUT", "DELETE", "PATCH"):
        response = loopback.request(method, broker.url + "/tokens")
        assert_problem(response, 405, "method_not_allowed")
        assert "POST" in response.headers["allow"]
        assert response.headers["x-request-id"]


def test_options_without_a_preflight_answers_as_on_every_route(broker: Broker) -> None:
    for path in ("/tokens", "/healthz"):
        response = loopback.request("OPTIONS", broker.url + path)
        assert response.status_code == 204, (path, response.text)
        assert "OPTIONS" in response.headers["allow"]
        assert response.headers["x-request-id"]
        assert response.content == b""


_CHALLENGE = 'Bearer realm="mka1-token-broker"'
_INVALID_TOKEN = _CHALLENGE + ', error="invalid_token"'


@pytest.mark.parametrize(
    ("authorization", "challenge"),
    [
        # RFC 6750 section 3.1: no error code without a Bearer credential...
        (None, _CHALLENGE),
        ("", _CHALLENGE),
        ("Bearer", _CHALLENGE),
        ("Basic Zm9vOmJhcg==", _CHALLENGE),
        ("bk_nobearer", _CHALLENGE),
        # ...invalid_token for one that was presented and failed.
        ("Bearer  x", _INVALID_TOKEN),
        ("Bearer bk_wrong", _INVALID_TOKEN),
        ("Bearer a.b.c", _INVALID_TOKEN),
    ],
)
def test_missing_or_wrong_credentials_are_401(
    broker: Broker, authorization: str | None, challenge: str
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = broker.post_token(client=None, headers=headers)
    problem = assert_problem(response, 401, "unauthenticated")
    assert response.headers.get_list("www-authenticate") == [challenge]
    assert problem["detail"].startswith("a valid client key or caller JWT is required")


def test_unknown_and_wrong_keys_get_identical_answers(broker: Broker) -> None:
    real = broker.clients["billing"].key
    answers = []
    for key in ("bk_unknown", real[:-1] + ("A" if real[-1] != "A" else "B")):
        response = broker.post_token(client=None, headers={"Authorization": f"Bearer {key}"})
        problem = response.json()
        problem.pop("requestId")
        answers.append((response.status_code, problem, response.headers["www-authenticate"]))
    assert answers[0] == answers[1]


@pytest.mark.parametrize(
    ("client", "body", "code", "field"),
    [
        (
            "billing",
            {"audience": "https://other.example.com", "externalUserId": "u"},
            "audience_not_allowed",
            "audience",
        ),
        (
            "tenant-app",
            {"audience": AUDIENCE, "externalUserId": "tenant-b:1"},
            "subject_not_allowed",
            "externalUserId",
        ),
        (
            "self-service",
            {"audience": AUDIENCE, "externalUserId": "someone"},
            "subject_not_allowed",
            "externalUserId",
        ),
        (
            "tenant-app",
            {"audience": AUDIENCE, "externalUserId": "tenant-a:1", "expiresIn": 3601},
            "expires_in_too_long",
            "expiresIn",
        ),
        (
            "billing",
            {"audience": AUDIENCE, "externalUserId": "u", "permissions": ["admin:all"]},
            "permission_not_allowed",
            "permissions",
        ),
        ("billing", {"audience": AUDIENCE}, "external_user_id_required", "externalUserId"),
    ],
)
def test_requests_outside_policy_are_403(
    broker: Broker, client: str, body: dict[str, Any], code: str, field: str
) -> None:
    problem = assert_problem(broker.post_token(client, body=body), 403, code, field)
    assert problem["errors"][0]["message"]


def test_expires_in_too_long_names_the_callers_range(broker: Broker) -> None:
    body = {"audience": AUDIENCE, "externalUserId": "tenant-a:1", "expiresIn": 7200}
    problem = broker.post_token("tenant-app", body=body).json()
    assert "300 to 3600" in problem["errors"][0]["message"]


def test_glob_subjects_and_self(broker: Broker) -> None:
    assert (
        broker.post_token(
            "tenant-app", body={"audience": AUDIENCE, "externalUserId": "tenant-a:42"}
        ).status_code
        == 200
    )
    assert (
        broker.post_token(
            "tenant-app", body={"audience": AUDIENCE, "externalUserId": "admin"}
        ).status_code
        == 200
    )
    own = broker.clients["self-service"].id
    response = broker.post_token("self-service", body={"audience": AUDIENCE})
    assert response.status_code == 200, response.text
    assert claims(response.json()["token"])["sub"] == own


def test_default_lifetimes_come_from_the_client_then_the_global_setting(broker: Broker) -> None:
    # billing has default_expires_in = 900; tenant-app has none and max 3600, global 3600.
    billing = claims(
        broker.post_token(body={"audience": AUDIENCE, "externalUserId": "u"}).json()["token"]
    )
    assert billing["exp"] - billing["iat"] == 900
    tenant = claims(
        broker.post_token(
            "tenant-app", body={"audience": AUDIENCE, "externalUserId": "admin"}
        ).json()["token"]
    )
    assert tenant["exp"] - tenant["iat"] == 3600


def test_allow_listed_client_without_permissions_gets_only_its_allow_list(broker: Broker) -> None:
    response = broker.post_token(body={"audience": OTHER_AUDIENCE, "externalUserId": "u"})
    assert response.status_code == 200
    assert claims(response.json()["token"])["permissions"] == [
        "read:files",
        "read:responses",
        "write:responses",
    ]


def test_on_behalf_of_header_reaches_the_upstream(broker: Broker, simulator: Any) -> None:
    response = broker.post_token(
        body={"audience": AUDIENCE}, headers={"X-On-Behalf-Of": "user_header"}
    )
    assert response.status_code == 200, response.text
    assert claims(response.json()["token"])["sub"] == "user_header"
    (seen,) = simulator.requests()
    assert seen["onBehalfOf"] == "user_header"
    assert seen["body"]["externalUserId"] == "user_header"
    assert seen["path"] == "/api/v1/authentication/api-key/exchange-token"
    import hashlib

    assert seen["keySha256"] == hashlib.sha256(simulator.api_key.encode()).hexdigest()


def test_on_behalf_of_and_body_must_agree(broker: Broker) -> None:
    same = broker.post_token(
        body={"audience": AUDIENCE, "externalUserId": "u1"}, headers={"X-On-Behalf-Of": "u1"}
    )
    assert same.status_code == 200
    different = broker.post_token(
        body={"audience": AUDIENCE, "externalUserId": "u1"}, headers={"X-On-Behalf-Of": "u2"}
    )
    assert_problem(different, 400, "conflicting_external_user_id", "X-On-Behalf-Of")
    bad = broker.post_token(body={"audience": AUDIENCE}, headers={"X-On-Behalf-Of": "*"})
    assert_problem(bad, 400, "invalid_request", "X-On-Behalf-Of")


def test_whitespace_around_a_header_value_is_not_part_of_it(broker: Broker, simulator: Any) -> None:
    # RFC 9110 5.5. The HTTP parser drops the leading whitespace, not the trailing: a value
    # sent as "u1 " named another end user than "u1" (h11, and so httpx, refuse to send it).
    sent = {name: f"{value} \t" for name, value in broker.clients["billing"].headers().items()}
    sent |= {"Content-Type": "application/json \t", "X-On-Behalf-Of": "user_ws \t"}
    # The header alone names the end user; then the body agrees with it (not a conflict).
    for body in (b'{"audience":"%s"}', b'{"audience":"%s","externalUserId":"user_ws"}'):
        sock = http1.connect(broker.server.port)
        sock.sendall(http1.request("POST", "/tokens", sent, body % AUDIENCE.encode()))
        answer = http1.Reader(sock).response()
        sock.close()
        assert answer.status == 200, answer.body
        assert answer.json()["externalUserId"] == "user_ws"
        assert claims(answer.json()["token"])["sub"] == "user_ws"
    (seen,) = simulator.requests()  # the second request was a hit on the first's token
    assert seen["onBehalfOf"] == "user_ws"


def test_nothing_invalid_reaches_the_upstream(broker: Broker, simulator: Any) -> None:
    for body in (
        {"audience": AUDIENCE, "externalUserId": "*"},
        {"audience": AUDIENCE, "externalUserId": "u", "expiresIn": "300"},
        {"audience": "https://other.example.com", "externalUserId": "u"},
    ):
        assert broker.post_token(body=body).status_code in (400, 403)
    assert (
        broker.post_token(
            client=None, body={"audience": AUDIENCE, "externalUserId": "u"}
        ).status_code
        == 401
    )
    assert simulator.exchanges() == 0


def test_unknown_paths_are_problem_404(broker: Broker) -> None:

    assert_problem(loopback.get(broker.url + "/nope"), 404, "not_found")


def test_client_key_is_not_a_client_for_another(broker: Broker) -> None:
    impostor = Client("billing-svc", "bk_" + "x" * 43)
    assert broker.post_token(impostor).status_code == 401
