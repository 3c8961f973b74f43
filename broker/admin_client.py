"""``broker revoke``'s side of ``/admin/revocations``: one request with the admin key, and
its answer checked before anything of it is shown.

The key goes to the URL given and nowhere else: a redirect is not followed (urllib would
follow it with the ``Authorization`` header, to any host the answer names). An answer that
is not a broker's (a proxy's error page, another service at that address) is said to be
so, not a traceback; text from it is shown with its control characters escaped, so that
it cannot rewrite the admin's terminal.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from typing import Any, Literal

import msgspec

from broker.models import STORE_BEHIND
from broker.revocations import MAX_BARS, REASON_MAX, VALUE_MAX
from broker.terminal import shown

# A broker lists every bar in force, up to MAX_BARS of them, each at most a value and a
# reason at their longest, escaped (6 bytes a character at worst), its admin's id and a time:
# 1 MiB turned a broker's own list into "not a broker's" past a few thousand bars.
_MAX_BAR_BYTES = 6 * (VALUE_MAX + REASON_MAX) + 2048
_MAX_ANSWER = MAX_BARS * _MAX_BAR_BYTES
_MAX_PROBLEM = 1 << 16


class AdminCallFailed(Exception):
    """The call did not get a broker's answer; the message says why, without the key."""


class Refused(Exception):
    """The broker answered with a problem: its status, code and detail."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status


class BarShown(msgspec.Struct, rename="camel"):
    kind: str
    value: str
    since: str
    reason: str
    by: str


class BarsInForce(msgspec.Struct, rename="camel"):
    scope: Literal["deployment", "replica"]
    bars: list[BarShown]
    # From the answer's Audit-Store-Behind header (whatever the body says is replaced): how
    # many of the replica's records the audit store still lacked when it answered.
    store_behind: int | None = None


class _Problem(msgspec.Struct):
    code: str = "?"
    detail: str = ""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any) -> urllib.request.Request | None:
        new_url = args[-1]
        raise AdminCallFailed(
            f"the broker's URL answered with a redirect to {shown(str(new_url))}: not followed "
            "(the admin key would go along); give the URL the broker answers on"
        )


_OPENER = urllib.request.build_opener(_NoRedirect)


def call(
    url: str, key: str, body: bytes | None, *, timeout: float = 10.0, deadline: float = 30.0
) -> BarsInForce:
    """GET (``body`` None) or POST ``url`` with ``key``; the bars in force it answers.

    ``timeout`` bounds each read; ``deadline`` the whole call, since a server that sends a
    byte every few seconds never lets a read time out (the admin needs an answer in an
    incident, not a prompt that never comes back)."""
    outcome: list[BarsInForce | Exception] = []
    # A daemon thread: one still reading when the deadline passes must not hold the
    # command's exit (a pool's worker would be joined at exit).
    worker = threading.Thread(
        target=lambda: outcome.append(_outcome(url, key, body, timeout)), daemon=True
    )
    worker.start()
    worker.join(deadline)
    if not outcome:
        unknown = "" if body is None else " (whether it made the change is unknown: --list)"
        raise AdminCallFailed(f"no whole answer from {shown(url)} within {deadline:g} s{unknown}")
    if isinstance(outcome[0], Exception):
        raise outcome[0]
    return outcome[0]


def _outcome(url: str, key: str, body: bytes | None, timeout: float) -> BarsInForce | Exception:
    try:
        return _call(url, key, body, timeout)
    except (AdminCallFailed, Refused) as failure:
        return failure


def _call(url: str, key: str, body: bytes | None, timeout: float) -> BarsInForce:
    request = urllib.request.Request(  # noqa: S310 - the caller checks the scheme
        url,
        data=body,
        method="GET" if body is None else "POST",
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            raw = response.read(_MAX_ANSWER + 1)
            behind = _count(response.headers.get(STORE_BEHIND))
    except urllib.error.HTTPError as error:
        with error:
            raise _refused(error.code, error.read(_MAX_PROBLEM)) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", None) or error
        raise AdminCallFailed(f"cannot reach {shown(url)}: {shown(str(reason))}") from None
    if len(raw) > _MAX_ANSWER:
        raise AdminCallFailed(f"the answer is larger than {_MAX_ANSWER} bytes: not a broker's")
    try:
        answer = msgspec.json.decode(raw, type=BarsInForce)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as error:
        raise AdminCallFailed(f"the answer is not a broker's list of bars ({error})") from None
    return msgspec.structs.replace(answer, store_behind=behind)


def _count(header: str | None) -> int | None:
    """A header's count of records, if it is one (a few digits); None otherwise."""
    if header is None or not header.isascii() or not header.isdigit() or len(header) > 18:
        return None
    return int(header)


def _refused(status: int, raw: bytes) -> Refused:
    try:
        problem = msgspec.json.decode(raw, type=_Problem)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return Refused(status, "?", "the answer is not a problem document")
    return Refused(status, shown(problem.code), shown(problem.detail))
