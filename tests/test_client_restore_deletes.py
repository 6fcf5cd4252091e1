"""Deletes of another client's record across a server restored from an older
copy: when the record's author sends it again, the clients still converge
with the server, and a delete the app was told is saved still happens.

The restore loses the record (and the delete, when it had reached the
server). Its author sends the record again after its reset; every client
that deleted it must then send its delete again, and no client may keep the
record hidden while the server holds it."""

from __future__ import annotations

from pathlib import Path

from idsync_client import Client
from idsync_server_ref.process import ServerProcess

from .conftest import Api, backup_sqlite, fast_policy, live_keys, restore_sqlite


def converge(*clients: Client) -> None:
    for _ in range(3):  # bounded: each round pushes and pulls everything pending
        for client in clients:
            client.sync()


def views(*clients: Client) -> list[set[str]]:
    return [{r.key for r in client.store("notes")} for client in clients]


def test_a_pending_delete_of_a_record_the_restore_lost_happens_when_it_comes_back(
    tmp_path: Path,
) -> None:
    db, copy = tmp_path / "server.sqlite3", tmp_path / "copy.sqlite3"
    server = ServerProcess(db).start()
    try:
        api = Api(server.url)
        api.create_store("notes")
        with (
            Client(tmp_path / "author.db", server.url, retry=fast_policy()) as author,
            Client(tmp_path / "deleter.db", server.url, retry=fast_policy()) as deleter,
        ):
            kept = author.store("notes").add({"v": "before the copy"})
            deleter.store("notes")
            converge(author, deleter)
            backup_sqlite(db, copy)
            lost = author.store("notes").add({"v": "after the copy"})
            converge(author, deleter)
            server.stop()
            restore_sqlite(copy, db)
            deleter.store("notes").delete(lost)  # while the server is away
            server.start()
            converge(deleter, author, deleter)
            assert live_keys(api, "notes") == {kept}, "the delete the app was told of happened"
            assert views(author, deleter) == [{kept}, {kept}]
    finally:
        server.stop()


def test_an_acknowledged_delete_the_restore_lost_is_sent_again(tmp_path: Path) -> None:
    db, copy = tmp_path / "server.sqlite3", tmp_path / "copy.sqlite3"
    server = ServerProcess(db).start()
    try:
        api = Api(server.url)
        api.create_store("notes")
        with (
            Client(tmp_path / "author.db", server.url, retry=fast_policy()) as author,
            Client(tmp_path / "deleter.db", server.url, retry=fast_policy()) as deleter,
            Client(tmp_path / "reader.db", server.url, retry=fast_policy()) as reader,
        ):
            kept = author.store("notes").add({"v": "before the copy"})
            deleter.store("notes")
            reader.store("notes")
            converge(author, deleter, reader)
            backup_sqlite(db, copy)
            lost = author.store("notes").add({"v": "after the copy"})
            converge(author, deleter, reader)
            deleter.store("notes").delete(lost)
            converge(deleter, reader)  # the delete is acknowledged, the reader saw it
            server.stop()
            restore_sqlite(copy, db)
            server.start()
            converge(reader, deleter, author, reader, deleter)
            assert live_keys(api, "notes") == {kept}, "the acknowledged delete holds"
            assert views(author, deleter, reader) == [{kept}, {kept}, {kept}]
    finally:
        server.stop()


def test_a_delete_by_another_client_that_the_restore_lost_does_not_hide_the_record(
    tmp_path: Path,
) -> None:
    """The deleting client is gone (never syncs again): the record its author
    sent again is live on the server, and every client shows it."""
    db, copy = tmp_path / "server.sqlite3", tmp_path / "copy.sqlite3"
    server = ServerProcess(db).start()
    try:
        api = Api(server.url)
        api.create_store("notes")
        with (
            Client(tmp_path / "author.db", server.url, retry=fast_policy()) as author,
            Client(tmp_path / "deleter.db", server.url, retry=fast_policy()) as deleter,
            Client(tmp_path / "reader.db", server.url, retry=fast_policy()) as reader,
        ):
            kept = author.store("notes").add({"v": "before the copy"})
            deleter.store("notes")
            reader.store("notes")
            converge(author, deleter, reader)
            backup_sqlite(db, copy)
            lost = author.store("notes").add({"v": "after the copy"})
            converge(author, deleter, reader)
            deleter.store("notes").delete(lost)
            converge(deleter, reader)
            server.stop()
            restore_sqlite(copy, db)
            server.start()
            converge(reader, author, reader)  # the deleter never comes back
            assert live_keys(api, "notes") == {kept, lost}
            assert views(author, reader) == [{kept, lost}, {kept, lost}]
    finally:
        server.stop()
