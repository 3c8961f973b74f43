"""A real headless Chromium: a page on one origin gets a session token for its signed-in user;
the same page on an origin that is not on the list gets none."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from urllib.parse import urlencode

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.conftest import AUDIENCE, BrokerFactory
from tests.support.federation import issuer_block
from tests.support.idp import IdentityProvider, PageServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As root in a sandbox without a display or network: no sandbox, no GPU, no background
# traffic (Chromium's own connections are refused here and slow every start).
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield chromium
        chromium.close()


def test_a_page_on_a_listed_origin_gets_a_session_token_and_others_get_none(
    browser: Browser, start_broker: BrokerFactory
) -> None:
    idp = IdentityProvider()
    allowed, other = PageServer(), PageServer()
    try:
        broker = start_broker(
            name="browser", extra=issuer_block(idp, cors_origins=f'["{allowed.origin}"]')
        )
        query = urlencode({"idp": idp.issuer, "broker": broker.url, "audience": AUDIENCE})

        page = browser.new_page()
        page.goto(f"{allowed.origin}/?{query}")
        page.wait_for_function("document.getElementById('out').textContent !== 'pending'")
        shown = page.text_content("#out") or ""
        assert shown.startswith("token:eyJ"), shown
        token = shown.removeprefix("token:")
        issued = [r for r in broker.audit_lines() if r["outcome"] == "issued"]
        assert len(issued) == 1
        assert issued[0]["caller"] == "test-idp/alice"
        assert issued[0]["externalUserId"] == "alice"
        import hashlib

        assert issued[0]["tokenSha256"] == hashlib.sha256(token.encode()).hexdigest()

        # A session token that is no longer good: the page can read why (RFC 6750's
        # invalid_token, through Access-Control-Expose-Headers), and so sign in again.
        status, challenge = page.evaluate(
            """async (url) => {
                const answer = await fetch(url + "/tokens", {
                    method: "POST",
                    headers: {"Authorization": "Bearer a.b.c", "Content-Type": "application/json"},
                    body: "{}",
                });
                return [answer.status, answer.headers.get("www-authenticate")];
            }""",
            broker.url,
        )
        assert (status, challenge) == (
            401,
            'Bearer realm="mka1-token-broker", error="invalid_token"',
        )

        page = browser.new_page()
        page.goto(f"{other.origin}/?{query}")
        page.wait_for_function("document.getElementById('out').textContent !== 'pending'")
        shown = page.text_content("#out") or ""
        assert shown.startswith("blocked:"), shown
        # The preflight was refused, so the POST never ran: still only one token issued.
        assert len([r for r in broker.audit_lines() if r["outcome"] == "issued"]) == 1
    finally:
        idp.close()
        allowed.close()
        other.close()
