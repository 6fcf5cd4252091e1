"""Numbered migrations of the client file: files made by release 0.1.0 (schema 1)
and by the schema-2 and schema-3 code open with the current code, data intact, pending
changes sent under their own numbers and new ones numbered above every old
one; a failed step changes nothing; a newer file is refused untouched."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

import pytest

from idsync_client import Client, IdsyncError, RetryPolicy, instance, migrations
from idsync_client.schema import SCHEMA_VERSION
from idsync_client.testing import ServerProcess

from .conftest import Api

FIXTURE = Path(__file__).parent / "fixtures" / "v1" / "client.sqlite"
V2 = Path(__file__).parent / "fixtures" / "v2"
V3 = Path(__file__).parent / "fixtures" / "v3"


def v1_copy(tmp_path: Path) -> Path:
    path = tmp_path / "client.sqlite"
    shutil.copy(FIXTURE, path)
    return path


def meta(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT key, value FROM meta").fetchall())


def shape(path: Path) -> dict[str, object]:
    """Every table's columns (name, type, not null, default, pk), every index
    (with its WHERE clause) and every trigger."""
    with sqlite3.connect(path) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        out: dict[str, object] = {}
        for table in tables:
            out[table] = [row[1:] for row in conn.execute(f'PRAGMA table_info("{table}")')]
            out[table + " indexes"] = sorted(
                (row[1], row[2]) for row in conn.execute(f'PRAGMA index_list("{table}")')
            )
        for kind, name, sql in conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE type IN ('index', 'trigger')"
            " AND sql IS NOT NULL"
        ):
            out[f"{kind} {name}"] = " ".join(sql.split())
        return out


def test_a_v1_file_opens_with_its_data_and_syncs_its_pending_changes(tmp_path) -> None:
    path = v1_copy(tmp_path)
    before = meta(path)
    assert before["schema_version"] == "1"
    with Client(path) as client:
        assert client.client_id == before["client_id"], "a migration is not a copy"
        notes = client.store("notes")
        assert notes.get("zero").value == 0 and notes.get("zero").seq == 3
        assert notes.get("zero").index == ("a", "b")
        assert notes.get_attr("note-1", "title") == "second title"
        assert notes.get("pending-1").pending and notes.get("pending-1").value == {
            "title": "pending"
        }
        assert notes.get("synced-1") is None, "its pending delete keeps it out"
        assert notes.get("synced-2") is None, "deleted and synced"
        assert client.store("other").get("other-1").value == [1, 2, 3]
        pending = client.db.pending("notes", 10) + client.db.pending("other", 10)
        assert [(e.op, e.key) for e in pending] == [
            ("add", "pending-1"),
            ("delete", "synced-1"),
            ("add", "other-1"),
        ]
        assert client.db.cursor("notes") == "b00513ca793b541f.7"
        assert client.db.known_stores() == ["notes", "other"]
        assert [e.n for e in pending] == [8, 9, 10]
        client.store("other").add("new", key="other-2")
        assert client.db.pending("other", 10)[-1].n == 11, "above every old number"
    assert meta(path)["schema_version"] == str(SCHEMA_VERSION)
    assert shape(path) == shape_of_fresh(tmp_path), "migrated and fresh files agree"

    with ServerProcess(tmp_path / "server.db") as srv:
        api = Api(srv.url)
        with Client(path, srv.url, retry=RetryPolicy(max_attempts=3, sleep=lambda s: None)) as c:
            c.store("notes"), c.store("other")
            report = c.sync()
            assert c.status.pending == 0
            assert [(r.op, r.key, r.code) for r in report.rejected] == [
                ("delete", "synced-1", "key_not_found")  # the fresh server never had it
            ]
        assert [ch["key"] for ch in api.pull_all("notes")[0]] == ["pending-1"]
        assert [ch["key"] for ch in api.pull_all("other")[0]] == ["other-1", "other-2"]


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def logged_numbers(server_db: Path, client_id: str) -> dict[int, str]:
    """The change numbers the server logged for ``client_id``, with their status."""
    sql = (
        "SELECT o.value ->> 0, o.value ->> 2 FROM client_batches b, json_each(b.outcomes) o"
        " WHERE b.client_id = ?"
    )
    with sqlite3.connect(server_db) as conn:
        return dict(conn.execute(sql, (client_id,)).fetchall())


def placed_fixture(folder: Path, tmp_path: Path, version: int) -> tuple[Path, Path, dict[str, str]]:
    """The client and server files of ``folder`` copied into ``tmp_path``, the
    client file in its place (not a copy: its sidecar names it with its
    marker); their paths, and the client file's meta as it was."""
    path, server_db = tmp_path / "client.sqlite", tmp_path / "server.sqlite"
    shutil.copy(folder / "client.sqlite", path)
    shutil.copy(folder / "server.sqlite", server_db)
    before = meta(path)
    assert before["schema_version"] == str(version)
    instance.write_sidecar(path, before["instance"])
    return path, server_db, before


def test_a_v2_file_keeps_its_data_and_its_change_numbers(tmp_path) -> None:
    path, server_db, before = placed_fixture(V2, tmp_path, 2)
    kept = {
        table: rows(path, f"SELECT * FROM {table} ORDER BY 1, 2")
        for table in ("records", "index_items", "tombstones", "deleted_records", "sync_state")
    }
    assert rows(path, "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'") == [(10,)]
    with Client(path) as client:
        assert client.client_id == before["client_id"], "a migration is not a copy"
        pending = client.db.pending("notes", 10)
        assert [(e.n, e.op, e.key) for e in pending] == [
            (7, "add", "pending-1"),
            (8, "delete", "synced-1"),
        ]
        notes, other = client.store("notes"), client.store("other")
        assert notes.get("pending-1").pending and notes.get("pending-1").index == (
            "tag:new",
            "tag:work",
        )
        assert [r.key for r in notes.find("tag:work")] == ["synced-3", "pending-1"]
        assert notes.get("synced-1") is None and notes.get("synced-2") is None
        assert [(r.key, r.seq) for r in other] == [("other-1", 1), ("other-2", 2), ("other-3", 3)]
        assert client.status.pending == 2
    for table, content in kept.items():
        assert rows(path, f"SELECT * FROM {table} ORDER BY 1, 2") == content, table
    assert meta(path)["schema_version"] == str(SCHEMA_VERSION)
    assert rows(path, "SELECT n FROM outbox_floor") == [(10,)]
    assert shape(path) == shape_of_fresh(tmp_path), "migrated and fresh files agree"

    with ServerProcess(server_db) as srv:
        api = Api(srv.url)
        with Client(path, srv.url, retry=RetryPolicy(max_attempts=3, sleep=lambda s: None)) as c:
            c.store("notes"), c.store("other")
            c.store("notes").add({"title": "new"}, key="new-1")
            assert [e.n for e in c.db.pending("notes", 10)] == [7, 8, 11], "above the old 9, 10"
            report = c.sync()
            assert c.status.pending == 0 and report.rejected == []
            logged = logged_numbers(server_db, before["client_id"])
            assert logged == {n: "applied" for n in range(1, 12)}, "7, 8 under their own numbers"
            # Every entry has left the outbox: the next number is still new.
            c.store("other").add("after", key="other-4")
            assert [e.n for e in c.db.pending("other", 10)] == [12]
            c.sync()
        assert [ch["key"] for ch in api.pull_all("notes")[0]][-3:] == [
            "pending-1",
            "synced-1",
            "new-1",
        ]
        assert rows(
            path,
            "SELECT key, seq IS NOT NULL, own FROM records WHERE key IN ('pending-1', 'new-1')",
        ) == [("pending-1", 1, 1), ("new-1", 1, 1)]
        assert rows(path, "SELECT key, own FROM tombstones ORDER BY key") == [
            ("synced-1", 1),
            ("synced-2", 1),
        ]


def test_a_v3_file_keeps_its_pending_changes_and_their_numbers(tmp_path) -> None:
    path, server_db, before = placed_fixture(V3, tmp_path, 3)
    with Client(path) as client:
        assert client.client_id == before["client_id"], "a migration is not a copy"
        pending = client.db.pending("notes", 10)
        assert [(e.n, e.op, e.key) for e in pending] == [
            (5, "add", "pending-1"),
            (6, "delete", "synced-1"),
        ]
        assert client.store("notes").get("synced-1") is None
    assert meta(path)["schema_version"] == str(SCHEMA_VERSION)
    assert rows(path, "SELECT n, seen FROM outbox ORDER BY n") == [(5, 0), (6, 0)]
    assert shape(path) == shape_of_fresh(tmp_path), "migrated and fresh files agree"
    with ServerProcess(server_db) as srv:
        api = Api(srv.url)
        with Client(path, srv.url, retry=RetryPolicy(max_attempts=3, sleep=lambda s: None)) as c:
            c.store("notes")
            report = c.sync()
            assert c.status.pending == 0 and report.rejected == []
            assert logged_numbers(server_db, before["client_id"]) == {
                n: "applied" for n in range(1, 7)
            }, "5, 6 under their own numbers"
        assert sorted(r["key"] for r in api.pull_all("notes")[0] if r["op"] == "add") == [
            "pending-1",
            "synced-1",
            "synced-2",
            "synced-3",
        ]


def shape_of_fresh(tmp_path: Path) -> dict[str, object]:
    Client(tmp_path / "fresh.db").close()
    return shape(tmp_path / "fresh.db")


def test_a_failing_step_leaves_the_file_at_its_version(tmp_path, monkeypatch) -> None:
    path = v1_copy(tmp_path)
    real_step = migrations.STEPS[2]

    def step_then_fail(db) -> None:
        real_step(db)  # its changes are made, then the step fails before it commits
        raise RuntimeError("disk on fire")

    monkeypatch.setitem(migrations.STEPS, 2, step_then_fail)
    with pytest.raises(RuntimeError, match="disk on fire"):
        Client(path)
    assert meta(path)["schema_version"] == "1"
    with sqlite3.connect(path) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(records)")]
        assert "own" not in columns, "the step's changes were rolled back"
    monkeypatch.setitem(migrations.STEPS, 2, real_step)
    with Client(path) as client:
        assert client.store("notes").get("pending-1").pending
    assert meta(path)["schema_version"] == str(SCHEMA_VERSION)


def test_a_newer_file_is_refused_and_left_untouched(tmp_path) -> None:
    path = tmp_path / "newer.db"
    Client(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,)
        )
        conn.execute("CREATE TABLE from_the_future (x)")
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(migrations.UnsupportedSchema, match="upgrade idsync") as refused:
        Client(path)
    assert isinstance(refused.value, IdsyncError)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert meta(path)["schema_version"] == str(SCHEMA_VERSION + 1)


def test_a_file_that_is_not_a_client_file_is_refused(tmp_path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (x)")
    with pytest.raises(migrations.UnsupportedSchema, match="not an idsync client file"):
        Client(path)
