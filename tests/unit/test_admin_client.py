"""``broker revoke`` against servers on loopback that answer as a broker, or not: the admin
key never follows a redirect, an answer that is not a broker's is said to be so, and what
an answer holds is shown with its control characters escaped."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from broker.admin_client import _MAX_ANSWER, AdminCallFailed, call
from broker.cli import main

KEY = "bk_admin_" + "k" * 32
Answer = tuple[int, dict[str, str], bytes]


class _Server:
    """A loopback server answering every request with ``answer``; it keeps what it got."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.seen: list[dict[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                server.seen.append(dict(self.headers))
                status, headers, body = server.answer
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _any

            def log_message(self, *_: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[[Answer], _Server]]:
    started: list[_Server] = []

    def start(answer: Answer) -> _Server:
        started.append(_Server(answer))
        return started[-1]

    yield start
    for server in started:
        server.close()


def _revoke(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    monkeypatch.setenv("ADMIN_KEY", KEY)
    status = main(["revoke", "--url", url, "--key-env", "ADMIN_KEY", *args])
    printed = capsys.readouterr()
    return status, printed.out, printed.err


_JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirect_is_not_followed_and_the_key_goes_nowhere_else(
    serve: Callable[[Answer], _Server],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    code: int,
) -> None:
    elsewhere = serve((200, _JSON, b'{"scope": "replica", "bars": []}'))
    redirecting = serve((code, {"Location": elsewhere.url + "/admin/revocations"}, b""))
    for args in (["--list"], ["--end-user", "user_1"]):
        status, _, said = _revoke(redirecting.url, monkeypatch, capsys, *args)
        assert status == 1
        assert "answered with a redirect" in said
        assert KEY not in said
    assert [seen["Authorization"] for seen in redirecting.seen] == [f"Bearer {KEY}"] * 2
    assert elsewhere.seen == []


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        ((200, {"Content-Type": "text/html"}, b"<html>hello</html>"), "not a broker's list"),
        ((200, _JSON, b'{"scope": "everywhere", "bars": []}'), "not a broker's list"),
        ((200, _JSON, b"[]"), "not a broker's list"),
        ((200, _JSON, b'{"scope": "replica", "bars": ' + b" " * _MAX_ANSWER + b"[]}"), "larger"),
        ((502, {"Content-Type": "text/html"}, b"<h1>Bad Gateway</h1>"), "502 ?: the answer is not"),
        (
            (
                403,
                {"Content-Type": "application/problem+json"},
                b'{"code": "not_admin", "detail": "barring and lifting needs the admin role"}',
            ),
            "403 not_admin: barring and lifting needs the admin role",
        ),
    ],
)
def test_an_answer_that_is_not_a_brokers_is_said_to_be_so(
    serve: Callable[[Answer], _Server],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    answer: Answer,
    said: str,
) -> None:
    server = serve(answer)
    status, out, err = _revoke(server.url, monkeypatch, capsys, "--list")
    assert status == 1
    assert said in err
    assert out == ""
    assert "Traceback" not in err


def test_nothing_listening_is_one_line_naming_the_url(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    server = _Server((200, _JSON, b"{}"))
    url = server.url
    server.close()
    status, _, err = _revoke(url, monkeypatch, capsys, "--list")
    assert status == 1
    assert err.startswith(f"broker revoke: cannot reach {url}/admin/revocations: ")
    assert len(err.splitlines()) == 1


def test_what_an_answer_holds_is_shown_with_its_control_characters_escaped(
    serve: Callable[[Answer], _Server],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bar = {
        "kind": "caller",
        "value": "svc\x1b[2J",
        "since": "2026-12-06T10:00:00Z",
        "reason": "line\nforged line",
        "by": "admin-svc",
    }
    server = serve((200, _JSON, json.dumps({"scope": "deployment", "bars": [bar]}).encode()))
    status, out, _ = _revoke(server.url, monkeypatch, capsys, "--list")
    assert status == 0
    assert out.splitlines() == [
        "bars in force on every replica (shared store):",
        "  caller svc\\x1b[2J since 2026-12-06T10:00:00Z by admin-svc: line\\nforged line",
    ]
    (seen,) = server.seen
    assert seen["Authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("http://tokens.invalid:1", True),  # RFC 6761: never resolves, so fails at once
        ("http://broker.example.invalid:1", True),
        ("http://127.0.0.1:1", False),
        ("http://localhost:1", False),
        ("http://[::1]:1", False),
        ("https://tokens.invalid:1", False),
    ],
)
def test_plain_http_to_another_host_is_warned_of(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str, warned: bool
) -> None:
    # Nothing listens there: the call fails either way; the warning comes first.
    _, _, err = _revoke(url, monkeypatch, capsys, "--list")
    assert ("the admin key goes in clear over http://" in err) is warned
    assert KEY not in err


def test_a_url_with_a_user_or_password_is_refused_without_printing_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # urllib took "user:password@host" for a host name, and the failure printed the URL.
    url = "http://user:s3cret-pw@127.0.0.1:9"
    status, _, err = _revoke(url, monkeypatch, capsys, "--list")
    assert status == 2
    assert "no user or password in it" in err
    assert "s3cret-pw" not in err


def test_a_server_that_trickles_its_answer_is_given_up_on_at_the_deadline() -> None:
    # A byte every 0.1 s: no read ever waits long enough for its timeout.
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            while not stop.wait(0.1):
                connection.sendall(b" ")

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/admin/revocations"
    try:
        with pytest.raises(AdminCallFailed) as failed:
            call(url, KEY, b"{}", timeout=0.5, deadline=1.0)
    finally:
        stop.set()
        thread.join(5)
        listener.close()
    assert str(failed.value) == (
        f"no whole answer from {url} within 1 s (whether it made the change is unknown: --list)"
    )
    assert KEY not in str(failed.value)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://tokens.invalid?x=1", "must be the broker's base URL, without a query"),
        ("https://tokens.invalid/#top", "must be the broker's base URL, without a query"),
        ("https://tokens.invalid:99999", "not a URL"),
        ("ftp://tokens.invalid", "must be an http(s) URL"),
        ("HTTPS://tokens.invalid", "must be an http(s) URL"),
        ("https:///admin", "names no host"),
    ],
)
def test_a_url_that_is_not_a_brokers_base_is_refused_before_the_key_goes_anywhere(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], url: str, problem: str
) -> None:
    # "https://b?x=1" + "/admin/revocations" asked the host for "/" with the path in the
    # query; a fragment was dropped with the path after it: the key sent all the same.
    status, _, err = _revoke(url, monkeypatch, capsys, "--list")
    assert status == 2
    assert f"--url: {problem}" in err
    assert KEY not in err


def test_the_longest_list_a_broker_may_give_is_read(
    serve: Callable[[Answer], _Server],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # 10,000 bars, each with a long value and reason: 1 MiB refused a broker's own list
    # past a few thousand bars as "not a broker's".
    bar = {
        "kind": "audience",
        "value": "https://api.example.com/" + "a" * 2000,
        "since": "2026-12-07T00:00:00Z",
        "reason": "r" * 500,
        "by": "admin-svc",
    }
    body = json.dumps({"scope": "deployment", "bars": [bar] * 10_000}).encode()
    assert len(body) > 25_000_000
    server = serve((200, _JSON, body))
    status, out, err = _revoke(server.url, monkeypatch, capsys, "--list")
    assert (status, err) == (0, "")
    assert out.count("https://api.example.com/") == 10_000


@pytest.mark.parametrize(
    ("header", "warned"),
    [("3", True), ("0", False), (None, False), ("-1", False), ("3; x", False), ("9" * 40, False)],
)
def test_a_change_whose_record_the_store_lacks_is_warned_of(
    serve: Callable[[Answer], _Server],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    header: str | None,
    warned: bool,
) -> None:
    headers = _JSON if header is None else {**_JSON, "Audit-Store-Behind": header}
    # A body that says otherwise is not believed: the count is the header's.
    body = {"scope": "deployment", "bars": [], "storeBehind": 7}
    server = serve((200, headers, json.dumps(body).encode()))
    status, out, err = _revoke(server.url, monkeypatch, capsys, "--end-user", "u1")
    assert status == 0
    assert out.startswith("bars in force on every replica")
    said = "warning: the audit store did not hold this change's record yet (3 of"
    assert (said in err) is warned, err
    if not warned:
        assert "audit store" not in err
    # A list changes nothing: nothing is said of the store.
    status, _, err = _revoke(server.url, monkeypatch, capsys, "--list")
    assert status == 0
    assert "audit store" not in err
