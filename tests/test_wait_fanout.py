"""One write waking many long-polls: one storage pull per distinct page, each
wait's own access checked, and a parked wait that costs a future, not a task."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from idsync_server_ref.api import ServerApp
from idsync_server_ref.asgi import HANGUP_KEY, Hangup
from idsync_server_ref.config import ServerConfig
from idsync_server_ref.http_server import HeadWithBody
from idsync_server_ref.process import ServerProcess
from idsync_server_ref.storage import SqliteStorage

from .conftest import Api, add
from .test_server_auth import make_users
from .test_server_load import LIVE, open_request, read_response, wait_until_waiting


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    return session


def wait_request(cursors: dict[str, str], headers: str = "", **fields: Any) -> bytes:
    """The bytes of a ``POST /v1/wait`` asking for pages, parked for 30 s."""
    body = json.dumps({"cursors": cursors, "wait": 30, "pages": True, **fields}).encode()
    head = (
        "POST /v1/wait HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"{headers}Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def woken(url: str, headers: dict[str, str] | None = None) -> tuple[float, float]:
    """The server's count of looks and pulls made for woken long-polls, from /metrics."""
    text = _session().get(f"{url}/metrics", headers=headers, timeout=10).text
    found = {
        name: float(value)
        for name, value in re.findall(r"^idsync_woken_wait_(looks|pulls)_total (\S+)$", text, re.M)
    }
    return found["looks"], found["pulls"]


def answers(socks: list[socket.socket]) -> list[dict[str, Any]]:
    """Every socket's answer (200 expected), decoded."""
    out = []
    for sock in socks:
        status, _, body = read_response(sock, LIVE)
        assert status == 200, body
        out.append(json.loads(body))
    return out


@contextmanager
def parked(port: int, requests_: list[bytes]) -> Iterator[list[socket.socket]]:
    socks = [open_request(port, request) for request in requests_]
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


def test_waits_woken_by_one_push_share_one_pull(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "s.sqlite3") as proc:
        api = Api(proc.url)
        api.create_store("fan")
        _, cursor = api.pull_all("fan")
        with parked(proc.port, [wait_request({"fan": cursor})] * 20) as socks:
            wait_until_waiting(api, 20)
            looks, pulls = woken(proc.url)
            api.push("fan", "c1", [add(1, "wake")])
            got = answers(socks)
        pulled = api.call("GET", "/v1/stores/fan/changes", params={"cursor": cursor}).json()
        for answer in got:
            assert answer["changed"] == ["fan"] and answer["errors"] == {}
            assert answer["pages"] == {"fan": pulled}
            assert [c["key"] for c in answer["pages"]["fan"]["changes"]] == ["wake"]
        assert woken(proc.url) == (looks + 20, pulls + 1)


def test_pulls_woken_by_one_push_share_one_pull(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "s.sqlite3") as proc:
        api = Api(proc.url)
        api.create_store("fan")
        _, cursor = api.pull_all("fan")
        poll = f"GET /v1/stores/fan/changes?cursor={cursor}&wait=30 HTTP/1.1\r\nHost: x\r\n\r\n"
        with parked(proc.port, [poll.encode()] * 10) as socks:
            wait_until_waiting(api, 10)
            looks, pulls = woken(proc.url)
            api.push("fan", "c1", [add(1, "wake")])
            got = answers(socks)
        assert all([c["key"] for c in answer["changes"]] == ["wake"] for answer in got)
        assert woken(proc.url) == (looks + 10, pulls + 1)


def test_waits_asking_other_pages_get_their_own(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "s.sqlite3") as proc:
        api = Api(proc.url)
        api.create_store("fan")
        api.create_store("side")
        _, cursor = api.pull_all("fan")
        _, side = api.pull_all("side")
        small = [wait_request({"fan": cursor}, limit=1)] * 4
        whole = [wait_request({"fan": cursor})] * 4
        both = [wait_request({"side": side, "fan": cursor})] * 4
        with parked(proc.port, small + whole + both) as socks:
            wait_until_waiting(api, 12)
            looks, pulls = woken(proc.url)
            api.push("fan", "c1", [add(1, "k1"), add(2, "k2"), add(3, "k3")])
            got = answers(socks)
        for answer in got[:4]:
            page = answer["pages"]["fan"]
            assert [c["key"] for c in page["changes"]] == ["k1"] and page["more"] is True
        for answer in got[4:]:
            assert answer["changed"] == ["fan"] and set(answer["pages"]) == {"fan"}
            page = answer["pages"]["fan"]
            assert [c["key"] for c in page["changes"]] == ["k1", "k2", "k3"]
            assert page["more"] is False
        # Two distinct pages (limit 1, the default limit): two pulls for twelve looks.
        assert woken(proc.url) == (looks + 12, pulls + 2)


def test_a_wait_whose_read_access_was_taken_gets_no_page(tmp_path: Path) -> None:
    db = tmp_path / "users.sqlite3"
    tokens = make_users(db)
    auth = {kind: {"Authorization": f"Bearer {tokens[kind]}"} for kind in ("owner", "reader")}
    with ServerProcess(db, "--rate-limit", "0") as proc:
        url = proc.url
        session = _session()

        def call(kind: str, method: str, path: str, body: Any = None) -> requests.Response:
            return session.request(method, url + path, json=body, headers=auth[kind], timeout=10)

        assert call("owner", "POST", "/v1/stores", {"name": "alice.fan"}).ok
        assert call("owner", "PUT", "/v1/stores/alice.fan/access/rita", {"role": "reader"}).ok
        cursor = call("owner", "GET", "/v1/stores/alice.fan/changes").json()["cursor"]
        header = {kind: f"Authorization: Bearer {tokens[kind]}\r\n" for kind in auth}
        owners = [wait_request({"alice.fan": cursor}, header["owner"])] * 3
        readers = [wait_request({"alice.fan": cursor}, header["reader"])] * 3
        admin = {"Authorization": f"Bearer {tokens['admin']}"}
        with parked(proc.port, owners + readers) as socks:
            deadline_api = Api(url)
            deadline_api.session.headers.update(admin)
            wait_until_waiting(deadline_api, 6)
            # Taken while rita waits: her wait must not carry the store's page.
            assert call("owner", "DELETE", "/v1/stores/alice.fan/access/rita").ok
            looks, pulls = woken(url, admin)
            push = {"client_id": "c1", "changes": [add(1, "secret")]}
            assert call("owner", "POST", "/v1/stores/alice.fan/push", push).ok
            got = answers(socks)
        for answer in got[:3]:
            assert [c["key"] for c in answer["pages"]["alice.fan"]["changes"]] == ["secret"]
        for answer in got[3:]:
            assert answer["pages"] == {} and answer["changed"] == []
            assert answer["errors"]["alice.fan"]["code"] == "store_not_found"
            assert "secret" not in json.dumps(answer)
        assert woken(url, admin) == (looks + 6, pulls + 1)


# -- in process: what a parked wait costs, and a client that leaves ------------


def _scope(body: bytes, hangup: Hangup | None) -> dict[str, Any]:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/v1/wait",
        "raw_path": b"/v1/wait",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
    }
    if hangup is not None:
        scope["extensions"] = {HANGUP_KEY: hangup}
    return scope


class _Exchange:
    """One request to the app in process: its body, then a disconnect if told."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.left = asyncio.Event()
        self.sent: list[dict[str, Any]] = []
        self._read = False

    async def receive(self) -> dict[str, Any]:
        if not self._read:
            self._read = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


async def _until(condition: Any, seconds: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_a_parked_wait_costs_no_task_and_a_hang_up_frees_it(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "s.sqlite3")
    app = ServerApp(storage, ServerConfig())
    storage.create_store("fan", False)
    cursor = storage.pull("fan", None, 1, 1024).cursor.encode()
    body = json.dumps({"cursors": {"fan": cursor}, "wait": 30}).encode()

    async def scenario() -> None:
        hangups = [Hangup() for _ in range(40)]
        exchanges = [_Exchange(body) for _ in range(41)]
        # The last one comes from a server without the hang-up signal.
        scopes = [_scope(body, h) for h in hangups] + [_scope(body, None)]
        requests_ = [
            asyncio.ensure_future(app(scope, ex.receive, ex.send))
            for scope, ex in zip(scopes, exchanges, strict=True)
        ]
        await _until(lambda: app.notifier.parked() == 41)
        # One task per request (the HTTP server's) and this test's: nothing per wait.
        assert len(asyncio.all_tasks()) == 41 + 1 + 1  # + the fallback's receive() reader
        for hangup in hangups[:20]:
            hangup.fire()
        exchanges[40].left.set()
        await _until(lambda: app.notifier.parked() == 20)
        assert all(task.done() for task in requests_[:20]) and requests_[40].done()
        assert all(not ex.sent for ex in [*exchanges[:20], exchanges[40]])  # no one to answer
        app.notifier.notify("fan", 10**6)
        await asyncio.gather(*requests_[20:40])
        for ex in exchanges[20:40]:
            assert ex.sent[0]["status"] == 200
            assert json.loads(ex.sent[1]["body"]) == {"changed": ["fan"], "errors": {}}
        assert app.notifier.parked() == 0 and app._waiting == 0
        assert len(asyncio.all_tasks()) == 1

    try:
        asyncio.run(scenario())
    finally:
        app.close()
        storage.close()


# -- per answer: one send ---------------------------------------------------------


class _Transport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class _Cycle:
    response_started = False


def test_an_answer_goes_out_in_one_send_with_its_head() -> None:
    transport, cycle = _Transport(), _Cycle()
    held = HeadWithBody(transport, cycle)  # type: ignore[arg-type]
    held.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # before the response: not held
    cycle.response_started = True
    held.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    assert transport.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    held.write(b"{}")
    assert transport.writes[1:] == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]
    assert held.is_closing() is False  # the rest is the real transport's
    # A head with no body after it (the app failed) still goes out before a close.
    transport, cycle = _Transport(), _Cycle()
    held = HeadWithBody(transport, cycle)  # type: ignore[arg-type]
    cycle.response_started = True
    held.write(b"HTTP/1.1 200 OK\r\n\r\n")
    held.close()
    assert transport.writes == [b"HTTP/1.1 200 OK\r\n\r\n"] and transport.closed
