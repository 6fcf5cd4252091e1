"""Deletes of another client's record across a server restored from an older
copy: when the record's author sends it again, the clients still converge
with the server, and a delete the app was told is saved still happens.

The restore loses the record (and the delete, when it had reached the
server). Its author sends the record again after its reset; every client
that deleted it must then send its delete again, and no client may keep the
record hidden while the server holds it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from idsync_client import Client

from .conftest import Api, RestorableServer, clients, live_keys


def converge(*clients: Client) -> None:
    for _ in range(3):  # bounded: each round pushes and pulls everything pending
        for client in clients:
            client.sync()


def views(*clients: Client) -> list[set[str]]:
    return [{r.key for r in client.store("notes")} for client in clients]


def added_after_a_backup(
    restorable: RestorableServer, author: Client, *others: Client
) -> tuple[str, str]:
    """The author's record ``kept`` is in a backup of the server; its record
    ``lost`` is added after it; every client has seen both. Returns (kept, lost)."""
    kept = author.store("notes").add({"v": "before the copy"})
    for client in others:
        client.store("notes")
    converge(author, *others)
    restorable.backup()
    lost = author.store("notes").add({"v": "after the copy"})
    converge(author, *others)
    return kept, lost


def lost_after_a_delete(
    restorable: RestorableServer, author: Client, deleter: Client, *others: Client
) -> tuple[str, str]:
    """:func:`added_after_a_backup`, then ``deleter`` deletes ``lost``,
    acknowledged and seen by ``others``; then the server is restored."""
    kept, lost = added_after_a_backup(restorable, author, deleter, *others)
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
        kept, lost = added_after_a_backup(restorable, author, deleter)
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


# -- a delete answered key_not_found, settled only after the record came back --------------
#
# The deleter sends its delete while the restored server lacks the record
# (answered key_not_found); before that answer is settled, the record's author
# sends the record again and the deleter hears of it (a pull or a reset on
# another thread). Settling then must not make the delete "hold" locally
# while the server keeps the record.


def reload_from_server(client: Client, store: str) -> None:
    """What a reset on another thread does: the server's snapshot into the file."""
    db, transport = client.db, client.transport
    assert transport is not None
    db.stage_clear(store)
    at, after = None, 0
    while True:
        page = transport.snapshot(store, at, after)
        db.stage_page(store, page.records)
        at, after = page.at, page.after
        if not page.more:
            break
    assert at is not None
    db.stage_install(store, at)


def pull_into(client: Client, api: Api, store: str) -> None:
    """What a pull on another thread does: the server's new changes into the file."""
    cursor = client.db.cursor(store)
    changes, new_cursor = api.pull_all(store, cursor)
    assert client.db.apply_pulled(store, changes, new_cursor, cursor) is not None


def pull_by_pages(client: Client, store: str, limit: int | None) -> None:
    """A pull by pages of ``limit`` changes (the server's default page when
    None); pages of one stand for a long history pulled page by page."""
    transport = client.transport
    assert transport is not None
    while True:
        cursor = client.db.cursor(store)
        page = transport.pull(store, cursor, limit=limit)
        assert client.db.apply_pulled(store, page.changes, page.cursor, cursor) is not None
        if not page.more:
            return


def settle_after(client: Client, key: str, before_settling: Callable[[], None]) -> list[str]:
    """Run ``before_settling`` between the server's answer to the delete of
    ``key`` and its settling; returns the codes that answer held."""
    settle, codes = client.db.settle, []

    def delayed(store: str, entries: Any, outcomes: Any, *args: Any, **kwargs: Any) -> Any:
        for entry, outcome in zip(entries, outcomes, strict=True):
            if entry.key == key and entry.op == "delete" and not codes:
                codes.append(outcome.code)
                before_settling()
        return settle(store, entries, outcomes, *args, **kwargs)

    client.db.settle = delayed  # type: ignore[method-assign]
    return codes


@pytest.mark.parametrize("heard_by", ["pull", "reset"])
def test_a_delete_refused_before_the_record_came_back_is_sent_again(
    restorable: RestorableServer, tmp_path: Path, heard_by: str
) -> None:
    api = Api(restorable.url)
    api.create_store("notes")
    with clients(tmp_path, restorable.url, "author", "deleter") as (author, deleter):
        kept, lost = added_after_a_backup(restorable, author, deleter)
        deleter.store("notes").delete(lost)  # pending: the server never saw it
        restorable.restore()
        if heard_by == "pull":
            reload_from_server(deleter, "notes")  # the deleter's reset, the record lost

        def record_comes_back() -> None:
            converge(author)  # the author resets and sends the record again
            assert live_keys(api, "notes") == {kept, lost}
            if heard_by == "pull":
                pull_into(deleter, api, "notes")
            else:
                reload_from_server(deleter, "notes")

        codes = settle_after(deleter, lost, record_comes_back)
        converge(deleter, author, deleter)
        assert codes == ["key_not_found"], "the delete went while the server lacked the record"
        assert live_keys(api, "notes") == {kept}, "the delete the app was told of happened"
        assert views(author, deleter) == [{kept}, {kept}]
        assert deleter.rejected() == [], "a delete that happened is no rejection"
        assert deleter.status.pending == 0


# -- and nothing is sent twice without a restore -------------------------------------------


def the_one_delete_goes_once(client: Client, api: Api, store: str) -> None:
    """One change waits, a delete: the next sync sends it, once, and it holds."""
    assert client.db.pending_count(store) == 1
    assert client.sync().pushed == 1
    assert live_keys(api, store) == set() and client.rejected() == []


def test_our_own_add_heard_back_after_its_delete_queues_nothing_more(
    server, api: Api, store: str, tmp_path: Path
) -> None:
    """Acknowledged, deleted, then heard back by a pull (the live thread): a
    record the server holds in the same history; one delete goes, once."""
    with clients(tmp_path, server.url, "a") as (a,):
        notes = a.store(store)
        a.sync()
        key = notes.add({"v": 1})
        assert a.flush(5.0)  # acknowledged, not pulled back yet
        notes.delete(key)
        pull_into(a, api, store)
        the_one_delete_goes_once(a, api, store)


def test_resets_while_a_delete_waits_queue_nothing_more(
    server, api: Api, store: str, tmp_path: Path
) -> None:
    with clients(tmp_path, server.url, "a") as (a,):
        notes = a.store(store)
        key = notes.add({"v": 1})
        a.sync()
        notes.delete(key)
        for _ in range(3):
            reload_from_server(a, store)
        the_one_delete_goes_once(a, api, store)


@pytest.mark.parametrize("limit", [None, 1], ids=["one page", "a page each"])
def test_an_add_and_its_delete_heard_back_queue_nothing(
    server, api: Api, store: str, tmp_path: Path, limit: int | None
) -> None:
    """Our add and our delete, both acknowledged, pulled back in one page or
    (a long history) in two: no revival, nothing queued again."""
    with clients(tmp_path, server.url, "a") as (a,):
        notes = a.store(store)
        a.sync()
        key = notes.add({"v": 1})
        assert a.flush(5.0)
        notes.delete(key)
        assert a.flush(5.0)  # both acknowledged, neither pulled back
        pull_by_pages(a, store, limit)
        assert a.db.pending_count(store) == 0 and notes.get(key) is None
        assert live_keys(api, store) == set()


# -- the mark "seen on the server" lasts only while its delete waits -----------------------


def test_a_delete_refused_otherwise_is_not_sent_again_by_a_later_reset(
    server, api: Api, store: str, tmp_path: Path
) -> None:
    """Deleted while its add was pending; the add goes alone and comes back
    (the delete is marked); the delete is then refused for another reason.
    The app was told so: a later reset must not send it after all."""
    with clients(tmp_path, server.url, "a") as (a,):
        notes = a.store(store)
        a.sync()
        key = notes.add({"v": 1})
        notes.delete(key)
        add, delete = a.db.pending(store, 10)
        transport = a.transport
        assert transport is not None and (add.op, delete.op) == ("add", "delete")
        outcomes = transport.push(store, a.client_id, [add.to_wire_json()])
        a.db.settle(store, [add], outcomes)
        pull_into(a, api, store)  # our add heard back while the delete waits
        a.db.reject(delete, "invalid_change", "refused")
        reload_from_server(a, store)
        a.sync()
        assert live_keys(api, store) == {key}, "the refused delete stays refused"
        assert notes.get(key) is not None and a.db.pending_count(store) == 0


def test_a_reset_that_lacks_the_record_takes_the_mark_back(
    server, api: Api, store: str, tmp_path: Path
) -> None:
    with clients(tmp_path, server.url, "a") as (a,):
        notes = a.store(store)
        key = notes.add({"v": 1})
        a.sync()
        notes.delete(key)
        reload_from_server(a, store)  # a reset while the delete waits: marked
        assert api.call("DELETE", f"/v1/stores/{store}").status_code == 200
        api.create_store(store, recreate=True)
        reload_from_server(a, store)  # the new store lacks the record: the mark goes
        a.sync()
        assert [r.code for r in a.rejected()] == ["key_not_found"], "listed, as without a mark"
        assert a.db.pending_count(store) == 0


def test_a_delete_sent_again_and_refused_again_settles(
    server, api: Api, store: str, tmp_path: Path
) -> None:
    """Seen on the server while it waited, then refused key_not_found (the
    store was re-created meanwhile): sent once more, refused once more,
    settled quietly. Not sent for ever."""
    with clients(tmp_path, server.url, "a") as (a,):
        notes = a.store(store)
        key = notes.add({"v": 1})
        a.sync()
        notes.delete(key)
        reload_from_server(a, store)  # seen on the server while it waits
        assert api.call("DELETE", f"/v1/stores/{store}").status_code == 200
        api.create_store(store, recreate=True)
        sent: list[int] = []
        transport = a.transport
        assert transport is not None
        push = transport.push

        def counted(*args: Any) -> Any:
            sent.append(len(args[2]))
            assert len(sent) < 10, "the delete is sent over and over"
            return push(*args)

        transport.push = counted  # type: ignore[method-assign]
        a.sync()
        assert a.db.pending_count(store) == 0 and notes.get(key) is None
        assert sum(sent) == 2, "sent twice: first, and once more as the record was seen"
