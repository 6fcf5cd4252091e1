"""The PostgreSQL backend runs the storage contract suite on a throwaway cluster,
plus what only a server database can show: several instances, lost connections,
lock timeouts, and the reference server over PostgreSQL end to end."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg", reason="the postgresql extra (psycopg) is not installed")

from idsync_client import Client, RetryPolicy  # noqa: E402
from idsync_server_ref.process import ServerProcess  # noqa: E402
from idsync_server_ref.storage import (  # noqa: E402
    ResetRequired,
    Storage,
    StorageBusy,
    StorageFailure,
    StoreDropped,
    open_storage,
)
from idsync_server_ref.storage.postgresql import PostgresqlStorage  # noqa: E402
from idsync_server_ref.storage.testing import (  # noqa: E402
    BackendUnderTest,
    StorageContract,
    add,
    delete,
)
from idsync_server_ref.storage.testing_history import HistoryContract  # noqa: E402

from .conftest import Api  # noqa: E402


class PgBackend(BackendUnderTest):
    """One fresh database of the session's cluster."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    def _open(self) -> Storage:
        return PostgresqlStorage(self.url)

    def sql(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []

    @contextlib.contextmanager
    def refuse_record_key(self, key: str) -> Iterator[None]:
        self.sql(
            "CREATE FUNCTION refuse_key() RETURNS trigger LANGUAGE plpgsql AS $$"
            f" BEGIN IF NEW.key = '{key}' THEN RAISE EXCEPTION 'disk I/O error'; END IF;"
            " RETURN NEW; END $$"
        )
        self.sql(
            "CREATE TRIGGER refuse_key BEFORE INSERT ON records"
            " FOR EACH ROW EXECUTE FUNCTION refuse_key()"
        )
        try:
            yield
        finally:
            self.sql("DROP TRIGGER refuse_key ON records")
            self.sql("DROP FUNCTION refuse_key()")

    def set_schema_version(self, version: int) -> None:
        self.sql("UPDATE meta SET value = %s WHERE key = 'schema_version'", (str(version),))

    @contextlib.contextmanager
    def hold_commits(self, storage: Storage, delay: Callable[[], float]) -> Iterator[None]:
        assert isinstance(storage, PostgresqlStorage)
        write_batch = storage._write_batch

        def slow(*args: Any) -> None:
            write_batch(*args)
            time.sleep(delay())  # sequence numbers taken, transaction still open

        storage._write_batch = slow  # type: ignore[method-assign]
        try:
            yield
        finally:
            del storage._write_batch


class TestPostgresqlContract(StorageContract, HistoryContract):
    multi_process = True

    @pytest.fixture
    def backend(self, pg_url: str) -> Iterator[BackendUnderTest]:
        with PgBackend(pg_url) as backend:
            yield backend


@pytest.fixture
def pg(pg_url: str) -> Iterator[PgBackend]:
    with PgBackend(pg_url) as backend:
        yield backend


def test_open_storage_takes_a_postgresql_url(pg_url: str) -> None:
    storage = open_storage(pg_url)
    try:
        assert isinstance(storage, PostgresqlStorage)
        assert storage.create_store("notes").head_seq == 0
    finally:
        storage.close()


def test_an_empty_database_gets_the_schema_and_a_foreign_one_is_refused(pg_cluster: Any) -> None:
    url = pg_cluster.database(empty=True)
    PostgresqlStorage(url).close()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT value FROM meta").fetchone() == ("4",)
    other = pg_cluster.database(empty=True)
    with psycopg.connect(other, autocommit=True) as conn:
        conn.execute("CREATE TABLE invoices (id int)")
    with pytest.raises(StorageFailure, match="not an idsync server database"):
        PostgresqlStorage(other)


def test_prefix_queries_follow_code_points_whatever_the_database_collation(
    pg_cluster: Any,
) -> None:
    # Index items compare in code point order even in a database whose
    # default collation sorts otherwise (here a case-insensitive ICU one, if
    # the server has ICU; the column's own "C" collation decides).
    url = pg_cluster.database(empty=True)
    storage = PostgresqlStorage(url)
    try:
        storage.create_store("notes")
        storage.push("notes", "c1", [add(1, "a", index=("B",)), add(2, "b", index=("a",))])
        page = storage.find("notes", "A", True, 0, 10)
        assert page.records_json == []
    finally:
        storage.close()


def test_a_lost_connection_is_replaced_on_the_next_call(pg: PgBackend) -> None:
    storage = pg.open()
    storage.create_store("notes")
    storage.push("notes", "c1", [add(1, "a")])
    killed = pg.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    assert killed  # the pool's idle connection was one of them
    assert storage.push("notes", "c1", [add(2, "b")])[0].seq == 2
    assert storage.get_store("notes").head_seq == 2


def test_a_store_locked_too_long_is_storage_busy(pg: PgBackend) -> None:
    storage = PostgresqlStorage(pg.url, busy_timeout_ms=200)
    try:
        storage.create_store("notes")
        with psycopg.connect(pg.url) as holder:
            holder.execute("SELECT 1 FROM stores WHERE name = 'notes' FOR UPDATE")
            started = time.monotonic()
            with pytest.raises(StorageBusy):
                storage.push("notes", "c1", [add(1, "a")])
            assert time.monotonic() - started < 5
        # Once the lock is gone, the same push goes through.
        assert storage.push("notes", "c1", [add(1, "a")])[0].status == "applied"
    finally:
        storage.close()


def test_listeners_hear_changes_again_after_their_connection_is_lost(pg: PgBackend) -> None:
    writer, listening = pg.open(), pg.open()
    writer.create_store("notes")
    heard: list[tuple[str, int]] = []
    listening.listen(lambda name, head: heard.append((name, head)))
    killed = pg.sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE query LIKE 'LISTEN%%' AND datname = current_database()"
    )
    assert killed == [(True,)]  # the LISTEN connection, and only it
    writer.push("notes", "c1", [add(1, "a")])
    deadline = time.monotonic() + 15
    # Either the notification itself or the catch-up after reconnecting.
    while ("notes", 1) not in heard:
        assert time.monotonic() < deadline, heard
        time.sleep(0.01)
    writer.push("notes", "c1", [add(2, "b")])
    while ("notes", 2) not in heard:
        assert time.monotonic() < deadline, heard
        time.sleep(0.01)


def test_two_server_processes_on_one_database_serve_one_client_each(
    pg_url: str, tmp_path: Path
) -> None:
    """``idsync-server --db postgresql://...``: two processes, clients sync through either."""
    store = f"s-{uuid.uuid4().hex[:8]}"
    policy = RetryPolicy(max_attempts=5, sleep=lambda s: None)
    with ServerProcess(pg_url) as one, ServerProcess(pg_url) as two:
        Api(one.url).create_store(store)
        a = Client(tmp_path / "a.db", one.url, retry=policy)
        b = Client(tmp_path / "b.db", two.url, retry=policy)
        try:
            b.store(store)  # b syncs the stores it opened
            key = a.store(store).add({"from": "a"}, index=["tag:x"])
            a.sync()
            b.sync()
            assert [r.key for r in b.store(store).find("tag:x")] == [key]
            b.store(store).delete(key)
            b.sync()
            a.sync()
            assert list(a.store(store)) == []
        finally:
            a.close()
            b.close()


def test_a_long_poll_on_one_process_wakes_for_a_push_through_another(pg_url: str) -> None:
    store = f"s-{uuid.uuid4().hex[:8]}"
    with ServerProcess(pg_url) as one, ServerProcess(pg_url) as two:
        Api(one.url).create_store(store)
        api_one, api_two = Api(one.url), Api(two.url)
        _, cursor = api_one.pull_all(store)
        woke: list[tuple[float, int]] = []

        def wait_on_one() -> None:
            started = time.monotonic()
            response = api_one.call(
                "GET", f"/v1/stores/{store}/changes", params={"cursor": cursor, "wait": 4}
            )
            woke.append((time.monotonic() - started, len(response.json()["changes"])))

        waiter = threading.Thread(target=wait_on_one)
        waiter.start()
        time.sleep(0.3)  # let the long-poll start waiting (the result does not depend on it)
        api_two.push(store, "c9", [{"n": 1, "op": "add", "key": "k", "index": [], "value": 1}])
        waiter.join(timeout=20)
        # Woken by the push (a long-poll that timed out would take 4 s and
        # find the change only if it re-read the store afterwards).
        assert woke and woke[0][0] < 3 and woke[0][1] == 1


def test_an_unreachable_database_is_a_storage_failure_and_the_password_stays_hidden(
    tmp_path: Path,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once closed
    url = f"postgresql://idsync:s3cret@127.0.0.1:{port}/idsync?connect_timeout=5"
    with pytest.raises(StorageFailure):
        PostgresqlStorage(url)
    result = subprocess.run(
        [sys.executable, "-m", "idsync_server_ref", "--db", url, "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"cannot open postgresql://idsync@127.0.0.1:{port}/idsync" in result.stderr
    assert "s3cret" not in result.stderr + result.stdout


def test_a_store_moves_from_sqlite_to_postgresql_and_back(pg_url: str, tmp_path: Path) -> None:
    from idsync_server_ref.storage import SqliteStorage
    from idsync_server_ref.storage.testing_history import snapshot_records

    lite = SqliteStorage(tmp_path / "db.sqlite3")
    pg = PostgresqlStorage(pg_url)
    back = SqliteStorage(tmp_path / "back.sqlite3")
    try:
        lite.create_store("notes")
        lite.push(
            "notes",
            "c1",
            [
                add(1, "a", {"n": 2**63 - 1}, ("tag:x",)),
                add(2, "b", [0.1, False, None]),
                add(3, "c", "\u00e9\U0001f600", ("owner:ana", "tag:x")),
                delete(4, "b"),
            ],
        )
        expected, old_at = snapshot_records(lite)
        lines = list(lite.export_store("notes"))
        moved = pg.import_store("notes", lines)
        assert moved.head_seq == 4 and moved.live_records == 2
        assert snapshot_records(pg)[0] == expected
        with pytest.raises(ResetRequired):
            pg.pull("notes", old_at, 10, 10**6)
        assert pg.push("notes", "c2", [add(1, "b")])[0].code == "key_deleted"
        assert list(pg.export_store("notes"))[1:] == lines[1:]
        back.import_store("notes", pg.export_store("notes"))
        assert snapshot_records(back)[0] == expected
    finally:
        lite.close()
        pg.close()
        back.close()


def test_a_schema_2_database_is_migrated_with_its_data(pg: PgBackend) -> None:
    storage = pg.open()
    storage.create_store("notes")
    storage.push("notes", "c1", [add(1, "a"), add(2, "b")])
    storage.close()
    # Back to the tables of schema 2, as release 0.2 left them.
    pg.sql("DROP TABLE store_access, tokens, users")
    pg.sql("DROP TABLE dropped_stores")
    pg.sql("ALTER TABLE changes DROP COLUMN logged_at")
    pg.sql("ALTER TABLE stores DROP COLUMN retention_seconds, DROP COLUMN horizon_tag")
    pg.set_schema_version(2)
    storage = pg.open()
    try:
        assert pg.sql("SELECT value FROM meta") == [("4",)]
        assert [r[0] for r in pg.sql("SELECT key FROM changes ORDER BY seq")] == ["a", "b"]
        storage.push("notes", "c1", [delete(3, "a")])
        assert storage.compact("notes", now=time.time() + 8 * 86400).entries_removed == 2
        storage.drop_store("notes")
        with pytest.raises(StoreDropped):
            storage.push("notes", "c1", [add(4, "c")])
    finally:
        storage.close()
