"""A failing local disk: one library exception, nothing half written, sync survives.

"Disk full" is made real and deterministic with SQLite's ``max_page_count``
(a genuine SQLITE_FULL) and, for the sync-lock file, a lock path that points
at ``/dev/full``.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
from pathlib import Path

import peewee
import pytest

from idsync_client import Client, IdsyncError, LocalStorageError, RetryPolicy

from .conftest import wait_for

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")


def fast_policy() -> RetryPolicy:
    return RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.05, rng=random.Random(1))


def fill_up(client: Client, permanent: bool = False) -> None:
    """No room left in the local file, from now on (this thread; every new one if permanent)."""
    db = client.db.db
    pages = db.execute_sql("PRAGMA page_count").fetchone()[0]
    db.pragma("max_page_count", pages, permanent=permanent)


def free_space(client: Client, permanent: bool = False) -> None:
    client.db.db.pragma("max_page_count", 1 << 30, permanent=permanent)


def lock_path(client: Client) -> Path:
    return client.path.with_name(client.path.name + ".sync-lock")


def test_a_full_local_file_raises_local_storage_error_and_writes_nothing(tmp_path) -> None:
    with Client(tmp_path / "c.db") as client:
        notes = client.store("notes")
        for i in range(3):
            notes.add({"i": i}, index=["tag:old"])
        fill_up(client)
        big = {"text": "x" * 200_000}
        writes = [
            lambda: notes.add(big, index=["tag:a", "tag:b"]),
            lambda: notes.add_many([{"value": big, "index": ["tag:a"]} for _ in range(3)]),
            # Small rows that still fit come first: only a rollback removes them.
            lambda: notes.add_many(
                [{"value": i, "index": ["tag:a"]} for i in range(10)]
                + [{"value": big, "index": ["tag:a"]}]
            ),
            lambda: notes.set_attr("n1", "title", big),
        ]
        for write in writes:
            with pytest.raises(LocalStorageError) as caught:
                write()
            assert "local database file is full" in str(caught.value)
            assert isinstance(caught.value.__cause__, peewee.OperationalError | sqlite3.Error)
            assert "full" in str(caught.value.__cause__)
            assert caught.value.original is caught.value.__cause__
        # Wholly absent: no record, no index item, no outbox entry.
        assert len(notes) == 3
        assert client.db.pending_count() == 3
        assert list(notes.find("tag:a")) == []
        assert notes.get_attr("n1", "title") is None
        free_space(client)
        notes.add(big, index=["tag:a"])
        assert len(list(notes.find("tag:a"))) == 1 and client.db.pending_count() == 4


def test_every_local_failure_is_a_local_storage_error(tmp_path) -> None:
    folder = tmp_path / "not-a-file.db"
    folder.mkdir()
    with pytest.raises(LocalStorageError, match="cannot open the local database file"):
        Client(folder)
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    with pytest.raises(LocalStorageError, match="cannot create the folder") as caught:
        Client(a_file / "c.db")
    assert isinstance(caught.value.__cause__, OSError)
    assert issubclass(LocalStorageError, IdsyncError)


def test_sync_lock_file_failure_is_a_local_storage_error(tmp_path, server, store) -> None:
    with Client(tmp_path / "c.db", server.url, retry=fast_policy()) as client:
        client.store(store).add({"a": 1})
        lock_path(client).symlink_to("/dev/full")
        with pytest.raises(LocalStorageError, match="sync-lock") as caught:
            client.sync()
        assert isinstance(caught.value.__cause__, OSError)
        assert "sync-lock" in (client.status.last_error or "")
        lock_path(client).unlink()
        assert client.sync().pushed == 1


def _sync_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("idsync-")]


def test_background_threads_survive_a_full_disk_at_start(tmp_path, server, store, api) -> None:
    with Client(tmp_path / "c.db", server.url, retry=fast_policy(), long_poll=1) as client:
        notes = client.store(store)
        keys = [notes.add({"i": i}) for i in range(3)]
        lock_path(client).symlink_to("/dev/full")
        client.start()
        assert wait_for(lambda: "sync-lock" in (client.status.last_error or ""))
        assert client.status.state != "online"
        assert wait_for(lambda: len(_sync_threads()) >= 2)
        lock_path(client).unlink()  # space is back
        client.kick()
        assert wait_for(lambda: client.status.pending == 0), client.status
        changes, _ = api.pull_all(store)
        assert {c["key"] for c in changes} == set(keys)


def test_background_pull_into_a_full_file_survives_and_catches_up(
    tmp_path, server, store, api
) -> None:
    api.push(
        store,
        "someone",
        [
            {"n": i + 1, "op": "add", "key": f"k{i}", "index": ["tag:x"], "value": "v" * 2000}
            for i in range(200)
        ],
    )
    with Client(tmp_path / "c.db", server.url, retry=fast_policy(), long_poll=1) as client:
        client.store(store)
        fill_up(client, permanent=True)  # every sync thread's connection too
        client.start()
        assert wait_for(lambda: "full" in (client.status.last_error or ""))
        assert len(client.store(store)) == 0, "a page is applied wholly or not at all"
        free_space(client, permanent=True)
        client.kick()
        assert wait_for(lambda: len(client.store(store)) == 200), client.status
        assert wait_for(lambda: client.status.last_error is None), client.status
