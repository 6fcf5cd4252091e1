"""The HTTP layer under many connections: waiting costs no thread, slow clients
cost no one else, a stop answers whoever waits. Liveness bounds, not benchmarks."""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from idsync_client import Client
from idsync_client.retry import RetryPolicy
from idsync_server_ref.process import ServerProcess

from .conftest import Api, add

#: How long a request may take while the server is loaded: generous, a liveness bound.
LIVE = 5.0


@pytest.fixture(autouse=True)
def _enough_open_files() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def timed(fn, *args, **kwargs):
    started = time.monotonic()
    result = fn(*args, **kwargs)
    return result, time.monotonic() - started


def open_request(port: int, request: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(request)
    return sock


def read_response(sock: socket.socket, timeout: float) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response from ``sock`` (Content-Length framed)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the body"
        body += chunk
    return int(lines[0].split()[1]), headers, body


def long_poll(store: str, cursor: str, wait: int = 30) -> bytes:
    return (
        f"GET /v1/stores/{store}/changes?cursor={cursor}&wait={wait} HTTP/1.1\r\n"
        "Host: x\r\n\r\n"
    ).encode()


def wait_until_waiting(api: Api, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (waiting := api.call("GET", "/v1/health").json()["waiting"]) < count:
        assert time.monotonic() < deadline, f"only {waiting} of {count} long-polls waiting"
        time.sleep(0.05)


def test_300_idle_long_polls_leave_the_server_live(tmp_path) -> None:
    polls = 300
    with ServerProcess(
        tmp_path / "s.sqlite3", "--threads", "4", "--max-storage-queue", "1000"
    ) as proc:
        api = Api(proc.url)
        api.create_store("live")
        _, cursor = api.pull_all("live")
        socks = [open_request(proc.port, long_poll("live", cursor)) for _ in range(polls)]
        try:
            # Every one is parked in its wait, with 4 storage threads: none holds a thread.
            wait_until_waiting(api, polls)
            health, elapsed = timed(api.call, "GET", "/v1/health")
            assert health.status_code == 200 and elapsed < LIVE
            api.create_store("other")
            out, elapsed = timed(api.push, "other", "c1", [add(1, "o1")])
            assert out[0]["status"] == "applied" and elapsed < LIVE
            (changes, _), elapsed = timed(api.pull_all, "other")
            assert [c["key"] for c in changes] == ["o1"] and elapsed < LIVE
            # A push to the store they wait on wakes every one of them.
            started = time.monotonic()
            api.push("live", "c1", [add(1, "wake")])
            for sock in socks:
                status, _, body = read_response(sock, LIVE)
                assert status == 200
                assert [c["key"] for c in json.loads(body)["changes"]] == ["wake"]
            assert time.monotonic() - started < LIVE
        finally:
            for sock in socks:
                sock.close()


def test_slow_header_clients_do_not_block_and_are_dropped(tmp_path) -> None:
    slow = 50
    with ServerProcess(tmp_path / "s.sqlite3", "--header-timeout", "2") as proc:
        api = Api(proc.url)
        socks = [open_request(proc.port, b"GET /v1/health HTTP/1.1\r\nHost") for _ in range(slow)]
        stop = threading.Event()

        def trickle() -> None:
            # One more header byte per client per second, never the end of the headers.
            for _ in range(20):
                for sock in socks:
                    with contextlib.suppress(OSError):
                        sock.send(b"x")
                if stop.wait(1.0):
                    return

        trickler = threading.Thread(target=trickle)
        trickler.start()
        try:
            health, elapsed = timed(api.call, "GET", "/v1/health")
            assert health.status_code == 200 and elapsed < LIVE
            # Past the header deadline, the server hangs up on every slow client.
            for sock in socks:
                sock.settimeout(10)
                with contextlib.suppress(ConnectionResetError):
                    assert sock.recv(1024) == b""
            assert api.call("GET", "/v1/health").status_code == 200
        finally:
            stop.set()
            trickler.join(timeout=5)
            for sock in socks:
                sock.close()


def test_slow_body_is_dropped_and_others_are_served(tmp_path) -> None:
    with ServerProcess(tmp_path / "s.sqlite3", "--body-timeout", "1") as proc:
        api = Api(proc.url)
        api.create_store("b")
        sock = open_request(
            proc.port,
            b"POST /v1/stores/b/push HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"client_id\"",
        )
        with sock:
            health, elapsed = timed(api.call, "GET", "/v1/health")
            assert health.status_code == 200 and elapsed < LIVE
            sock.settimeout(10)
            (data, elapsed) = timed(sock.recv, 1024)
            assert data == b"" and elapsed < LIVE, "the slow body was not dropped"
        assert api.call("GET", "/v1/stores/b").json()["head_seq"] == 0


def test_a_long_poll_whose_client_left_stops_waiting(tmp_path) -> None:
    with ServerProcess(tmp_path / "s.sqlite3") as proc:
        api = Api(proc.url)
        api.create_store("gone")
        _, cursor = api.pull_all("gone")
        socks = [open_request(proc.port, long_poll("gone", cursor)) for _ in range(10)]
        wait_until_waiting(api, 10)
        for sock in socks:
            sock.close()
        deadline = time.monotonic() + 10
        while api.call("GET", "/v1/health").json()["waiting"] > 0:
            assert time.monotonic() < deadline, "long-polls kept waiting for no one"
            time.sleep(0.05)


def test_stop_answers_waiting_long_polls(tmp_path) -> None:
    proc = ServerProcess(tmp_path / "s.sqlite3").start()
    socks: list[socket.socket] = []
    try:
        api = Api(proc.url)
        api.create_store("st")
        _, cursor = api.pull_all("st")
        socks = [open_request(proc.port, long_poll("st", cursor)) for _ in range(5)]
        body = json.dumps({"cursors": {"st": cursor}, "wait": 30}).encode()
        socks.append(
            open_request(
                proc.port,
                b"POST /v1/wait HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body,
            )
        )
        wait_until_waiting(api, len(socks))
        started = time.monotonic()
        stopper = threading.Thread(target=proc.stop)
        stopper.start()
        for sock in socks:
            status, headers, raw = read_response(sock, 5)
            assert status == 503 and headers["retry-after"] == "2"
            assert json.loads(raw)["error"]["code"] == "shutting_down"
        assert time.monotonic() - started < 1.5, "long-polls were not answered promptly"
        stopper.join(timeout=15)
        assert proc.proc is not None and proc.proc.returncode == 0
    finally:
        for sock in socks:
            sock.close()
        proc.kill()


def test_connections_past_the_limit_get_503(tmp_path) -> None:
    with ServerProcess(tmp_path / "s.sqlite3", "--max-connections", "20") as proc:
        api = Api(proc.url)
        assert api.call("GET", "/v1/health").status_code == 200
        api.session.close()
        idle = [socket.create_connection(("127.0.0.1", proc.port)) for _ in range(20)]
        try:
            sock = open_request(proc.port, b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            with sock:
                (status, headers, body), elapsed = timed(read_response, sock, LIVE)
            assert status == 503 and headers["retry-after"] == "1" and elapsed < LIVE
            assert json.loads(body)["error"]["code"] == "server_busy"
        finally:
            for sock in idle:
                sock.close()
        deadline = time.monotonic() + 10
        while True:  # the server notices the closed connections and takes new ones
            fresh = Api(proc.url)
            if fresh.call("GET", "/v1/health").status_code == 200:
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)


#: The issue's bound for a normal request beside many slow connections.
NORMAL = 2.0


def test_300_trickling_connections_leave_push_pull_and_health_fast(tmp_path) -> None:
    slow = 300
    with ServerProcess(tmp_path / "s.sqlite3", "--header-timeout", "8") as proc:
        api = Api(proc.url)
        api.create_store("t")
        socks = [open_request(proc.port, b"GET /v1/health HTTP/1.1\r\nHost") for _ in range(slow)]
        stop = threading.Event()

        def trickle() -> None:
            for _ in range(20):
                for sock in socks:
                    with contextlib.suppress(OSError):
                        sock.send(b"x")
                if stop.wait(0.5):
                    return

        trickler = threading.Thread(target=trickle)
        trickler.start()
        try:
            for n in range(1, 4):  # more than one round, while the trickle goes on
                health, elapsed = timed(api.call, "GET", "/v1/health")
                assert health.status_code == 200 and elapsed < NORMAL
                out, elapsed = timed(api.push, "t", "c1", [add(n, f"k{n}")])
                assert out[0]["status"] == "applied" and elapsed < NORMAL
                (changes, _), elapsed = timed(api.pull_all, "t")
                assert len(changes) == n and elapsed < NORMAL
        finally:
            stop.set()
            trickler.join(timeout=15)
            for sock in socks:
                sock.close()


def test_clients_carry_on_across_a_restart_on_the_same_port(tmp_path) -> None:
    db = tmp_path / "s.sqlite3"
    proc = ServerProcess(db).start()
    port = proc.port
    policy = RetryPolicy(max_attempts=2, sleep=lambda s: None)
    clients = [Client(tmp_path / f"c{i}.db", proc.url, retry=policy) for i in range(3)]
    written: list[list[str]] = [[] for _ in clients]
    restarted = threading.Event()

    def work(i: int, client: Client) -> None:
        # Write and sync until well after the restart; failed syncs are expected
        # while the server is down.
        for round_ in range(200):
            written[i].append(client.store("notes").add({"c": i, "round": round_}))
            with contextlib.suppress(Exception):
                client.sync()
            if restarted.is_set() and round_ >= 20 and len(written[i]) >= 30:
                return

    try:
        threads = [threading.Thread(target=work, args=(i, c)) for i, c in enumerate(clients)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while min(len(w) for w in written) < 10:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert proc.stop() == 0
        proc = ServerProcess(db, port=port).start()
        restarted.set()
        for thread in threads:
            thread.join(timeout=60)
            assert not thread.is_alive()
        for client in clients:  # settle: every write acknowledged
            for _ in range(10):
                client.sync()
                if not any(r.pending for r in client.store("notes")):
                    break
            assert not any(r.pending for r in client.store("notes"))
        changes, _ = Api(proc.url).pull_all("notes")
        keys = [c["key"] for c in changes]
        assert sorted(keys) == sorted(k for w in written for k in w), "a write was lost"
        assert len(keys) == len(set(keys)), "a write was applied twice"
    finally:
        for client in clients:
            client.close()
        proc.stop()


def test_stop_with_300_long_polls_open_answers_every_one_at_once(tmp_path) -> None:
    polls = 300
    proc = ServerProcess(tmp_path / "s.sqlite3", "--max-storage-queue", "1000").start()
    socks: list[socket.socket] = []
    try:
        api = Api(proc.url)
        api.create_store("st")
        _, cursor = api.pull_all("st")
        socks = [open_request(proc.port, long_poll("st", cursor)) for _ in range(polls)]
        wait_until_waiting(api, polls)
        started = time.monotonic()
        stopper = threading.Thread(target=proc.stop)
        stopper.start()
        for sock in socks:
            status, _, raw = read_response(sock, 5)
            assert status == 503 and json.loads(raw)["error"]["code"] == "shutting_down"
        assert time.monotonic() - started < NORMAL, "long-polls were not answered at once"
        stopper.join(timeout=15)
        assert proc.proc is not None and proc.proc.returncode == 0
    finally:
        for sock in socks:
            sock.close()
        proc.kill()
