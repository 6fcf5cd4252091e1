"""client.sync() of many stores: one POST /v1/wait for the news of all, pulls only where needed."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest

from idsync_client import Client, StoreDropped
from idsync_client.testing import Network, ServerProcess

from .conftest import Api, fast_policy


def kinds(net: Network, since: int = 0) -> Counter[str]:
    """The requests sent since ``since``, by kind: ``POST /v1/wait``, ``GET changes``, ..."""
    seen: Counter[str] = Counter()
    for what, _, _ in net.log[since:]:
        method, path = what.split(" ", 1)
        path = path.split("?", 1)[0]
        tail = path.rsplit("/", 1)[-1] if path.startswith("/v1/stores/") else path
        seen[f"{method} {tail}"] += 1
    return seen


def many(api: Api, count: int, prefix: str) -> list[str]:
    return [api.create_store(f"{prefix}-{i}")["name"] for i in range(count)]


@pytest.fixture
def own_server(tmp_path: Path):
    with ServerProcess(tmp_path / "server.sqlite3") as proc:
        yield proc


def test_a_no_op_sync_of_fifty_stores_is_one_request(tmp_path: Path, own_server) -> None:
    api = Api(own_server.url)
    names = many(api, 50, "noop")
    with Client(tmp_path / "w.db", own_server.url) as writer:
        for name in names:
            writer.store(name).add({"in": name})
        writer.sync()
    with Client(tmp_path / "r.db", own_server.url, retry=fast_policy(2)) as reader:
        net = Network(reader)
        for name in names:
            reader.store(name)
        reader.sync()  # first sync of each
        assert all(len(reader.store(name)) == 1 for name in names)
        reader.sync()  # the first wait asks the server's limits once
        sent = len(net.log)
        report = reader.sync()
        assert kinds(net, sent) == Counter({"POST /v1/wait": 1})
        assert report.pulled == 0 and reader.status.state == "online"


def test_ten_of_fifty_changed_come_in_one_wait_and_no_pull(tmp_path: Path, own_server) -> None:
    api = Api(own_server.url)
    names = many(api, 50, "ten")
    with (
        Client(tmp_path / "w.db", own_server.url) as writer,
        Client(tmp_path / "r.db", own_server.url, retry=fast_policy(2)) as reader,
    ):
        net = Network(reader)
        for name in names:
            reader.store(name)
        reader.sync()
        reader.sync()  # the first wait asks the server's limits once
        heard: list[str] = []
        for name in names:
            reader.store(name).subscribe(lambda e: heard.extend(r.key for r in e.added))
        changed = names[::5]
        keys = [writer.store(name).add({"in": name}) for name in changed]
        writer.sync()
        sent = len(net.log)
        report = reader.sync()
        assert kinds(net, sent) == Counter({"POST /v1/wait": 1})
        assert report.pulled == 10
        assert sorted(heard) == sorted(keys), "each change told once"
        assert all(reader.store(n).get(k) is not None for n, k in zip(changed, keys, strict=True))
        sent = len(net.log)
        assert reader.sync().pulled == 0, "the cursors moved with the pages"
        assert kinds(net, sent) == Counter({"POST /v1/wait": 1})
        assert len(heard) == 10


def test_pages_cut_by_bytes_still_deliver_everything(tmp_path: Path, own_server) -> None:
    api = Api(own_server.url)
    names = many(api, 6, "cut")
    big = "x" * 50_000
    with (
        Client(tmp_path / "w.db", own_server.url) as writer,
        Client(tmp_path / "r.db", own_server.url, retry=fast_policy(2)) as reader,
    ):
        net = Network(reader)
        for name in names:
            reader.store(name)
        reader.sync()
        for name in names:  # ~400 KB a store, 2.4 MB in all: over both bounds
            writer.store(name).add_many([{"value": {"b": big, "i": i}} for i in range(8)])
        writer.sync()
        sent = len(net.log)
        report = reader.sync()
        assert report.pulled == 48
        assert all(len(reader.store(name)) == 8 for name in names)
        seen = kinds(net, sent)
        assert seen["POST /v1/wait"] == 1 and seen["GET changes"] >= 1


def test_a_dropped_store_in_a_round_is_told_and_the_others_sync(
    tmp_path: Path, own_server
) -> None:
    api = Api(own_server.url)
    names = many(api, 3, "drop")
    with (
        Client(tmp_path / "w.db", own_server.url) as writer,
        Client(tmp_path / "r.db", own_server.url, retry=fast_policy(2)) as reader,
    ):
        net = Network(reader)
        for name in names:
            reader.store(name)
        reader.sync()
        assert api.call("DELETE", f"/v1/stores/{names[1]}").status_code == 200
        key = writer.store(names[2]).add({"after": "drop"})
        writer.sync()
        with pytest.raises(StoreDropped):
            reader.sync()
        assert reader.store(names[2]).get(key) is not None, "the other stores synced"
        assert reader.status.dropped == (names[1],)
        sent = len(net.log)
        reader.sync()  # the dropped store is left out: no error, one request
        assert kinds(net, sent) == Counter({"POST /v1/wait": 1})


def test_a_store_reset_in_a_round_reloads_and_the_others_sync(tmp_path: Path, own_server) -> None:
    api = Api(own_server.url)
    names = many(api, 3, "reset")
    with (
        Client(tmp_path / "w.db", own_server.url) as writer,
        Client(tmp_path / "r.db", own_server.url, retry=fast_policy(2)) as reader,
    ):
        for name in names:
            writer.store(name).add({"before": name})
            reader.store(name)
        writer.sync()
        reader.sync()
        # A new epoch: the reader's cursor of names[0] is of a history gone.
        api.call("DELETE", f"/v1/stores/{names[0]}")
        api.create_store(names[0], recreate=True)
    with Client(tmp_path / "w2.db", own_server.url) as writer:
        key0 = writer.store(names[0]).add({"new": "epoch"})
        key2 = writer.store(names[2]).add({"plain": "change"})
        writer.sync()
    with Client(tmp_path / "r.db", own_server.url, retry=fast_policy(2)) as reader:
        report = reader.sync()
        assert report.resets == 1
        assert len(reader.store(names[0])) == 1 and reader.store(names[0]).get(key0) is not None
        assert reader.store(names[2]).get(key2) is not None
        assert reader.status.resets >= 1


def test_first_syncs_run_together_and_tell_the_callers_thread(tmp_path: Path, own_server) -> None:
    api = Api(own_server.url)
    names = many(api, 8, "first")
    with Client(tmp_path / "w.db", own_server.url) as writer:
        for name in names:
            writer.store(name).add_many([{"value": {"i": i}} for i in range(30)])
        writer.sync()
    with Client(tmp_path / "r.db", own_server.url, retry=fast_policy(2)) as reader:
        threads: set[str] = set()
        counts: Counter[str] = Counter()
        for name in names:

            def heard(event, name: str = name) -> None:
                threads.add(threading.current_thread().name)
                counts[name] += len(event.added)

            reader.store(name).subscribe(heard)
        report = reader.sync()
        assert report.pulled == 8 * 30
        assert counts == Counter({name: 30 for name in names}), "each change told once"
        assert threads == {threading.current_thread().name}, "callbacks on the caller's thread"
        assert reader.status.state == "online"
