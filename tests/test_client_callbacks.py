"""Callback registration refuses what cannot be called, and a failing callback
never makes a public call raise after its data committed."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from idsync_client import Client, RetryPolicy
from idsync_client.protocol import ProtocolViolation
from idsync_client.testing import ServerProcess


def _client(path: Path, server: ServerProcess) -> Client:
    return Client(path, server.url, retry=RetryPolicy(max_attempts=2, sleep=lambda s: None))


@pytest.mark.parametrize("bad", [None, 5, "print"])
def test_on_status_refuses_what_is_not_callable(
    bad: Any, tmp_path: Path, server: ServerProcess
) -> None:
    client = _client(tmp_path / "c.db", server)
    try:
        with pytest.raises(TypeError):
            client.on_status(bad)
        store = client.store(f"b{uuid.uuid4().hex[:12]}")
        store.add("v")  # writes, sync and close work as before
        client.sync()
        with pytest.raises(TypeError):
            store.subscribe(bad)
        store.add("w")
        client.sync()
    finally:
        client.close()
    assert client.status.state == "closed"


@pytest.mark.parametrize("index", ["", "a\x00b", "i" * 300])
def test_subscribe_refuses_an_index_item_no_record_can_carry(
    index: str, tmp_path: Path
) -> None:
    with Client(tmp_path / "c.db") as client, pytest.raises(ProtocolViolation):
        client.store("s").subscribe(lambda e: None, index=index)


def test_failing_callbacks_never_fail_a_committed_call(
    tmp_path: Path, server: ServerProcess
) -> None:
    calls: list[str] = []

    def wrong_arity() -> None:  # called with one argument: TypeError inside
        calls.append("never")

    def boom(_: object) -> None:
        calls.append("boom")
        raise RuntimeError("listener failed")

    client = _client(tmp_path / "c.db", server)
    client.on_status(wrong_arity)  # type: ignore[arg-type]
    client.on_status(boom)
    store = client.store(f"b{uuid.uuid4().hex[:12]}")
    store.subscribe(boom)
    store.subscribe(wrong_arity)  # type: ignore[arg-type]
    key = store.add("v")
    assert store.get(key) is not None
    report = client.sync()
    assert report.pushed == 1
    client.start()
    store.add("w")
    assert client.flush(5)
    client.close()
    assert client.status.state == "closed"
    assert "boom" in calls and "never" not in calls


def test_flush_runs_the_calls_held_so_far_and_is_a_no_op_inside_a_callback() -> None:
    from idsync_client.subscriptions import CallbackQueue

    queue = CallbackQueue()
    ran: list[str] = []

    def nested() -> None:
        ran.append("nested")

    def first() -> None:
        ran.append("first")
        queue.call(nested)
        queue.flush()  # inside a callback: the running drain takes it, in order
        ran.append("first done")

    with queue.held():
        queue.call(first)
        assert ran == []
        queue.flush()
        assert ran == ["first", "first done", "nested"]
        queue.call(lambda: ran.append("later"))
        assert ran[-1] == "nested", "held again after the flush"
    assert ran == ["first", "first done", "nested", "later"]
