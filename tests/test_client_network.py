"""Network set-up the way requests users expect: proxies and CA bundles from the
environment, a session of the app's own, timeouts.

The proxy is a real one: a small forwarding HTTP proxy on 127.0.0.1 that
records each request line and passes it on to the server.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from requests.adapters import HTTPAdapter

from idsync_client import Client, TemporaryError
from idsync_client.transport import HttpTransport

PROXY_VARIABLES = (
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY",
    "http_proxy", "https_proxy", "all_proxy", "no_proxy",
    "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
)  # fmt: skip


class ForwardingProxy(ThreadingHTTPServer):
    """An HTTP proxy for http:// URLs (no CONNECT) that records what it forwards."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.seen: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _ProxyHandler(BaseHTTPRequestHandler):
    server: ForwardingProxy

    def _forward(self) -> None:
        target = urlsplit(self.path)  # a proxy gets the absolute URL
        self.server.seen.append(f"{self.command} {target.path}")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() != "proxy-connection"}
        upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        try:
            path = target.path + (f"?{target.query}" if target.query else "")
            upstream.request(self.command, path, body=body, headers=headers)
            answer = upstream.getresponse()
            payload = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_DELETE = _forward

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[ForwardingProxy]:
    server = ForwardingProxy()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_http_proxy_from_the_environment_carries_sync(
    server, store, proxy, clean_env, tmp_path
) -> None:
    clean_env.setenv("HTTP_PROXY", proxy.url)
    with Client(tmp_path / "a.db", server.url) as client:
        client.store(store).add({"via": "proxy"})
        client.sync()
        assert client.status.pending == 0
    assert f"POST /v1/stores/{store}/push" in proxy.seen
    assert any(line.startswith(f"GET /v1/stores/{store}/") for line in proxy.seen)


def test_no_proxy_bypasses_the_proxy(server, store, proxy, clean_env, tmp_path) -> None:
    clean_env.setenv("HTTP_PROXY", proxy.url)
    clean_env.setenv("NO_PROXY", "127.0.0.1,localhost")
    with Client(tmp_path / "a.db", server.url) as client:
        client.store(store).add({"via": "direct"})
        client.sync()
        assert client.status.pending == 0
    assert proxy.seen == []


def test_the_environment_is_read_once_when_the_client_opens(
    server, store, proxy, clean_env, tmp_path
) -> None:
    with Client(tmp_path / "a.db", server.url) as client:
        clean_env.setenv("HTTP_PROXY", proxy.url)  # too late for this client
        client.store(store).add(1)
        client.sync()
    assert proxy.seen == []


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_a_ca_bundle_from_the_environment_is_used(clean_env, tmp_path, variable) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("")
    clean_env.setenv(variable, str(bundle))
    transport = HttpTransport("https://sync.example")
    assert transport.session.verify == str(bundle)
    assert HttpTransport("https://sync.example", session=requests.Session()).session.verify is True


class RecordingAdapter(HTTPAdapter):
    """Records the headers of each request it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[dict[str, str]] = []

    def send(self, request, *args, **kwargs):  # type: ignore[no-untyped-def]
        self.sent.append(dict(request.headers))
        return super().send(request, *args, **kwargs)


def test_a_session_of_the_apps_own_is_used_with_its_adapters_and_headers(
    server, store, proxy, clean_env, tmp_path
) -> None:
    session = requests.Session()
    session.headers["User-Agent"] = "my-app/2.0"
    adapter = RecordingAdapter()
    session.mount("http://", adapter)
    session.proxies = {"http": proxy.url}
    with Client(tmp_path / "a.db", server.url, session=session) as client:
        assert client.transport is not None and client.transport.session is session
        client.store(store).add(1)
        client.sync()
        assert client.status.pending == 0
    assert adapter.sent and all(h["User-Agent"] == "my-app/2.0" for h in adapter.sent)
    assert f"POST /v1/stores/{store}/push" in proxy.seen  # its proxies too


def test_timeouts_bound_each_request(tmp_path) -> None:
    # A server that accepts connections and never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with Client(tmp_path / "a.db", url, timeouts=(1.0, 0.3)) as client:
            assert client.transport is not None
            started = time.monotonic()
            with pytest.raises(TemporaryError) as caught:
                client.transport.pull("notes", None)
            assert caught.value.timeout
            assert time.monotonic() - started < 3.0  # the default read timeout is 10 s


@pytest.mark.parametrize("timeouts", [(0, 1), (1, -1), (1,), "fast", (1, None)])
def test_bad_timeouts_are_refused_before_the_file_is_made(tmp_path, timeouts) -> None:
    path: Path = tmp_path / "a.db"
    with pytest.raises(ValueError, match="timeouts"):
        Client(path, "http://127.0.0.1:9", timeouts=timeouts)
    assert not path.exists()


def test_a_session_that_is_not_one_is_refused(tmp_path) -> None:
    with pytest.raises(TypeError, match=r"requests\.Session"):
        Client(tmp_path / "a.db", "http://127.0.0.1:9", session=object())  # type: ignore[arg-type]
    assert not (tmp_path / "a.db").exists()
