"""The status tells the truth: online only after the server answered, and every transition."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import responses

from idsync_client import Client, PermanentError, TemporaryError
from idsync_client.transport import HttpTransport

from .conftest import fast_policy, wait_for


@contextlib.contextmanager
def tcp_server(handle: Callable[[socket.socket], None]) -> Iterator[str]:
    """A server on 127.0.0.1 that hands each connection it accepts to
    ``handle`` (on its accepting thread); its URL. On exit it stops, and
    every connection it accepted is closed."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    accepted: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(conn)
            handle(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        done.set()
        thread.join(2)
        listener.close()
        for conn in accepted:
            conn.close()


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A server that accepts connections and never answers (a dead link)."""
    with tcp_server(lambda conn: None) as url:
        yield url


def quick(client: Client) -> Client:
    """Short timeouts, so that a dead link shows within a second or two."""
    assert client.transport is not None
    client.transport.read_timeout = 0.4
    client.transport.poll_margin = 0.4
    return client


def test_timeouts_are_short_unless_a_wait_was_asked() -> None:
    transport = HttpTransport("http://127.0.0.1:9")
    assert (transport.connect_timeout, transport.read_timeout) == (5.0, 10.0)
    assert transport.poll_margin <= 5.0


def test_a_long_poll_times_out_after_its_wait_and_a_margin(black_hole) -> None:
    transport = HttpTransport(black_hole)
    transport.poll_margin = 0.3
    started = time.monotonic()
    with pytest.raises(TemporaryError, match="did not answer in time"):
        transport.pull("notes", None, wait=0.5)
    assert 0.7 <= time.monotonic() - started < 3.0
    transport.close()


def test_requests_use_tcp_keepalive(server) -> None:
    transport = HttpTransport(server.url)
    transport.request("GET", "/v1/health")
    pool = transport.session.get_adapter(server.url).poolmanager.connection_from_url(server.url)
    conn = pool._new_conn()  # a connection as the pool makes them
    conn.connect()
    try:
        assert conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    finally:
        conn.close()
        transport.close()


def test_a_black_holed_link_is_never_online_and_soon_offline(tmp_path, black_hole) -> None:
    with Client(tmp_path / "c.db", black_hole, retry=fast_policy(2), long_poll=0.5) as client:
        quick(client).store("notes")
        states: list[str] = []
        client.on_status(lambda status: states.append(status.state))
        client.start()
        assert client.status.state == "connecting", "started: not idle, not online yet"
        assert wait_for(lambda: client.status.state == "offline", 10), client.status
        assert "online" not in states, states
        assert not client.status.online


def test_sync_against_a_black_hole_fails_fast_and_says_offline(tmp_path, black_hole) -> None:
    with Client(tmp_path / "c.db", black_hole, retry=fast_policy(2)) as client:
        quick(client).store("notes").add({"a": 1})
        started = time.monotonic()
        with pytest.raises(TemporaryError):
            client.sync()
        assert time.monotonic() - started < 5
        assert client.status.state == "offline" and client.status.pending == 1


@responses.activate
def test_a_permanent_error_does_not_leave_syncing(tmp_path) -> None:
    url = "http://idsync.test"
    responses.add(
        responses.POST,
        f"{url}/v1/stores/notes/push",
        status=400,
        json={"error": {"code": "invalid_request", "message": "no", "retryable": False}},
    )
    with Client(tmp_path / "c.db", url, retry=fast_policy(2)) as client:
        client.store("notes").add({"a": 1})
        with pytest.raises(PermanentError):
            client.sync()
        assert client.status.state == "online", "the server answered"
        assert "400" in (client.status.last_error or "")


def test_a_round_without_requests_does_not_claim_online(tmp_path, black_hole) -> None:
    with Client(tmp_path / "c.db", black_hole, retry=fast_policy(2)) as client:
        report = client.sync()  # no store opened: nothing to ask the server
        assert report.pushed == report.pulled == 0
        assert client.status.state == "idle"


def test_an_abandoned_long_poll_changes_nothing_after_stop(tmp_path, server, api, store) -> None:
    with Client(tmp_path / "c.db", server.url, retry=fast_policy(2), long_poll=10) as client:
        notes = client.store(store)
        client.start()
        assert wait_for(lambda: client.status.state == "online")
        background = client._background
        assert wait_for(lambda: background._wait_thread is not None)  # the live wait is sent
        pull = background._wait_thread
        client.stop()  # "Work offline"; the long-poll is still in flight
        assert client.status.state == "idle"
        api.push(store, "other", [{"n": 1, "op": "add", "key": "late", "index": [], "value": 1}])
        pull.join(15)  # the long-poll returns with the change
        assert not pull.is_alive()
        assert client.status.state == "idle", "still offline as the app asked"
        assert notes.get("late") is None, "a page arriving after stop() is not applied"


def test_resets_are_reported_in_the_status(tmp_path, server, api) -> None:
    name = f"reset-{uuid.uuid4().hex[:6]}"
    api.create_store(name)
    with Client(tmp_path / "c.db", server.url, retry=fast_policy(2)) as client:
        client.store(name).add({"mine": 1})
        client.sync()
        assert (client.status.resets, client.status.last_reset) == (0, None)
        seen: list = []
        client.on_status(seen.append)
        api.call("DELETE", f"/v1/stores/{name}")
        api.create_store(name, recreate=True)
        before = time.time()
        assert client.sync().resets == 1
        assert client.status.resets == 1
        assert client.status.last_reset is not None and client.status.last_reset >= before
        assert any(s.resets == 1 for s in seen), "listeners hear of the reset"


@pytest.fixture
def holding_server() -> Iterator[tuple[str, threading.Event, list[socket.socket]]]:
    """A server that answers every request with ``{}``, except those whose
    path holds ``/hold``: those it keeps unanswered (the test cuts them)."""
    held: list[socket.socket] = []
    holding = threading.Event()

    def serve(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while head := conn.recv(65536):
                if b"/hold" in head.split(b"\r\n", 1)[0]:
                    held.append(conn)
                    holding.set()
                    return
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    def handle(conn: socket.socket) -> None:
        threading.Thread(target=serve, args=(conn,), daemon=True).start()

    with tcp_server(handle) as url:
        yield url, holding, held


def test_a_request_failing_after_a_later_one_was_answered_is_not_heard(
    holding_server: tuple[str, threading.Event, list[socket.socket]],
) -> None:
    """A long-poll sent into an outage that fails once the link is back
    (another request got its answer since) must not say offline."""
    url, holding, held = holding_server
    transport = HttpTransport(url)
    heard: list[str] = []
    transport.on_unreachable = heard.append
    failed: list[BaseException] = []

    def long_poll() -> None:
        try:
            transport.request("GET", "/hold", read_timeout=30)
        except TemporaryError as exc:
            failed.append(exc)

    try:
        older = threading.Thread(target=long_poll)
        older.start()
        assert holding.wait(5), "the first request reached the server"
        assert transport.request("GET", "/v1/health") == {}  # sent later, answered
        held.pop().close()  # the first fails now, with no answer
        older.join(10)
        assert len(failed) == 1, "the caller still gets its error (and retries)"
        assert heard == [], "a later request was answered: the link is up"
        # With no later answer, a failure is heard at once.
        newer = threading.Thread(target=long_poll)
        holding.clear()
        newer.start()
        assert holding.wait(5)
        held.pop().close()
        newer.join(10)
        assert len(failed) == 2 and heard == [str(failed[1])]
    finally:
        transport.close()


def test_a_round_that_fails_part_way_counts_pending_from_the_file(tmp_path, server, store) -> None:
    """Two batches of ten went before the link failed: the status says what
    is still pending, not what was pending before the round."""
    client = Client(tmp_path / "c.db", server.url, batch_size=10, retry=fast_policy(1))
    with client:
        notes = client.store(store)
        notes.add_many([{"value": {"i": i}} for i in range(30)])
        transport = client.transport
        assert transport is not None
        push, calls = transport.push, [0]

        def down_after_two(*args: object) -> object:
            calls[0] += 1
            if calls[0] > 2:
                raise TemporaryError("the link went down")
            return push(*args)  # type: ignore[arg-type]

        transport.push = down_after_two  # type: ignore[method-assign]
        with pytest.raises(TemporaryError):
            client.sync()
        assert client.db.pending_count(store) == 10
        assert client.status.pending == 10 and client.status.state == "offline"
