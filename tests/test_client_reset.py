"""Reset: a snapshot reload keeps every pending change, and this client's own
acknowledged changes that the server lost (restored from an older copy, or a
re-created store) are sent again, exactly once."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest

from idsync_client import Client

from .conftest import Api, RestorableServer, clients, fast_policy


@pytest.fixture
def make_client(tmp_path, server):
    clients: list[Client] = []

    def make(name: str) -> Client:
        client = Client(tmp_path / f"{name}.db", server.url, retry=fast_policy())
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def live(api: Api, store: str) -> dict[str, object]:
    records: dict[str, object] = {}
    after, more = 0, True
    while more:
        page = api.call("GET", f"/v1/stores/{store}/snapshot", params={"after": after}).json()
        records.update({r["key"]: r["value"] for r in page["records"]})
        after, more = page["after"], page["more"]
    return records


def adds(api: Api, store: str) -> Counter[str]:
    return Counter(c["key"] for c in api.pull_all(store)[0] if c["op"] == "add")


def test_a_reset_with_pending_changes_keeps_them(make_client, api) -> None:
    """The reset really happens while changes are pending (the pull runs before
    any push), and every pending change survives it and reaches the server."""
    name = f"pending-reset-{uuid.uuid4().hex[:6]}"
    api.create_store(name)
    client = make_client("a")
    notes = client.store(name)
    synced = notes.add({"v": "synced"}, index=["tag:s"])
    gone = notes.add({"v": "to delete"})
    client.sync()
    pending_add = notes.add({"v": "pending"}, index=["tag:p"])
    notes.delete(gone)
    api.call("DELETE", f"/v1/stores/{name}")
    api.create_store(name, recreate=True)
    Api(api.url).push(name, "someone", [{"n": 1, "op": "add", "key": "theirs", "value": 1}])

    report = client._engine.pull(name)  # a pull first: the reset meets pending changes

    assert report.resets == 1
    assert client.db.pending_count(name) == 3, "2 pending + 1 own record sent again"
    assert notes.get(pending_add).pending and [r.key for r in notes.find("tag:p")] == [pending_add]
    assert notes.get(gone) is None, "the pending delete keeps its record out"
    assert notes.get(synced) is not None and notes.get(synced).pending
    assert notes.get("theirs").value == 1
    client.sync()
    assert set(live(api, name)) == {pending_add, synced, "theirs"}
    assert [r.code for r in client.rejected()] == ["key_not_found"], "nothing to delete there"


def test_a_recreated_store_gets_this_clients_records_again(make_client, api) -> None:
    name = f"recreated-{uuid.uuid4().hex[:6]}"
    api.create_store(name)
    a, b = make_client("a"), make_client("b")
    mine = [a.store(name).add({"n": i}, index=["tag:a"]) for i in range(3)]
    theirs = b.store(name).add({"from": "b"})
    a.sync()
    b.sync()
    a.sync()
    api.call("DELETE", f"/v1/stores/{name}")
    api.create_store(name, recreate=True)
    report = a._engine.sync(name)  # the engine's report of this store's round
    assert report.resets == 1 and report.resent == 3
    assert a.rejected() == [] and a.db.pending_count() == 0
    assert set(live(api, name)) == set(mine), "b's record is b's to send again"
    assert set(adds(api, name).values()) == {1}
    c = make_client("c")
    c.store(name)
    c.sync()
    assert {r.key for r in c.store(name)} == set(mine)
    assert {r.key for r in a.store(name)} == set(mine)
    assert theirs not in a.store(name)


def wrote_across_a_backup(restorable: RestorableServer, a: Client) -> tuple[str, str]:
    """``a`` adds two records and syncs, the server is backed up, then ``a``
    adds a third and deletes one of the first two: returns (kept, later)."""
    Api(restorable.url).create_store("notes")
    notes = a.store("notes")
    kept, doomed = notes.add({"v": "kept"}), notes.add({"v": "doomed"})
    a.sync()
    restorable.backup()
    later = notes.add({"v": "after the backup"})
    notes.delete(doomed)
    return kept, later


def test_a_restore_behind_the_cursor_is_seen_from_the_pulled_changes(
    restorable: RestorableServer, tmp_path
) -> None:
    """The client's cursor is still valid on the restored server, but the
    server logged others' changes at the seqs where this client's own add and
    delete were acknowledged: a new history. The client resets and sends
    both again."""
    url = restorable.url
    with clients(tmp_path, url, "a") as (a,):
        kept, later = wrote_across_a_backup(restorable, a)
        a._engine.push("notes")  # acknowledged, but not pulled: the cursor stays behind
        assert a.db.pending_count() == 0
        restorable.restore()
        api = Api(url)
        api.push("notes", "b", [{"n": i, "op": "add", "key": f"b{i}", "value": i} for i in (1, 2)])
        report = a._engine.sync("notes")
        assert report.resets == 1 and report.resent == 2
        assert a.rejected() == [] and a.db.pending_count() == 0
        assert set(live(api, "notes")) == {kept, later, "b1", "b2"}
        assert set(adds(api, "notes").values()) == {1}
        assert {r.key for r in a.store("notes")} == {kept, later, "b1", "b2"}
        with clients(tmp_path, url, "c") as (c,):
            c.store("notes")
            c.sync()
            assert {r.key for r in c.store("notes")} == {kept, later, "b1", "b2"}


def test_a_server_restored_from_an_older_copy_gets_this_clients_changes_back(
    restorable: RestorableServer, tmp_path
) -> None:
    """The client pulled past the restored server's head: the server answers
    reset_required; the client sends again what it wrote after the backup."""
    url = restorable.url
    with clients(tmp_path, url, "a") as (a,):
        kept, later = wrote_across_a_backup(restorable, a)
        a.sync()
        restorable.restore()
        report = a._engine.sync("notes")
        assert report.resets == 1 and report.resent == 2
        assert a.rejected() == [] and a.db.pending_count() == 0
        api = Api(url)
        assert set(live(api, "notes")) == {kept, later}
        assert set(adds(api, "notes").values()) == {1}
        with clients(tmp_path, url, "c") as (c,):
            c.store("notes")
            c.sync()
            assert {r.key for r in c.store("notes")} == {kept, later}
