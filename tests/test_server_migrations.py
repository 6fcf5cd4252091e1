"""The server database migrates: a file made by release 0.1.0 (schema 1) opens with this code."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from idsync_client import jsoncodec
from idsync_client.protocol import Change, Cursor, Outcome
from idsync_server_ref.process import ServerProcess
from idsync_server_ref.storage import (
    ResetRequired,
    SchemaTooNew,
    SqliteStorage,
    StorageFailure,
    client_runs,
    sqlite_migrations,
)
from idsync_server_ref.storage.equality import legacy_change_hash
from idsync_server_ref.storage.migrations import Migration, latest_version
from idsync_server_ref.storage.sqlite_migrations import STEPS
from idsync_server_ref.storage.sqlite_schema import SCHEMA_VERSION

FIXTURE = Path(__file__).parent / "fixtures" / "v1" / "server.sqlite"
CLIENT = "7b8079b7fca3477b913c1f47a2ba69a6"  # the client id stored in the fixture


@pytest.fixture
def v1_file(tmp_path: Path) -> Path:
    path = tmp_path / "server.sqlite"
    shutil.copy(FIXTURE, path)
    return path


def _query(path: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _version(path: Path) -> str:
    return _query(path, "SELECT value FROM meta WHERE key = 'schema_version'")[0][0]


def _columns(path: Path, table: str) -> list[str]:
    return [row[1] for row in _query(path, f"PRAGMA table_info({table})")]


def _idempotency_hashes(path: Path) -> dict[int, str]:
    """``n -> body_hash`` of the stored outcomes of a migrated file (one client)."""
    rows = _query(
        path, "SELECT o.value ->> 0, o.value ->> 1 FROM client_batches, json_each(outcomes) o"
    )
    return dict(rows)


def _stored_changes(path: Path) -> list[Change]:
    """The fixture client's changes, rebuilt from the log (n = seq: all were applied)."""
    changes = []
    for seq, op, key, index_json, value_json in _query(
        path, "SELECT seq, op, key, index_json, value_json FROM changes ORDER BY seq"
    ):
        if op == "add":
            changes.append(Change(seq, "add", key, tuple(jsoncodec.loads(index_json)), value_json))
        else:
            changes.append(Change(seq, "delete", key))
    return changes


def test_the_code_knows_the_version_its_models_describe() -> None:
    assert latest_version(STEPS) == SCHEMA_VERSION == 5


def test_a_v1_file_is_migrated_with_its_data_intact(v1_file: Path) -> None:
    before = _query(v1_file, "SELECT store_id, seq, op, key, index_json, value_json FROM changes")
    assert _version(v1_file) == "1" and "tag" not in _columns(v1_file, "changes")
    storage = SqliteStorage(v1_file)
    try:
        info = storage.get_store("notes")
        assert (info.head_seq, info.live_records, info.log_length) == (7, 3, 7)
        assert jsoncodec.loads(storage.get_record("notes", "zero"))["value"] == 0
        assert storage.get_record("notes", "synced-2") is None
        found = storage.find("notes", "a,b", False, 0, 10).records_json
        assert [jsoncodec.loads(r)["key"] for r in found] == ["synced-1"]
        page = storage.pull("notes", None, 100, 10**6)
        assert [jsoncodec.loads(i)["seq"] for i in page.items_json] == list(range(1, 8))
    finally:
        storage.close()
    assert _version(v1_file) == str(SCHEMA_VERSION)
    after = _query(
        v1_file, "SELECT store_id, seq, op, key, index_json, value_json, tag FROM changes"
    )
    assert [row[:6] for row in after] == before
    tags = [row[6] for row in after]
    assert len(set(tags)) == len(tags) and all(0 <= t < 2**63 for t in tags)
    assert _query(v1_file, "PRAGMA integrity_check") == [("ok",)]
    # Every row's body was in the log: none keeps a schema-1 hash.
    hashes = list(_idempotency_hashes(v1_file).values())
    assert len(hashes) == 7 and not any(h.startswith("v1:") for h in hashes)


def test_the_stored_clients_replays_answer_as_before(v1_file: Path) -> None:
    stored = {
        n: (status, seq)
        for n, status, seq in _query(v1_file, "SELECT n, status, seq FROM client_changes")
    }
    changes = _stored_changes(v1_file)
    storage = SqliteStorage(v1_file)
    try:
        replayed = storage.push("notes", CLIENT, changes)
        assert {o.n: (o.status, o.seq) for o in replayed} == stored
        # Same change numbers, other bodies: conflicts, including the bodies
        # whose index items joined with a comma hashed alike in schema 1.
        n1, n3 = changes[0], changes[2]
        assert n3.index == ("a", "b") and n1.index == ("a,b", "tag:work")
        others = [
            Change(1, "add", n1.key, ("a", "b", "tag:work"), n1.value_json),
            Change(3, "add", n3.key, ("a,b",), n3.value_json),
            Change(3, "add", n3.key, n3.index, "false"),
            Change(5, "add", "synced-2", (), "null"),
        ]
        assert [legacy_change_hash(c) for c in others[:2]] == [
            legacy_change_hash(n1),
            legacy_change_hash(n3),
        ]
        outcomes = storage.push("notes", CLIENT, others)
        assert [(o.status, o.code) for o in outcomes] == [
            ("rejected", "change_number_conflict")
        ] * 4
        assert storage.get_store("notes").head_seq == 7
        # Another client re-adding "zero" (stored as 0) with false: key_exists.
        out = storage.push("notes", "other", [Change(1, "add", "zero", ("a", "b"), "false")])
        assert (out[0].status, out[0].code) == ("rejected", "key_exists")
    finally:
        storage.close()


def test_rows_whose_body_is_lost_keep_their_schema_1_answers(
    v1_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_migrations, "_PAGE", 2)  # several pages of rows
    # What 0.1.0 wrote for a rejected delete, and for a duplicate add whose
    # value differed from the logged one in member order: no body to re-hash.
    rejected = Change(8, "delete", "never")
    reordered = Change(9, "add", "synced-1", ("a,b", "tag:work"), '{"n":1,"title":"synced"}')
    conn = sqlite3.connect(v1_file)
    with conn:
        conn.executemany(
            "INSERT INTO client_changes VALUES (1, ?, ?, ?, ?, ?, ?, ?)",
            [
                (CLIENT, 8, legacy_change_hash(rejected), "rejected", None, "key_not_found", "m"),
                (CLIENT, 9, legacy_change_hash(reordered), "duplicate", 1, None, None),
            ],
        )
    conn.close()
    storage = SqliteStorage(v1_file)
    try:
        hashes = _idempotency_hashes(v1_file)
        assert [n for n, h in sorted(hashes.items()) if h.startswith("v1:")] == [8, 9]
        assert len(hashes) == 9
        replayed = storage.push("notes", CLIENT, _stored_changes(v1_file))
        assert [(o.status, o.seq) for o in replayed] == [("applied", n) for n in range(1, 8)]
        again = storage.push("notes", CLIENT, [rejected, reordered])
        assert [(o.status, o.seq, o.code, o.message) for o in again] == [
            ("rejected", None, "key_not_found", "m"),
            ("duplicate", 1, None, None),
        ]
        other = storage.push("notes", CLIENT, [Change(8, "delete", "zero")])
        assert (other[0].status, other[0].code) == ("rejected", "change_number_conflict")
    finally:
        storage.close()


def test_cursors_from_before_the_migration_ask_for_a_reset(v1_file: Path) -> None:
    epoch = _query(v1_file, "SELECT epoch FROM stores")[0][0]
    storage = SqliteStorage(v1_file)
    try:
        with pytest.raises(ResetRequired, match="names no log entry"):
            storage.pull("notes", Cursor(epoch, 7), 10, 10**6)
        with pytest.raises(ResetRequired):
            storage.snapshot("notes", Cursor(epoch, 3), 0, 10, 10**6)
        assert len(storage.pull("notes", Cursor(epoch, 0), 10, 10**6).items_json) == 7
        snap = storage.snapshot("notes", None, 0, 10, 10**6)
        assert snap.at.tag and storage.pull("notes", snap.at, 10, 10**6).items_json == []
    finally:
        storage.close()


def test_a_crash_inside_a_step_leaves_the_old_version(
    v1_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = STEPS[0]

    def crash_after_the_work(db) -> None:
        real.apply(db)  # all of the step's changes are made, then the power goes
        raise RuntimeError("power cut")

    hashes = _query(v1_file, "SELECT n, body_hash FROM client_changes")
    crashing = [Migration(2, real.description, crash_after_the_work)]
    monkeypatch.setattr(sqlite_migrations, "STEPS", crashing)
    with pytest.raises(RuntimeError, match="power cut"):
        SqliteStorage(v1_file)
    assert _version(v1_file) == "1"
    assert "tag" not in _columns(v1_file, "changes")
    assert _query(v1_file, "SELECT n, body_hash FROM client_changes") == hashes
    assert _query(v1_file, "PRAGMA integrity_check") == [("ok",)]
    monkeypatch.undo()
    SqliteStorage(v1_file).close()
    assert _version(v1_file) == str(SCHEMA_VERSION) and "tag" in _columns(v1_file, "changes")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_file_newer_than_the_code_is_refused_and_left_unchanged(v1_file: Path) -> None:
    conn = sqlite3.connect(v1_file)
    with conn:
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),)
        )
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    before = _digest(v1_file)
    newer = f"schema version {SCHEMA_VERSION + 1}, newer than this server's {SCHEMA_VERSION}"
    with pytest.raises(SchemaTooNew, match=newer):
        SqliteStorage(v1_file)
    assert _digest(v1_file) == before
    assert _version(v1_file) == str(SCHEMA_VERSION + 1)
    assert "tag" not in _columns(v1_file, "changes")


@pytest.mark.parametrize("kind", ["newer", "another program", "not a database"])
def test_a_refused_file_is_left_exactly_as_it_was(tmp_path: Path, kind: str) -> None:
    """Refused before anything is written: no switch to WAL, no -wal/-shm beside it."""
    path = tmp_path / "refused.sqlite"
    if kind == "not a database":
        path.write_bytes(b"SQLite format 2\0" + b"x" * 4000)
    else:
        shutil.copy(FIXTURE, path) if kind == "newer" else None
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA journal_mode=DELETE")
        with conn:
            if kind == "newer":
                conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
            else:
                conn.execute("CREATE TABLE notes (x)")
        conn.close()
    before = _digest(path)
    with pytest.raises(StorageFailure):
        SqliteStorage(path)
    assert _digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["refused.sqlite"]


def test_a_file_of_another_program_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (x)")
    conn.close()
    with pytest.raises(StorageFailure, match="not an idsync server database"):
        SqliteStorage(path)
    assert _query(path, "SELECT name FROM sqlite_master") == [("notes",)]


def _schema(path: Path) -> dict[str, object]:
    tables = [t for (t,) in _query(path, "SELECT name FROM sqlite_master WHERE type='table'")]
    return {
        table: (
            sorted((c[1], c[2], c[3], c[5]) for c in _query(path, f"PRAGMA table_info({table})")),
            sorted(i[1:4] for i in _query(path, f"PRAGMA index_list({table})")),
        )
        for table in tables
    }


def test_a_migrated_file_has_the_schema_of_a_fresh_one(v1_file: Path, tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.sqlite"
    SqliteStorage(fresh).close()
    SqliteStorage(v1_file).close()
    assert _schema(v1_file) == _schema(fresh)
    assert _version(fresh) == str(SCHEMA_VERSION)


def test_steps_must_be_numbered_in_order() -> None:
    def noop(handle: object) -> None:
        return None

    assert latest_version([]) == 1
    with pytest.raises(ValueError, match="numbered"):
        latest_version([Migration(3, "skips 2", noop)])


def test_servers_opening_one_old_file_at_once_migrate_it_once(v1_file: Path) -> None:
    barrier = threading.Barrier(4, timeout=10)
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            barrier.wait()
            SqliteStorage(v1_file).close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == [] and not any(t.is_alive() for t in threads)
    assert _version(v1_file) == str(SCHEMA_VERSION)
    tags_before = _query(v1_file, "SELECT seq, tag FROM changes ORDER BY seq")
    SqliteStorage(v1_file).close()  # already at the latest version: nothing runs
    assert _query(v1_file, "SELECT seq, tag FROM changes ORDER BY seq") == tags_before


def test_the_server_refuses_a_newer_file_with_a_clear_message(v1_file: Path) -> None:
    conn = sqlite3.connect(v1_file)
    with conn:
        conn.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
    conn.close()
    with pytest.raises(RuntimeError) as caught:
        ServerProcess(v1_file).start(timeout=30)
    assert f"schema version 7, newer than this server's {SCHEMA_VERSION}" in str(caught.value)
    assert _version(v1_file) == "7"


V4 = Path(__file__).parent / "fixtures" / "v4"


def _outcome(o: Outcome) -> list[object]:
    return [o.n, o.status, o.seq, o.code, o.message]


@pytest.mark.parametrize("small", [False, True], ids=["runs", "short-runs-and-pages"])
def test_a_v4_file_answers_as_before_after_step_5(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small: bool
) -> None:
    # Made by the code of schema 4 (tests/fixtures/v4/make_fixtures.py), with
    # what it served then: every record, the log, cursors, each batch's first
    # outcomes and compaction's result.
    path = tmp_path / "server.sqlite"
    shutil.copy(V4 / "server.sqlite", path)
    expected = json.loads((V4 / "expected.json").read_text())
    assert _version(path) == "4"
    if small:  # runs of two outcomes, read two rows a page: runs cut across pages
        monkeypatch.setattr(client_runs, "RUN_SIZE", 2)
        monkeypatch.setattr(sqlite_migrations, "_PAGE", 2)
    storage = SqliteStorage(path)
    try:
        assert _version(path) == str(SCHEMA_VERSION) == "5"
        assert "client_changes" not in {t for (t,) in _query(path, "SELECT name FROM sqlite_master")}
        if not small:  # alice's notes: 1-7 and 10, 5000, the two past 9e9; bob; other
            assert _query(path, "SELECT count(*) FROM client_batches") == [(5,)]
        for name, store in expected["stores"].items():
            info = storage.get_store(name)
            assert (info.head_seq, info.live_records) == (store["head"], store["live"])
            page = storage.pull(name, None, 1000, 1 << 20)
            assert (page.items_json, page.cursor.encode()) == (store["log"], store["cursor"])
            assert storage.snapshot(name, None, 0, 1000, 1 << 20).records_json == store["records"]
            held = storage.pull(name, Cursor.decode(store["cursor"]), 1000, 1 << 20)
            assert (held.items_json, held.cursor.encode()) == ([], store["cursor"])
        batches = [
            (name, client, [Change(n, op, key, tuple(index), value) for n, op, key, index, value in rows])
            for name, client, rows in expected["batches"]
        ]
        for (name, client, changes), first in zip(batches, expected["first_outcomes"], strict=True):
            assert [_outcome(o) for o in storage.push(name, client, changes)] == first
        # Regrouped: the last of one batch with the first of the next.
        alice = batches[1][2][-1:] + batches[2][2][:1]
        regrouped = [_outcome(o) for o in storage.push("notes", "u:alice", alice)]
        assert regrouped == expected["first_outcomes"][1][-1:] + expected["first_outcomes"][2][:1]
        other_body = Change(5000, "add", "d", (), "[2,1]")
        conflict = storage.push("notes", "u:alice", [other_body])
        assert (conflict[0].status, conflict[0].code) == ("rejected", "change_number_conflict")
        for name, store in expected["stores"].items():
            assert storage.get_store(name).head_seq == store["head"]  # nothing applied
        report = storage.compact(now=4_000_000_000.0)
        compacted = expected["compaction"]
        assert (report.entries_removed, report.horizons) == (
            compacted["removed"],
            compacted["horizons"],
        )
        info = storage.get_store("notes")
        assert [info.horizon_seq, info.log_length, info.live_records] == compacted["horizon_log"]
        assert storage.snapshot("notes", None, 0, 1000, 1 << 20).records_json == compacted["records"]
        # Replays still answer after compaction; new numbers apply.
        first = expected["first_outcomes"]
        assert [_outcome(o) for o in storage.push("notes", "u:alice", batches[0][2])] == first[0]
        new = storage.push("notes", "u:alice", [Change(11, "add", "g", (), "1")])
        assert (new[0].status, new[0].seq) == ("applied", expected["stores"]["notes"]["head"] + 1)
    finally:
        storage.close()
    assert _query(path, "PRAGMA integrity_check") == [("ok",)]


def test_a_migrated_v4_file_has_the_schema_of_a_fresh_one(tmp_path: Path) -> None:
    path = tmp_path / "server.sqlite"
    shutil.copy(V4 / "server.sqlite", path)
    SqliteStorage(path).close()
    fresh = tmp_path / "fresh.sqlite"
    SqliteStorage(fresh).close()
    assert _schema(path) == _schema(fresh)
