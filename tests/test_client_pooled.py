"""Requests of the transport's own session go straight to urllib3's pool
(idsync_client/pooled.py), and still behave as requests would make them:
headers, cookies, redirects, a path in the server URL, every failure
classified the same. Whatever needs more goes through requests.

The server here is a small scripted HTTP server on 127.0.0.1 that records
each request it gets.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import responses

from idsync_client import Client, TemporaryError
from idsync_client.testing import Network
from idsync_client.transport import HttpTransport


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Scripted:
    """Answers per path: (status, extra headers, JSON body); 200 {} otherwise."""

    answers: dict[str, tuple[int, dict[str, str], object]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: _ScriptServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the real server

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        script = self.server.script
        script.seen.append(Seen(self.command, self.path, dict(self.headers), body))
        status, headers, payload = script.answers.get(self.path, (200, {}, {}))
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


class _ScriptServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.script = Scripted()


@pytest.fixture
def stub() -> Iterator[tuple[str, Scripted]]:
    server = _ScriptServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", server.script
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def counted_sends(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URLs that went through requests' ``Session.send``."""
    sent: list[str] = []
    original = requests.Session.send

    def send(self: requests.Session, request: requests.PreparedRequest, **kwargs: object):  # type: ignore[no-untyped-def]
        sent.append(str(request.url))
        return original(self, request, **kwargs)

    monkeypatch.setattr(requests.Session, "send", send)
    return sent


def test_plain_requests_skip_requests_and_keep_its_headers(stub, counted_sends) -> None:
    url, script = stub
    transport = HttpTransport(url, token="secret")
    try:
        transport.request("POST", "/v1/stores/notes/push", raw_body='{"a":"é"}')
        transport.request("GET", "/v1/stores/notes/changes", params={"cursor": "c 1", "wait": 0.5})
    finally:
        transport.close()
    assert counted_sends == []  # straight to urllib3's pool
    push, pull = script.seen
    assert push.body == '{"a":"é"}'.encode()
    assert push.headers["Content-Length"] == str(len(push.body))
    for seen in (push, pull):
        assert seen.headers["Authorization"] == "Bearer secret"
        assert seen.headers["Content-Type"] == "application/json"
        assert seen.headers["User-Agent"].startswith("python-requests/")  # the session's headers
    assert pull.path == "/v1/stores/notes/changes?cursor=c+1&wait=0.5"


@pytest.mark.parametrize("setting", ["hook", "auth", "params"])
def test_what_only_requests_applies_sends_through_requests(
    stub, counted_sends, setting: str
) -> None:
    """An app's response hook, auth or default params on the transport's
    session are applied: such requests go through requests."""
    url, script = stub
    transport = HttpTransport(url)
    heard: list[int] = []
    if setting == "hook":
        transport.session.hooks["response"].append(lambda r, **kw: heard.append(r.status_code))
    elif setting == "auth":
        transport.session.auth = ("app", "pw")
    else:
        transport.session.params = {"tenant": "a"}
    try:
        transport.request("GET", "/v1/health")
    finally:
        transport.close()
    assert len(counted_sends) == 1
    if setting == "hook":
        assert heard == [200]
    elif setting == "auth":
        assert script.seen[0].headers["Authorization"].startswith("Basic ")
    else:
        assert script.seen[0].path == "/v1/health?tenant=a"


def test_headers_set_on_the_session_later_are_sent(stub) -> None:
    url, script = stub
    transport = HttpTransport(url)
    transport.session.headers["User-Agent"] = "notes-app/3.1"
    try:
        transport.request("GET", "/v1/health")
    finally:
        transport.close()
    assert script.seen[0].headers["User-Agent"] == "notes-app/3.1"


def test_a_session_header_set_to_none_is_left_out_and_the_requests_own_win(stub) -> None:
    url, script = stub
    transport = HttpTransport(url)
    transport.session.headers["Accept-Encoding"] = None  # requests' way to drop one
    transport.session.headers["content-type"] = "text/plain"
    try:
        transport.request("POST", "/v1/stores/notes/push", raw_body="{}")
    finally:
        transport.close()
    sent = {name.lower(): value for name, value in script.seen[0].headers.items()}
    assert sent.get("accept-encoding", "identity") == "identity"  # not the session's gzip
    assert sent["content-type"] == "application/json"


def test_a_path_in_the_server_url_prefixes_every_request(stub) -> None:
    url, script = stub
    script.answers["/sync/v1/health"] = (200, {}, {"status": "ok"})
    transport = HttpTransport(url + "/sync/")
    try:
        assert transport.request("GET", "/v1/health") == {"status": "ok"}
    finally:
        transport.close()
    assert [seen.path for seen in script.seen] == ["/sync/v1/health"]


def test_cookies_the_server_sets_are_sent_back(stub) -> None:
    # A load balancer's sticky-session cookie, as requests' session keeps it.
    url, script = stub
    script.answers["/v1/health"] = (200, {"Set-Cookie": "lb=node-2; Path=/"}, {})
    transport = HttpTransport(url)
    try:
        transport.request("GET", "/v1/health")
        transport.request("GET", "/v1/stores/notes")
    finally:
        transport.close()
    assert "Cookie" not in script.seen[0].headers
    assert script.seen[1].headers["Cookie"] == "lb=node-2"


def test_a_redirect_is_followed(stub) -> None:
    url, script = stub
    script.answers["/v1/stores/notes/push"] = (307, {"Location": "/v2/push"}, {})
    script.answers["/v2/push"] = (200, {}, {"outcomes": []})
    transport = HttpTransport(url)
    try:
        assert transport.request("POST", "/v1/stores/notes/push", raw_body="{}") == {
            "outcomes": []
        }
    finally:
        transport.close()
    assert [(s.method, s.path, s.body) for s in script.seen][-1] == ("POST", "/v2/push", b"{}")


@pytest.mark.parametrize("route", ["https", "proxy"])
def test_tls_and_proxies_are_left_to_requests(counted_sends, route: str) -> None:
    """HTTPS keeps requests' certificate checks (its CA bundle, client
    certificates); a proxy is requests' to speak to. Nothing listens here:
    the request fails, but it went through requests."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    scheme = "https" if route == "https" else "http"
    transport = HttpTransport(f"{scheme}://127.0.0.1:{port}")
    if route == "proxy":
        transport.session.proxies = {"http": f"http://127.0.0.1:{port}"}
    try:
        with pytest.raises(TemporaryError):
            transport.request("GET", "/v1/health")
    finally:
        transport.close()
    assert counted_sends and all(sent.startswith(scheme) for sent in counted_sends)


def test_a_refused_connection_is_temporary_and_heard_at_once() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    transport = HttpTransport(f"http://127.0.0.1:{port}")
    heard: list[str] = []
    transport.on_unreachable = heard.append
    with pytest.raises(TemporaryError, match="cannot reach the server") as caught:
        transport.request("GET", "/v1/health")
    assert not caught.value.timeout
    assert heard == [str(caught.value)]


def test_an_answer_cut_short_is_temporary(stub) -> None:
    # A server that sends headers promising more body than it sends, then closes.
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"a\":")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    transport = HttpTransport(f"http://127.0.0.1:{listener.getsockname()[1]}")
    try:
        with pytest.raises(TemporaryError, match="cannot reach the server"):
            transport.request("GET", "/v1/health")
    finally:
        thread.join(5)
        listener.close()
        transport.close()


@responses.activate
def test_a_library_that_replaces_the_adapter_sees_every_request() -> None:
    responses.add(responses.GET, "http://idsync.test/v1/health", json={"status": "faked"})
    transport = HttpTransport("http://idsync.test")
    assert transport.request("GET", "/v1/health") == {"status": "faked"}


def test_an_adapter_mounted_over_the_transports_own_gets_every_request(
    server, store, tmp_path
) -> None:
    with Client(tmp_path / "a.db", server.url) as client:
        net = Network(client)  # mounts the testing kit's adapter
        client.store(store).add(1)
        client.sync()
        assert any(what.endswith(f"/v1/stores/{store}/push") for what, _, _ in net.log)
