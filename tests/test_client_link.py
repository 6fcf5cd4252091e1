"""The link as the status shows it, and close() with requests in flight.

A black-holed server (it accepts connections and never answers) shows as
offline after the first failed attempt, while retries go on; close() cuts
every request in flight, so that no idsync thread outlives it and nothing
touches the local file afterwards.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from idsync_client import Client, RetryPolicy
from idsync_client.testing import ServerProcess


class BlackHole:
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="black-hole", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted.append(conn)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@pytest.fixture
def black_hole() -> Iterator[BlackHole]:
    hole = BlackHole()
    yield hole
    hole.close()


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` until true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def idsync_threads() -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.name.startswith("idsync"))


READ_TIMEOUT = 1.0


def _client(path: Path, url: str) -> Client:
    client = Client(path, url, retry=RetryPolicy(max_attempts=5))
    assert client.transport is not None
    client.transport.read_timeout = READ_TIMEOUT
    client.transport.connect_timeout = READ_TIMEOUT
    return client


def test_a_black_holed_server_shows_offline_after_the_first_failed_attempt(
    tmp_path: Path, black_hole: BlackHole
) -> None:
    client = _client(tmp_path / "c.db", black_hole.url)
    try:
        client.store("s").add("v")
        started = time.monotonic()
        client.start()
        assert wait_for(lambda: client.status.state == "offline", READ_TIMEOUT + 1.0), (
            f"still {client.status.state} after {time.monotonic() - started:.1f} s"
        )
        assert client.status.last_error
        assert client.status.pending == 1
    finally:
        client.close()


def test_sync_shows_offline_while_it_still_retries(
    tmp_path: Path, black_hole: BlackHole
) -> None:
    client = _client(tmp_path / "c.db", black_hole.url)
    states: list[tuple[float, str]] = []
    client.on_status(lambda s: states.append((time.monotonic(), s.state)))
    client.store("s").add("v")
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            client.sync()
        except BaseException as exc:
            outcome.append(exc)

    started = time.monotonic()
    thread = threading.Thread(target=run, name="test-sync", daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: client.status.state == "offline", READ_TIMEOUT + 1.0)
        assert thread.is_alive()  # the retries go on
    finally:
        client.close()
        thread.join(5)
    assert not thread.is_alive()
    first_offline = next(t for t, state in states if state == "offline")
    assert first_offline - started < READ_TIMEOUT + 1.0


def test_close_ends_a_wait_in_flight(tmp_path: Path, server: ServerProcess) -> None:
    before = set(idsync_threads())
    client = Client(tmp_path / "c.db", server.url, long_poll=20)
    client.store("s").add("v")
    client.start()
    assert client.flush(5)
    assert wait_for(lambda: client.status.state == "online", 5)
    assert wait_for(lambda: "idsync-wait" in idsync_threads(), 5)  # a wait is held
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < 1.0
    assert wait_for(lambda: set(idsync_threads()) <= before, 1.0), idsync_threads()


@pytest.mark.parametrize("flush_timeout", [None, 0.3])
def test_close_with_a_black_holed_server_leaves_no_thread(
    tmp_path: Path,
    black_hole: BlackHole,
    caplog: pytest.LogCaptureFixture,
    flush_timeout: float | None,
) -> None:
    before = set(idsync_threads())
    client = _client(tmp_path / "c.db", black_hole.url)
    client.transport.read_timeout = 30.0  # type: ignore[union-attr] # requests hang until cut
    client.store("s").add("v")
    client.start()
    assert wait_for(lambda: len(black_hole.accepted) >= 2, 5)  # a push and a wait in flight
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="idsync.client"):
        client.close(flush_timeout=flush_timeout)
        elapsed = time.monotonic() - started
        assert elapsed < (flush_timeout or 0.0) + 1.5
        assert wait_for(lambda: set(idsync_threads()) <= before, 1.0), idsync_threads()
    assert not [r for r in caplog.records if "closed database" in r.getMessage()]
    assert client.status.state == "closed"


def test_close_from_a_status_callback_on_the_failing_request(
    tmp_path: Path, black_hole: BlackHole
) -> None:
    """The app closes the client when it hears that the link is down; the
    callback may run on the thread whose request failed."""
    before = set(idsync_threads())
    client = _client(tmp_path / "c.db", black_hole.url)
    failures: list[BaseException] = []

    def on_status(status: object) -> None:
        if getattr(status, "state", None) == "offline":
            try:
                client.close()
            except BaseException as exc:
                failures.append(exc)

    client.on_status(on_status)
    client.store("s").add("v")
    client.start()
    assert wait_for(lambda: client.status.state == "closed", READ_TIMEOUT + 2.0)
    assert failures == []
    assert wait_for(lambda: set(idsync_threads()) <= before, 1.0), idsync_threads()
