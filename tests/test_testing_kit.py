"""The testing kit's waiting and set-up: wait_until_synced, server_and_client, the pytest plugin."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import requests

from idsync_client import Client
from idsync_client.protocol import Cursor
from idsync_client.testing import Network, server_and_client, wait_until_synced


def server_head(url: str, store: str) -> Cursor:
    answer = requests.get(f"{url}/v1/stores/{store}", timeout=10).json()
    return Cursor.decode(answer["head_cursor"])


def test_two_clients_are_synced_when_it_returns(server, store, tmp_path) -> None:
    with (
        Client(tmp_path / "laptop.db", server.url) as laptop,
        Client(tmp_path / "phone.db", server.url) as phone,
    ):
        phone.store(store)
        laptop.start()
        phone.start()
        laptop.store(store).add_many([{"value": {"n": n}, "index": ["kind:n"]} for n in range(20)])
        wait_until_synced([laptop, phone], timeout=20)
        head = server_head(server.url, store)
        assert head.seq == 20
        for client in (laptop, phone):
            assert client.db.pending_count() == 0
            assert Cursor.decode(client.db.cursor(store)).seq == head.seq
        assert len(list(phone.store(store).find("kind:n"))) == 20


def test_a_pending_change_is_named_in_the_timeout(server, store, tmp_path) -> None:
    with Client(tmp_path / "a.db", server.url) as client:
        net = Network(client)
        net.offline()
        client.start()
        client.store(store).add({"t": 1})
        with pytest.raises(TimeoutError, match=r"a\.db: 1 change\(s\) pending"):
            wait_until_synced(client, timeout=0.3)
        net.online()
        wait_until_synced(client, timeout=20)
        assert server_head(server.url, store).seq == 1


def test_a_client_behind_the_head_is_named_in_the_timeout(server, store, tmp_path) -> None:
    with (
        Client(tmp_path / "writer.db", server.url) as writer,
        Client(tmp_path / "reader.db", server.url) as reader,
    ):
        reader.store(store)
        net = Network(reader)  # before start: the long-poll goes through it too
        reader.start()
        wait_until_synced(reader, timeout=20)  # at the empty store's head
        net.offline()  # the long-poll in flight loses its answer
        writer.start()
        writer.store(store).add({"t": 1})
        with pytest.raises(TimeoutError) as caught:
            wait_until_synced([writer, reader], timeout=0.5)
        assert f"reader.db, store {store!r}: pulled to seq 0 of 1" in str(caught.value)
        assert "writer.db" not in str(caught.value)


def test_waiting_does_not_go_through_the_clients_network(server, store, tmp_path) -> None:
    with Client(tmp_path / "a.db", server.url) as client:
        client.start()
        client.store(store).add(1)
        wait_until_synced(client, timeout=20)
        net = Network(client)
        net.offline()
        wait_until_synced(client, timeout=5)  # still synced: nothing new anywhere
        assert all(result == "offline" for _, result, _ in net.log)


def test_misuse_is_refused_at_once(server, tmp_path) -> None:
    with Client(tmp_path / "a.db", server.url) as idle, Client(tmp_path / "b.db") as local:
        with pytest.raises(ValueError, match=r"a\.db is not syncing in the background"):
            wait_until_synced(idle)
        with pytest.raises(ValueError, match="no server"):
            wait_until_synced([local])
        with pytest.raises(ValueError, match="no client"):
            wait_until_synced([])
        with pytest.raises(TypeError):
            wait_until_synced(["a.db"])  # type: ignore[list-item]


def test_server_and_client_gives_a_connected_client_and_stops_both(tmp_path) -> None:
    with server_and_client(tmp_path) as (server, client):
        assert client.syncing_in_background
        client.store("todo").add({"t": 1})
        wait_until_synced(client, timeout=20)
        assert server_head(server.url, "todo").seq == 1
    assert server.proc is not None and server.proc.poll() is not None
    with pytest.raises(Exception, match="closed"):
        client.store("todo")


def test_the_pytest_plugin_gives_an_apps_tests_a_server_and_a_client(tmp_path) -> None:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["idsync_client.pytest_plugin"]\n')
    (tmp_path / "test_app.py").write_text(
        textwrap.dedent(
            """
            import requests
            from idsync_client.testing import wait_until_synced

            def test_my_app(idsync_server, idsync_client):
                idsync_client.store("todo").add({"title": "Buy milk"})
                wait_until_synced(idsync_client)
                figures = requests.get(idsync_server.url + "/v1/stores/todo", timeout=10).json()
                assert figures["live_records"] == 1

            def test_each_test_has_a_fresh_client(idsync_client):
                assert idsync_client.store("todo").get("none") is None
                assert idsync_client.db.pending_count() == 0
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 passed" in done.stdout
