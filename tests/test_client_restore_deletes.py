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

from .conftest import Api, RestorableServer, clients, live_keys


def converge(*clients: Client) -> None:
    for _ in range(3):  # bounded: each round pushes and pulls everything pending
        for client in clients:
            client.sync()


def views(*clients: Client) -> list[set[str]]:
    return [{r.key for r in client.store("notes")} for client in clients]


def lost_after_a_delete(
    restorable: RestorableServer, author: Client, deleter: Client, *others: Client
) -> tuple[str, str]:
    """The author's record ``kept`` is in the backup; its record ``lost`` is
    added after it, and ``deleter`` deletes ``lost``, acknowledged and seen by
    ``others``; then the server is restored. Returns (kept, lost)."""
    kept = author.store("notes").add({"v": "before the copy"})
    for client in (deleter, *others):
        client.store("notes")
    converge(author, deleter, *others)
    restorable.backup()
    lost = author.store("notes").add({"v": "after the copy"})
    converge(author, deleter, *others)
    deleter.store("notes").delete(lost)
    converge(deleter, *others)  # the delete is acknowledged, the others saw it
    restorable.restore()
    return kept, lost


def test_a_pending_delete_of_a_record_the_restore_lost_happens_when_it_comes_back(
    restorable: RestorableServer, tmp_path: Path
) -> None:
    api = Api(restorable.url)
    api.create_store("notes")
    with clients(tmp_path, restorable.url, "author", "deleter") as (author, deleter):
        kept = author.store("notes").add({"v": "before the copy"})
        deleter.store("notes")
        converge(author, deleter)
        restorable.backup()
        lost = author.store("notes").add({"v": "after the copy"})
        converge(author, deleter)
        restorable.restore(start=False)
        deleter.store("notes").delete(lost)  # while the server is away
        restorable.process.start()
        converge(deleter, author, deleter)
        assert live_keys(api, "notes") == {kept}, "the delete the app was told of happened"
        assert views(author, deleter) == [{kept}, {kept}]


def test_an_acknowledged_delete_the_restore_lost_is_sent_again(
    restorable: RestorableServer, tmp_path: Path
) -> None:
    api = Api(restorable.url)
    api.create_store("notes")
    names = ("author", "deleter", "reader")
    with clients(tmp_path, restorable.url, *names) as (author, deleter, reader):
        kept, _ = lost_after_a_delete(restorable, author, deleter, reader)
        converge(reader, deleter, author, reader, deleter)
        assert live_keys(api, "notes") == {kept}, "the acknowledged delete holds"
        assert views(author, deleter, reader) == [{kept}, {kept}, {kept}]


def test_a_delete_by_another_client_that_the_restore_lost_does_not_hide_the_record(
    restorable: RestorableServer, tmp_path: Path
) -> None:
    """The deleting client is gone (never syncs again): the record its author
    sent again is live on the server, and every client shows it."""
    api = Api(restorable.url)
    api.create_store("notes")
    names = ("author", "deleter", "reader")
    with clients(tmp_path, restorable.url, *names) as (author, deleter, reader):
        kept, lost = lost_after_a_delete(restorable, author, deleter, reader)
        converge(reader, author, reader)  # the deleter never comes back
        assert live_keys(api, "notes") == {kept, lost}
        assert views(author, reader) == [{kept, lost}, {kept, lost}]
