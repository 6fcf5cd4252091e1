"""A push of several batches sends the next batch while it settles the one
before, and never before that one's answer: the server applies the outbox in
order, each change once, whatever fails on the way."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from idsync_client import Client, TemporaryError

from .conftest import Api, fast_policy


def _client(tmp_path: Path, url: str) -> Client:
    return Client(tmp_path / "c.db", url, batch_size=10, retry=fast_policy())


def _logged(api: Api, store: str) -> list[str]:
    return [c["key"] for c in api.pull_all(store)[0]]


def test_the_next_batch_goes_while_the_last_settles_never_before_its_answer(
    tmp_path: Path, server, api: Api, store: str
) -> None:
    events: list[tuple[str, int]] = []
    sent = {n: threading.Event() for n in range(1, 46, 10)}
    overlapped: list[bool] = []
    lock = threading.Lock()
    with _client(tmp_path, server.url) as client:
        notes = client.store(store)
        keys = notes.add_many([{"value": {"i": i}} for i in range(45)])
        transport, db = client.transport, client.db
        assert transport is not None
        push, settle = transport.push, db.settle

        def traced_push(s: str, client_id: str, wire: list[str]) -> Any:
            first = int(wire[0].split('"n":')[1].split(",")[0])
            with lock:
                events.append(("sent", first))
            sent[first].set()
            try:
                return push(s, client_id, wire)
            finally:
                with lock:
                    events.append(("answered", first))

        def traced_settle(s: str, entries: Any, *args: Any, **kwargs: Any) -> Any:
            first = entries[0].n
            if first + 10 in sent:  # not the last batch: the next one is on its way
                overlapped.append(sent[first + 10].wait(5))
            with lock:
                events.append(("settled", first))
            return settle(s, entries, *args, **kwargs)

        transport.push = traced_push  # type: ignore[method-assign]
        db.settle = traced_settle  # type: ignore[method-assign]
        client.sync()
        assert client.status.pending == 0
    assert overlapped == [True] * 4  # each batch but the last settled while the next went
    for before in range(1, 41, 10):
        # Sent only once the batch before was answered.
        assert events.index(("answered", before)) < events.index(("sent", before + 10))
    assert _logged(api, store) == keys  # in order, each once


def test_a_batch_that_fails_ahead_is_sent_again_in_order(
    tmp_path: Path, server, api: Api, store: str
) -> None:
    """Every request from the worker thread fails: each batch sent ahead is
    sent again by the pushing thread; nothing is lost, doubled or reordered."""
    with _client(tmp_path, server.url) as client:
        notes = client.store(store)
        keys = notes.add_many([{"value": {"i": i}} for i in range(35)])
        transport = client.transport
        assert transport is not None
        push = transport.push
        failed: list[str] = []

        def flaky(*args: Any) -> Any:
            if threading.current_thread().name.startswith("idsync-fetch"):
                failed.append(threading.current_thread().name)
                raise TemporaryError("the link dropped")
            return push(*args)

        transport.push = flaky  # type: ignore[method-assign]
        client.sync()
        assert failed, "batches were sent ahead"
        assert client.status.pending == 0
    assert _logged(api, store) == keys


def test_a_settle_that_fails_leaves_the_batch_ahead_unsettled(
    tmp_path: Path, server, api: Api, store: str
) -> None:
    """The local file fails while the next batch is on its way: the push
    stops, and both batches go again later, answered with their first
    outcomes (each change logged once)."""
    with _client(tmp_path, server.url) as client:
        notes = client.store(store)
        keys = notes.add_many([{"value": {"i": i}} for i in range(25)])
        db = client.db
        settle = db.settle
        calls = [0]

        def failing_once(*args: Any, **kwargs: Any) -> Any:
            calls[0] += 1
            if calls[0] == 2:
                raise OSError("disk I/O error")
            return settle(*args, **kwargs)

        db.settle = failing_once  # type: ignore[method-assign]
        with pytest.raises(OSError):
            client._engine.push(store)  # type: ignore[union-attr]
        assert db.pending_count(store) == 15  # the second and third batches
        db.settle = settle  # type: ignore[method-assign]
        client.sync()
        assert client.status.pending == 0 and client.rejected() == []
    assert _logged(api, store) == keys
