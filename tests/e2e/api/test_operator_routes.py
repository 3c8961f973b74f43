"""GET /audit/events and POST /admin/revocations fuzzed with Hypothesis on a broker of their
own, with the values at the edges of each parameter and as the role each route needs.
Schemathesis fuzzes them from the OpenAPI document, but as the auditor (so the admin route
only ever answers it 403) and with times in the usual range (it never found the 500 that
9999-12-31T23:59:59-23:59 caused). Every query and body gets a documented status, a problem
document naming the field for a 400, and never a 500."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import BrokerFactory
from tests.support import loopback

_SETTINGS = settings(
    max_examples=250,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_NAMES = [
    "subject",
    "audience",
    "caller",
    "outcome",
    "tokenSha256",
    "tokenId",
    "instance",
    "cache",
    "since",
    "until",
    "limit",
    "cursor",
    "colour",
]
# Random text, and values near the edges of what each parameter takes.
_VALUES = st.text(max_size=40) | st.sampled_from(
    [
        "2026-12-03T10:00:00Z",
        "9999-12-31T23:59:59Z",
        "9999-12-31T23:59:59-23:59",
        "0001-01-01T00:00:00+00:01",
        "0",
        "1",
        "500",
        "501",
        "-1",
        "1e3",
        "٣",
        "2026-12-03T10:00:00.000Z~a~1",
        "0001-01-01T00:00:00.000Z~" + "a" * 128 + "~999999999999999999",
        "2026-12-03T10:00:00.000Z~a~" + "9" * 19,
        "a" * 2049,
    ]
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
_REVOCATION = st.fixed_dictionaries(
    {},
    optional={
        "kind": st.sampled_from(["caller", "end_user", "audience"]) | _JSON,
        "value": st.text(max_size=30) | _JSON,
        "action": st.sampled_from(["bar", "lift"]) | _JSON,
        "since": _VALUES | _JSON,
        "reason": st.text(max_size=30) | _JSON,
    },
)


def _check(response: Any, allowed: set[int]) -> None:
    assert response.status_code in allowed, response.text
    if response.status_code >= 400:
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["status"] == response.status_code
        assert problem["code"]
        if response.status_code == 400:
            assert problem["errors"][0]["field"]


def test_operator_routes_answer_anything_without_a_500(start_broker: BrokerFactory) -> None:
    broker = start_broker(name="operator-fuzz")
    auditor = broker.clients["auditor"].headers()
    admin = broker.clients["admin"].headers() | {"Content-Type": "application/json"}
    assert broker.post_token().status_code == 200  # something to read

    @_SETTINGS
    @given(params=st.dictionaries(st.sampled_from(_NAMES), _VALUES, max_size=5))
    def read(params: dict[str, str]) -> None:
        response = loopback.get(broker.url + "/audit/events", params=params, headers=auditor)
        _check(response, {200, 400})

    @_SETTINGS
    @given(body=_REVOCATION | _JSON)
    def revoke(body: Any) -> None:
        response = loopback.post(
            broker.url + "/admin/revocations", content=json.dumps(body), headers=admin
        )
        _check(response, {200, 400})

    read()
    revoke()

    # A bar sent in a form the route would have to guess at is refused, and not made.
    before = loopback.get(broker.url + "/admin/revocations", headers=admin).json()
    bar = json.dumps({"kind": "end_user", "value": "user_415", "action": "bar"}).encode()
    for headers, code, field in (
        (
            {"Content-Type": "application/json; charset=latin-1"},
            "unsupported_media_type",
            "Content-Type",
        ),
        ({"Content-Encoding": "gzip"}, "unsupported_content_encoding", "Content-Encoding"),
        ({"Content-Type": "text/plain"}, "unsupported_media_type", "Content-Type"),
    ):
        response = loopback.post(
            broker.url + "/admin/revocations", content=bar, headers=admin | headers
        )
        assert response.status_code == 415, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert (response.json()["code"], response.json()["errors"][0]["field"]) == (code, field)
    assert loopback.get(broker.url + "/admin/revocations", headers=admin).json() == before
