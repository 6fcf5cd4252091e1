"""The SQLite backend runs the storage contract suite, plus what only a file can show."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from idsync_client.protocol import prefix_upper_bound
from idsync_server_ref.storage import SqliteStorage, Storage, StorageFailure, open_storage
from idsync_server_ref.storage.testing import BackendUnderTest, StorageContract, add
from idsync_server_ref.storage.testing_history import HistoryContract


class SqliteBackend(BackendUnderTest):
    """A fresh SQLite file; a test reaches under the storage with its own connection."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def _open(self) -> Storage:
        return SqliteStorage(self.path)

    @contextlib.contextmanager
    def refuse_record_key(self, key: str) -> Iterator[None]:
        with sqlite3.connect(self.path) as conn:
            conn.execute(
                "CREATE TRIGGER refuse_key BEFORE INSERT ON records WHEN NEW.key = ?"
                " BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END".replace("?", repr(key))
            )
        try:
            yield
        finally:
            with sqlite3.connect(self.path) as conn:
                conn.execute("DROP TRIGGER refuse_key")

    def set_schema_version(self, version: int) -> None:
        with sqlite3.connect(self.path) as conn:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))

    @contextlib.contextmanager
    def hold_commits(self, storage: Storage, delay: Callable[[], float]) -> Iterator[None]:
        assert isinstance(storage, SqliteStorage)
        write_batch = storage._write_batch

        def slow(*args: object) -> None:
            write_batch(*args)  # type: ignore[arg-type]
            time.sleep(delay())  # inside the write transaction, before its commit

        storage._write_batch = slow  # type: ignore[method-assign]
        try:
            yield
        finally:
            del storage._write_batch


class TestSqliteContract(StorageContract, HistoryContract):
    multi_process = False

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[BackendUnderTest]:
        with SqliteBackend(tmp_path / "db.sqlite3") as backend:
            yield backend


def test_prefix_upper_bound() -> None:
    assert prefix_upper_bound("tag:") == "tag;"
    assert prefix_upper_bound("a\U0010ffff") == "b"
    assert prefix_upper_bound("\ud7ff") == "\ue000"
    assert prefix_upper_bound("") is None


@pytest.mark.parametrize("where", ["afile/db.sqlite3", "afile"])
def test_a_path_that_cannot_hold_a_database_is_a_storage_failure(
    tmp_path: Path, where: str
) -> None:
    (tmp_path / "afile").write_bytes(b"not a database, and not a folder" * 100)
    with pytest.raises(StorageFailure):
        SqliteStorage(tmp_path / where)


def test_close_closes_the_connections_of_every_thread(db_path: Path) -> None:
    storage = SqliteStorage(db_path)
    storage.create_store("notes")
    done = threading.Event()

    def use_from_another_thread() -> None:
        storage.push("notes", "c1", [add(1, "a")])
        done.set()

    worker = threading.Thread(target=use_from_another_thread)
    worker.start()
    worker.join(timeout=10)
    assert done.is_set()
    storage.get_store("notes")  # this thread's connection too
    storage.close()
    # The last connection to close checkpoints and removes the write-ahead
    # log: it is gone only if the worker's connection was closed as well.
    assert not Path(f"{db_path}-wal").exists()


def test_a_large_push_is_not_copied_back_into_the_file_at_each_commit(db_path: Path) -> None:
    # One batch writing more than SQLite's default of 1,000 WAL pages was
    # followed by a checkpoint copying them all into the main file at once.
    storage = SqliteStorage(db_path)
    try:
        storage.create_store("notes")
        text = "x" * 5000
        out = storage.push("notes", "c1", [add(n, f"k{n}", {"t": text}) for n in range(1, 1001)])
        assert {o.status for o in out} == {"applied"}
        wal_bytes = Path(f"{db_path}-wal").stat().st_size
        assert wal_bytes > 4_000_000  # the batch's pages are in the WAL (synced at commit)
        assert db_path.stat().st_size < 1_000_000  # and not yet copied back
        assert storage.get_record("notes", "k1000") is not None
        seen: list[tuple[int, int]] = []

        def pragmas() -> None:
            storage.get_store("notes")  # opens this thread's connection
            seen.append(
                (
                    storage._sql("PRAGMA wal_autocheckpoint").fetchone()[0],
                    storage._sql("PRAGMA cache_size").fetchone()[0],
                )
            )

        worker = threading.Thread(target=pragmas)
        worker.start()
        worker.join(timeout=10)
        assert seen == [(10_000, -16 * 1024)]  # every thread's connection is tuned alike
    finally:
        storage.close()
    # Closing checkpoints: nothing committed stays only in the WAL.
    assert db_path.stat().st_size > 4_000_000
    assert not Path(f"{db_path}-wal").exists()


@pytest.mark.parametrize("form", ["bare", "path", "url"])
def test_open_storage_takes_a_path_or_a_sqlite_url(tmp_path: Path, form: str) -> None:
    path = tmp_path / "sub" / "db.sqlite3"
    url = {"bare": str(path), "path": path, "url": f"sqlite:///{path}"}[form]
    storage = open_storage(url)
    try:
        assert isinstance(storage, SqliteStorage) and storage.path == path
        storage.create_store("notes")
    finally:
        storage.close()
    assert path.exists()


def test_open_storage_refuses_an_unknown_scheme(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown database URL scheme 'mysql'"):
        open_storage("mysql://user@localhost/db")
    assert list(tmp_path.iterdir()) == []
