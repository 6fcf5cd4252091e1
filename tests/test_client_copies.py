"""One client file in two places (a copied profile, a restored backup): no write
acknowledged to the app is lost, none is logged twice, nothing is rejected."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from idsync_client import Client
from idsync_client.testing import ServerProcess

from .conftest import Api, fast_policy, live_keys


def copy_file(src: Path, dst: Path, with_sidecar: bool = True) -> None:
    """Copy a client file as a user would: the database, its WAL, and its sidecar."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", ".instance") if with_sidecar else ("", "-wal"):
        if Path(f"{src}{suffix}").exists():
            shutil.copy(f"{src}{suffix}", f"{dst}{suffix}")


def logged_adds(api: Api, store: str) -> Counter[str]:
    changes, _ = api.pull_all(store)
    return Counter(c["key"] for c in changes if c["op"] == "add")



def test_copied_profile_takes_a_new_client_id_and_both_copies_lose_nothing(
    tmp_path, server, api, store
) -> None:
    first = Client(tmp_path / "a" / "profile.db", server.url, retry=fast_policy(5))
    notes = first.store(store)
    shared = [notes.add({"shared": i}, index=["tag:s"]) for i in range(3)]
    first.sync()
    pending_before_copy = notes.add({"pending when copied": True})
    copy_file(tmp_path / "a" / "profile.db", tmp_path / "b" / "profile.db")
    second = Client(tmp_path / "b" / "profile.db", server.url, retry=fast_policy(5))
    try:
        assert second.client_id != first.client_id, "the copy took a fresh client id"
        theirs = second.store(store)
        written = {shared[0], shared[1], shared[2], pending_before_copy}
        for round_ in range(3):
            written.add(notes.add({"from": "first", "round": round_}))
            written.add(theirs.add({"from": "second", "round": round_}))
            first.sync()
            second.sync()
        notes.delete(shared[0])
        theirs.delete(shared[1])
        for client in (first, second, first, second):
            client.sync()
        assert first.rejected() == [] and second.rejected() == []
        assert first.status.pending == second.status.pending == 0
        adds = logged_adds(api, store)
        assert set(adds) == written and set(adds.values()) == {1}, "each write logged once"
        assert live_keys(api, store) == written - {shared[0], shared[1]}
        view = {r.key for r in notes}
        assert view == {r.key for r in theirs} == live_keys(api, store)
    finally:
        first.close()
        second.close()


def test_a_file_reopened_in_place_keeps_its_client_id(tmp_path) -> None:
    path = tmp_path / "p.db"
    with Client(path) as one:
        client_id = one.client_id
    with Client(path) as two:
        assert two.client_id == client_id
    copy_file(path, tmp_path / "elsewhere" / "p.db", with_sidecar=False)
    with Client(tmp_path / "elsewhere" / "p.db") as copy:
        assert copy.client_id != client_id, "a copy without the sidecar is a copy too"


def test_backup_restored_in_place_resends_under_a_new_client_id(tmp_path, server, api, store):
    """A backup of the whole folder restored over the same files is not seen at
    open (same inode, same marker): the server's change_number_conflict is,
    and the changes go again under a fresh client id instead of being dropped."""
    path = tmp_path / "live" / "profile.db"
    client = Client(path, server.url, retry=fast_policy(5))
    notes = client.store(store)
    kept = notes.add({"before backup": True})
    doomed = notes.add({"to delete": True})
    client.sync()
    original_id = client.client_id
    copy_file(path, tmp_path / "backup" / "profile.db")
    later = notes.add({"after backup": True})  # change numbers the backup will reuse
    client.sync()
    client.close()
    copy_file(tmp_path / "backup" / "profile.db", path)  # restored over the same inode
    restored = Client(path, server.url, retry=fast_policy(5))
    try:
        old_id = restored.client_id
        assert old_id == original_id, "the open cannot tell this restore from the file"
        notes = restored.store(store)
        mine = notes.add({"written after the restore": True})
        notes.delete(doomed)
        report = restored.sync()
        assert restored.client_id != old_id
        assert report.rejected == [] and restored.rejected() == []
        assert restored.status.pending == 0
        assert live_keys(api, store) == {kept, later, mine}
        assert set(logged_adds(api, store).values()) == {1}
        assert {r.key for r in notes} == {kept, later, mine}
    finally:
        restored.close()


def test_delete_refused_for_good_brings_the_record_back(tmp_path) -> None:
    """The server's limits were tightened after the record was written: the
    delete is refused (invalid_change) and the record comes back locally, with
    its index, value and seq, instead of staying hidden by a tombstone."""
    database = tmp_path / "server.db"
    key = "k" * 40
    with ServerProcess(database) as srv:
        port = srv.port
        client = Client(tmp_path / "c.db", srv.url, retry=fast_policy(5))
        notes = client.store("notes")
        notes.add({"keep": "me"}, index=["tag:x"], key=key)
        other = notes.add({"also": "synced"}, key="short")
        client.sync()
        synced = notes.get(key)
        notes.delete(key)
        notes.delete(other)
        assert notes.get(key) is None
    try:
        with ServerProcess(database, "--max-key-length", "20", port=port):
            report = client.sync()
        assert [(r.key, r.op, r.code) for r in report.rejected] == [
            (key, "delete", "invalid_change")
        ]
        back = notes.get(key)
        assert back == synced and not back.pending
        assert [r.key for r in notes.find("tag:x")] == [key]
        assert notes.get(other) is None, "the other delete went through"
        assert client.status.pending == 0
    finally:
        client.close()


@pytest.mark.parametrize("code", ["key_not_found"])
def test_delete_of_a_record_the_server_never_had_stays_deleted(tmp_path, code) -> None:
    """key_not_found: there is nothing to bring back; the delete holds."""
    with ServerProcess(tmp_path / "s.db") as srv:
        api = Api(srv.url)
        with Client(tmp_path / "c.db", srv.url, retry=fast_policy(5)) as client:
            notes = client.store("notes")
            key = notes.add({"v": 1})
            client.sync()
            notes.delete(key)
            api.call("DELETE", "/v1/stores/notes")
            api.create_store("notes", recreate=True)
            client.sync()
            assert [r.code for r in client.rejected()] == [code]
            assert notes.get(key) is None
