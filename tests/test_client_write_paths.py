"""The client's fast write paths: bulk adds checked by the unique index, the
pending count kept without counting the outbox, and pulled pages inserted
column by column. Each fast path must give what the careful path gave."""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from idsync_client import Client, KeyInUse
from idsync_client.localdb import LocalDB
from idsync_client.protocol import Outcome

EPOCH = "0123456789abcdef"


@pytest.fixture
def client(tmp_path: Path):
    with Client(tmp_path / "local.db") as c:
        yield c


def outbox_keys(db: LocalDB, store: str) -> list[str]:
    return [e.key for e in db.pending(store, 100_000)]


def test_a_batch_with_a_key_the_store_holds_names_it_and_adds_nothing(client: Client) -> None:
    notes = client.store("notes")
    notes.add({"old": True}, key="taken")
    with pytest.raises(KeyInUse, match="'taken'"):
        notes.add_many([{"value": 1, "key": "new-1"}, {"value": 2, "key": "taken"}, {"value": 3}])
    assert [r.key for r in notes] == ["taken"]
    assert outbox_keys(client.db, "notes") == ["taken"]
    assert client.status.pending == 1 == client.db.pending_count()
    # The store still takes a good batch after the refused one.
    assert len(notes.add_many([{"value": i} for i in range(3)])) == 3
    assert len(notes) == 4 and client.status.pending == 4


def test_a_batch_with_a_deleted_key_is_refused_and_adds_nothing(client: Client) -> None:
    notes = client.store("notes")
    notes.delete(notes.add(1, key="gone"))
    with pytest.raises(KeyInUse, match="'gone'"):
        notes.add_many([{"value": 1, "key": "fresh"}, {"value": 2, "key": "gone"}])
    assert notes.get("fresh") is None and len(notes) == 0
    assert outbox_keys(client.db, "notes") == ["gone", "gone"]  # the add and the delete


def test_a_refused_batch_inside_a_larger_transaction_leaves_none_of_its_rows(tmp_path: Path) -> None:
    db = LocalDB(tmp_path / "local.db")
    try:
        with db.transaction():
            db.add("notes", "first", ("tag:a",), "1")
            # 600 rows go in before the clash: the savepoint takes them back.
            rows = [(f"k{i}", ("tag:b",), str(i)) for i in range(600)] + [("first", (), "0")]
            with pytest.raises(KeyInUse, match="'first'"):
                db.add_many("notes", rows)
            db.add("notes", "after", (), "2")
        assert [r.key for _, r in db.scan("notes", 0, 1000)] == ["first", "after"]
        assert outbox_keys(db, "notes") == ["first", "after"]
        assert [r.key for _, r in db.find("notes", "tag:b", False, 0, 1000)] == []
    finally:
        db.close_all()


def test_local_writes_keep_the_pending_count_without_counting_the_outbox(client: Client) -> None:
    notes = client.store("notes")
    statements: list[str] = []
    client.db.db.connection().set_trace_callback(statements.append)
    key = notes.add({"a": 1})
    notes.add_many([{"value": i} for i in range(5)])
    notes.delete(key)
    notes.set_attr("e1", "title", "one")
    notes.set_attr("e1", "title", "two")  # adds one, deletes one
    notes.delete_entity("e1")
    client.db.db.connection().set_trace_callback(None)
    assert not [s for s in statements if "count(" in s.lower() and "outbox" in s.lower()]
    assert client.status.pending == client.db.pending_count() == 12


def _page(*changes: tuple[int, str, object]) -> list[dict]:
    return [{"seq": s, "op": "add", "key": k, "index": ["tag:x"], "value": v} for s, k, v in changes]


def test_a_pulled_page_keeps_values_as_exact_json(tmp_path: Path) -> None:
    db = LocalDB(tmp_path / "local.db")
    values = [2**63 - 1, -(2**63), 1.0, 1, -0.0, 0.5, True, None, "é😀", {"b": [1, 1.0, {}]}]
    try:
        page = _page(*((i + 1, f"k{i}", v) for i, v in enumerate(values)))
        event = db.apply_pulled("s", page, f"{EPOCH}.{len(values)}", None)
        assert event is not None and [r.key for r in event.added] == [c["key"] for c in page]
        for i, value in enumerate(values):
            record = db.get("s", f"k{i}")
            assert record is not None and record.seq == i + 1 and record.index == ("tag:x",)
            got = record.value
            assert type(got) is type(value) and got == value
            if isinstance(value, float):
                assert str(got) == str(value)  # -0.0 stays -0.0, 1.0 stays a float
        assert [r.key for _, r in db.find("s", "tag:x", False, 0, 100)] == [
            f"k{i}" for i in range(len(values))
        ]
    finally:
        db.close_all()


def test_a_pulled_add_of_a_key_held_below_the_page_is_applied_as_before(tmp_path: Path) -> None:
    # A server restored from an older copy may log a key again, past every
    # sequence number this file holds: the page is applied change by change
    # (the server's version replaces the local one), not refused.
    db = LocalDB(tmp_path / "local.db")
    try:
        assert db.apply_pulled("s", _page((1, "k", "old")), f"{EPOCH}.1", None) is not None
        page = _page((5, "k2", "two"), (6, "k", "new"))
        event = db.apply_pulled("s", page, f"{EPOCH}.6", f"{EPOCH}.1")
        assert event is not None
        assert sorted(r.key for r in event.added) == ["k", "k2"]
        record = db.get("s", "k")
        assert record is not None and record.value == "new" and record.seq == 6
        assert db.count("s") == 2 and db.cursor("s") == f"{EPOCH}.6"
        assert len(list(db.find("s", "tag:x", False, 0, 100))) == 2
    finally:
        db.close_all()


def test_a_pulled_page_with_a_pending_key_goes_the_careful_way(tmp_path: Path) -> None:
    db = LocalDB(tmp_path / "local.db")
    try:
        with db.transaction():
            db.add("s", "mine", ("tag:x",), '"v"')
        event = db.apply_pulled("s", _page((1, "mine", "v"), (2, "other", 2)), f"{EPOCH}.2", None)
        assert event is not None and [r.key for r in event.added] == ["other"]
        record = db.get("s", "mine")
        assert record is not None and record.seq == 1  # our own add came back
        assert db.count("s") == 2
    finally:
        db.close_all()


BULK_WORKER = textwrap.dedent(
    """
    import sys
    from idsync_client import Client
    db, round_ = sys.argv[1], sys.argv[2]
    with Client(db) as client:
        notes = client.store("notes")
        items = [{"value": {"i": i, "pad": "x" * 200}, "index": [f"round:{round_}"],
                  "key": f"r{round_}-{i}"} for i in range(10_000)]
        print("adding", flush=True)
        notes.add_many(items)
        print("added", flush=True)
    """
)


def test_a_bulk_add_killed_mid_transaction_leaves_none_or_all(tmp_path: Path) -> None:
    db = tmp_path / "bulk.db"
    rng = random.Random(11)
    outcomes = []
    for round_ in range(4):
        proc = subprocess.Popen(
            [sys.executable, "-c", BULK_WORKER, str(db), str(round_)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.strip() == "adding", line + (proc.stderr.read() if proc.stderr else "")
        time.sleep(rng.uniform(0.0, 0.15) if round_ else 0.0)
        proc.kill()
        out, _ = proc.communicate(timeout=30)
        outcomes.append("added" in out)
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            records = conn.execute(
                "SELECT count(*) FROM records WHERE key LIKE ?", (f"r{round_}-%",)
            ).fetchone()[0]
            queued = conn.execute(
                "SELECT count(*) FROM outbox WHERE key LIKE ?", (f"r{round_}-%",)
            ).fetchone()[0]
            items = conn.execute(
                "SELECT count(*) FROM index_items WHERE item = ?", (f"round:{round_}",)
            ).fetchone()[0]
        assert records == queued == items and records in (0, 10_000), (round_, records, queued)
        if "added" in out:
            assert records == 10_000, "an acknowledged bulk write vanished"
    # The file opens and takes writes after the kills.
    with Client(db) as client:
        client.store("notes").add_many([{"value": 1, "key": "after"}])
        assert client.store("notes").get("after") is not None
    assert outcomes[0] is False  # killed at once: the batch never committed


def test_a_key_used_in_another_store_does_not_refuse_a_batch(client: Client) -> None:
    client.store("a").add(1, key="shared")
    client.store("a").delete(client.store("a").add(2, key="gone"))
    assert client.store("b").add_many([{"value": 3, "key": "shared"}, {"value": 4, "key": "gone"}])
    assert client.store("b").get("shared") is not None and client.store("b").get("gone") is not None
    assert client.status.pending == client.db.pending_count() == 5


def written_trees(path: Path, write) -> set[str]:
    """The B-trees (tables and indexes) whose pages ``write()`` put in the WAL."""
    db = LocalDB(path)
    try:
        db._sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        write(db)
        data = path.with_name(path.name + "-wal").read_bytes()
        page_size = int.from_bytes(data[8:12], "big")
        pages = {
            int.from_bytes(data[at : at + 4], "big")
            for at in range(32, len(data) - 24 - page_size + 1, 24 + page_size)
        }
        with sqlite3.connect(path) as conn:
            owner = dict(conn.execute("SELECT pageno, name FROM dbstat").fetchall())
    finally:
        db.close_all()
    # Page 1 and pointer-map pages change when the file grows: not a tree's.
    return {owner[page] for page in pages if page in owner} - {"sqlite_schema"}


def test_a_durable_add_writes_only_the_record_its_index_rows_and_its_outbox_entry(
    tmp_path: Path,
) -> None:
    path = tmp_path / "local.db"
    db = LocalDB(path)
    with db.transaction():
        db.add("s", "synced", ("tag:a",), "1")
    db.settle("s", db.pending("s", 10), [Outcome(db.pending("s", 10)[0].n, "applied", 1)])
    db.close_all()

    def add(db: LocalDB) -> None:
        with db.transaction():
            db.add("s", "new", ("tag:a", "tag:b"), '{"v": 1}')

    # No (store, seq) entry for a pending record, no AUTOINCREMENT counter row.
    assert written_trees(path, add) == {
        "records",
        "recordrow_store_key",
        "index_items",
        "outbox",
        "outboxrow_store_n",
    }

    def delete(db: LocalDB) -> None:
        with db.transaction():
            db.delete("s", "synced")

    # The synced record leaves the seq index; its pending tombstone has no seq.
    assert written_trees(path, delete) == {
        "records",
        "recordrow_store_key",
        "recordrow_store_seq",
        "index_items",
        "deleted_records",
        "tombstones",
        "outbox",
        "outboxrow_store_n",
    }


def numbers(db: LocalDB, store: str) -> list[int]:
    return [e.n for e in db.pending(store, 1000)]


def test_change_numbers_stay_above_every_number_that_left_the_outbox(tmp_path: Path) -> None:
    path = tmp_path / "local.db"
    db = LocalDB(path)
    try:
        with db.transaction():
            for key in ("a", "b", "c"):
                db.add("s", key, (), "1")
        entries = db.pending("s", 10)
        assert [e.n for e in entries] == [1, 2, 3]
        # Settled: the outbox is empty, its greatest number gone with it.
        db.settle("s", entries, [Outcome(e.n, "applied", i + 1) for i, e in enumerate(entries)])
        assert db.pending_count() == 0
        with db.transaction():
            db.add("s", "d", (), "1")
        assert numbers(db, "s") == [4]
        db.reject(db.pending("s", 1)[0], "invalid_change", "no")  # rejected: gone too
        with db.transaction():
            db.add("t", "e", (), "1")
        assert numbers(db, "t") == [5]
        db._sql("DELETE FROM outbox")  # whatever code removes entries
        # Several entries queued by one statement (as a reset queues lost adds).
        with db.transaction():
            db._sql(
                "INSERT INTO outbox (store, op, key) SELECT 'u', 'delete', key FROM records"
                " WHERE store = 's' ORDER BY key"
            )
        assert [(e.n, e.key) for e in db.pending("u", 10)] == [(6, "a"), (7, "b"), (8, "c")]
        db._sql("DELETE FROM outbox WHERE n = 8")  # the greatest leaves, 6 and 7 stay
    finally:
        db.close_all()
    db = LocalDB(path)
    try:
        with db.transaction():
            db.add("s", "f", (), "1")
        assert numbers(db, "s") == [9], "still above 8 after a reopen"
    finally:
        db.close_all()


CRASH_WORKER = textwrap.dedent(
    """
    import os, signal, sys
    from idsync_client.localdb import LocalDB
    from idsync_client.protocol import Outcome
    db = LocalDB(sys.argv[1])
    with db.transaction():
        for key in ("a", "b", "c"):
            db.add("s", key, (), "1")
    entries = db.pending("s", 10)
    db.settle("s", entries, [Outcome(e.n, "applied", i + 1) for i, e in enumerate(entries)])
    with db.transaction():
        db.add("s", "lost", (), "1")  # never committed: its number was never used
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_change_numbers_that_left_the_outbox_stay_used_after_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "local.db"
    proc = subprocess.run(
        [sys.executable, "-c", CRASH_WORKER, str(path)], capture_output=True, timeout=60
    )
    assert proc.returncode == -9, proc.stderr
    db = LocalDB(path)
    try:
        assert db.pending_count() == 0
        with db.transaction():
            db.add("s", "d", (), "1")
        assert numbers(db, "s") == [4]
    finally:
        db.close_all()


def test_a_durable_add_is_three_statements_in_its_transaction(tmp_path: Path) -> None:
    db = LocalDB(tmp_path / "local.db")
    try:
        with db.transaction():
            db.add("s", "first", ("tag:a",), "1")
        statements: list[str] = []
        db.db.connection().set_trace_callback(statements.append)
        with db.transaction():
            db.add("s", "second", ("tag:a", "tag:b"), '{"v": 2}')
        db.db.connection().set_trace_callback(None)
        # A statement that fires a trigger is traced again for it: counted once.
        own = list(dict.fromkeys(s for s in statements if not s.startswith("--")))
        assert len(own) <= 5, own  # BEGIN, the record, its index rows, its outbox entry, COMMIT
        with pytest.raises(KeyInUse), db.transaction():
            db.add("s", "second", (), "3")
        with db.transaction():
            db.delete("s", "first")
        with pytest.raises(KeyInUse, match="'first'"), db.transaction():
            db.add("s", "first", (), "4")
        assert [e.key for e in db.pending("s", 10)] == ["first", "second", "first"]
    finally:
        db.close_all()
