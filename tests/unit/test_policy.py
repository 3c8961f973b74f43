"""Policy decisions without I/O."""

from __future__ import annotations

import pytest

from broker.config import ClientSettings
from broker.policy import Denied, Policy, decide

A = "https://a.example"


def _policy(**overrides: object) -> Policy:
    fields: dict[str, object] = {
        "id": "svc",
        "key_sha256": "0" * 64,
        "audiences": [A],
        "subjects": "any",
        "max_expires_in": 3600,
    } | overrides
    return Policy.for_caller(ClientSettings(**fields), global_default=7200)  # type: ignore[arg-type]


def test_default_lifetime_is_clamped_to_the_clients_max() -> None:
    grant = decide(
        _policy(), "svc", audience=A, external_user_id="u", expires_in=None, permissions=None
    )
    assert grant.expires_in == 3600


def test_client_default_wins() -> None:
    grant = decide(
        _policy(default_expires_in=600),
        "svc",
        audience=A,
        external_user_id="u",
        expires_in=None,
        permissions=None,
    )
    assert grant.expires_in == 600


@pytest.mark.parametrize(
    ("subjects", "user", "allowed"),
    [
        ("any", "x", True),
        ("self", "svc", True),
        ("self", "other", False),
        (["tenant-a:*"], "tenant-a:1", True),
        (["tenant-a:*"], "tenant-ab", False),
        (["tenant-a:?"], "tenant-a:12", False),
        (["exact"], "exact", True),
        (["exact"], "EXACT", False),
    ],
)
def test_subject_rules(subjects: object, user: str, allowed: bool) -> None:
    policy = _policy(subjects=subjects)
    if allowed:
        assert (
            decide(
                policy, "svc", audience=A, external_user_id=user, expires_in=None, permissions=None
            ).external_user_id
            == user
        )
    else:
        with pytest.raises(Denied) as caught:
            decide(
                policy, "svc", audience=A, external_user_id=user, expires_in=None, permissions=None
            )
        assert caught.value.code == "subject_not_allowed"


def test_permissions_must_be_a_subset_and_are_sorted() -> None:
    policy = _policy(permissions=["b", "a", "c"])
    grant = decide(
        policy, "svc", audience=A, external_user_id="u", expires_in=None, permissions=["c", "a"]
    )
    assert grant.permissions == ("a", "c")
    with pytest.raises(Denied, match="permission_not_allowed"):
        decide(
            policy, "svc", audience=A, external_user_id="u", expires_in=None, permissions=["a", "z"]
        )


def test_without_an_allow_list_omitted_permissions_stay_omitted() -> None:
    grant = decide(
        _policy(), "svc", audience=A, external_user_id="u", expires_in=None, permissions=None
    )
    assert grant.permissions is None


def test_audience_match_is_exact() -> None:
    for audience in (A + "/", A.upper(), "https://a.example.evil"):
        with pytest.raises(Denied, match="audience_not_allowed"):
            decide(
                _policy(),
                "svc",
                audience=audience,
                external_user_id="u",
                expires_in=None,
                permissions=None,
            )
