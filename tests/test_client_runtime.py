"""Callbacks that call back into the client, and a close() that ends everything promptly."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from idsync_client import Client, ClientClosed, SyncReport
from idsync_client.testing import Network

from .conftest import fast_policy, wait_for


def run_bounded(fn: Callable[[], object], seconds: float = 20.0) -> object:
    """Run ``fn`` in a thread; fail (instead of hanging) if it does not end in time."""
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "deadlock: the call never returned"
    assert result, "the call raised"
    return result[0]


@pytest.fixture
def make_client(tmp_path, server):
    clients: list[Client] = []

    def make(name: str, **kwargs) -> Client:
        kwargs.setdefault("retry", fast_policy())
        client = Client(tmp_path / f"{name}.db", server.url, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def remote_add(api, store: str, key: str, value: object = 1) -> None:
    api.push(
        store, f"writer-{key}", [{"n": 1, "op": "add", "key": key, "index": [], "value": value}]
    )


def sync_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("idsync-")]


# -- callbacks -----------------------------------------------------------------


def test_a_subscription_callback_may_call_sync(make_client, api, store) -> None:
    client = make_client("a")
    notes = client.store(store)
    inner: list[object] = []

    def on_change(event) -> None:
        if event.origin == "remote" and not inner:
            inner.append(client.sync())

    notes.subscribe(on_change)
    remote_add(api, store, "from-elsewhere")
    report = run_bounded(client.sync)
    assert isinstance(report, SyncReport) and report.pulled == 1
    assert len(inner) == 1 and isinstance(inner[0], SyncReport)
    assert client.status.state == "online"


def test_a_status_listener_may_call_sync(make_client, store) -> None:
    client = make_client("a")
    client.store(store).add({"x": 1})
    states: list[str] = []

    def on_status(status) -> None:
        states.append(status.state)
        if status.state == "syncing" and states.count("syncing") == 1:
            client.sync()

    client.on_status(on_status)
    run_bounded(client.sync)
    assert states.count("syncing") == 2 and states[-1] == "online"


def test_a_callback_on_a_sync_thread_may_close_the_client(make_client, api, store) -> None:
    client = make_client("a", long_poll=2)
    notes = client.store(store)
    closed = threading.Event()
    errors: list[BaseException] = []

    def on_change(event) -> None:
        if event.origin == "remote":
            try:
                client.close()
            except BaseException as exc:
                errors.append(exc)
            closed.set()

    notes.subscribe(on_change)
    earlier = set(sync_threads())  # other clients' threads, still ending
    client.start()
    remote_add(api, store, "closing")
    assert closed.wait(15)
    assert errors == []
    assert client.status.state == "closed"
    assert wait_for(lambda: set(sync_threads()) <= earlier, 5), sync_threads()
    with pytest.raises(ClientClosed):
        client.start()


def test_a_callback_on_a_sync_thread_may_write(make_client, api, store) -> None:
    client = make_client("a", long_poll=2)
    notes = client.store(store)

    def on_change(event) -> None:
        for record in event.added:
            if event.origin == "remote" and record.key == "question":
                notes.add({"answer": 42}, key="answer")

    notes.subscribe(on_change)
    client.start()
    remote_add(api, store, "question")
    assert wait_for(lambda: notes.get("answer") is not None)
    assert wait_for(lambda: client.status.pending == 0)
    keys = {c["key"] for c in api.pull_all(store)[0]}
    assert keys == {"question", "answer"}


def test_a_callback_that_raises_kills_nothing_and_others_still_hear(
    make_client, api, store
) -> None:
    client = make_client("a", long_poll=2)
    notes = client.store(store)
    heard: list[str] = []

    def bad(event) -> None:
        raise RuntimeError("app bug")

    def good(event) -> None:
        heard.extend(r.key for r in event.added if event.origin == "remote")

    notes.subscribe(bad)
    notes.subscribe(good)
    client.on_status(lambda status: 1 / 0)
    client.start()
    remote_add(api, store, "first")
    assert wait_for(lambda: heard == ["first"])
    remote_add(api, store, "second")
    assert wait_for(lambda: heard == ["first", "second"]), "the sync thread survived"
    assert {t.name for t in sync_threads()} >= {"idsync-push", "idsync-live"}


def test_events_caused_by_a_callback_come_after_the_event_being_delivered(tmp_path) -> None:
    with Client(tmp_path / "local.db") as client:
        notes = client.store("notes")
        order: list[str] = []

        def first(event) -> None:
            order.append(f"first:{event.added[0].value}")
            if event.added[0].value == "a":
                notes.add("b")  # its event waits until "a" reached everyone

        def second(event) -> None:
            order.append(f"second:{event.added[0].value}")

        notes.subscribe(first)
        notes.subscribe(second)
        notes.add("a")
        assert order == ["first:a", "second:a", "first:b", "second:b"]


# -- close ---------------------------------------------------------------------


def open_fds(path: Path) -> int:
    """Open file descriptors of this process on the database file (and its WAL/SHM)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(path)):
            count += 1
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_close_is_prompt_and_closes_every_thread_connection(make_client, api, store) -> None:
    others = [f"{store}-{i}" for i in range(3)]
    for name in others:
        api.create_store(name)
    client = make_client("a", long_poll=10)
    for name in [store, *others]:
        client.store(name).add({"in": name})
    client.start()
    assert wait_for(lambda: client.status.state == "online" and client.status.pending == 0)
    remote_add(api, store, "page-1")
    assert wait_for(lambda: client.store(store).get("page-1") is not None)
    assert open_fds(client.path) > 1, "sync threads hold connections (the test sees them)"
    started = time.monotonic()
    client.close()  # the long-polls are in flight
    took = time.monotonic() - started
    assert took < 1.0, f"close() took {took:.2f} s"
    assert open_fds(client.path) == 0
    assert wait_for(lambda: not any(t.name.startswith("idsync-fetch") for t in sync_threads()), 5)


def test_flush_pushes_pending_writes_within_its_timeout(make_client, api, store) -> None:
    client = make_client("a")
    notes = client.store(store)
    net = Network(client)
    net.offline()
    key = notes.add({"unsent": True})
    started = time.monotonic()
    assert client.flush(timeout=0.5) is False
    assert time.monotonic() - started < 1.5
    net.online()
    assert client.flush(timeout=10) is True
    assert [c["key"] for c in api.pull_all(store)[0]] == [key]
    later = notes.add({"on": "exit"})
    client.close(flush_timeout=10)
    assert later in {c["key"] for c in api.pull_all(store)[0]}


def test_a_round_failing_because_the_client_closes_logs_nothing(
    server, store, tmp_path, caplog
) -> None:
    """close() cuts the engine before it stops the background threads: a round
    failing in between (the local file closed) is no failure to log or show."""
    client = Client(tmp_path / "a.db", server.url, retry=fast_policy())
    client.store(store)
    client.start()
    background = client._background
    assert background is not None

    def cut_by_close() -> SyncReport:
        client._engine.close()
        raise ClientClosed("the client is closed")

    try:
        with caplog.at_level("WARNING", logger="idsync"):
            assert background._round(cut_by_close) is False
        assert "background sync failed" not in caplog.text
        assert client.status.last_error is None
    finally:
        client.close()
