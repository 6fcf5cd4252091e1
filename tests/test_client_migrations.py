"""Numbered migrations of the client file: a file made by release 0.1.0 (schema 1)
opens with the current code, data intact; a failed step changes nothing; a
newer file is refused untouched."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from pathlib import Path

import pytest

from idsync_client import Client, IdsyncError, RetryPolicy, migrations
from idsync_client.schema import SCHEMA_VERSION
from idsync_client.testing import ServerProcess

from .conftest import Api

FIXTURE = Path(__file__).parent / "fixtures" / "v1" / "client.sqlite"


def v1_copy(tmp_path: Path) -> Path:
    path = tmp_path / "client.sqlite"
    shutil.copy(FIXTURE, path)
    return path


def meta(path: Path) -> dict[str, str]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT key, value FROM meta").fetchall())


def shape(path: Path) -> dict[str, object]:
    """Every table's columns (name, type, not null, default, pk) and every index."""
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
        assert [ch["key"] for ch in api.pull_all("other")[0]] == ["other-1"]


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
