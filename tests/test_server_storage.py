"""The SQLite storage backend on a real file: outcomes, pages, snapshots, lookups."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from idsync_client import jsoncodec
from idsync_client.protocol import Change, Cursor, prefix_upper_bound
from idsync_server_ref.storage import (
    ResetRequired,
    SqliteStorage,
    StorageFailure,
    StoreExists,
    StoreNotFound,
)


@pytest.fixture
def storage(db_path: Path):
    s = SqliteStorage(db_path)
    s.create_store("notes")
    yield s
    s.close()


def add(n: int, key: str, value: object = None, index: tuple[str, ...] = ()) -> Change:
    return Change(n, "add", key, tuple(sorted(index)), jsoncodec.dumps(value or {"n": n}))


def delete(n: int, key: str) -> Change:
    return Change(n, "delete", key)


def statuses(outcomes) -> list[tuple]:
    return [(o.status, o.seq, o.code) for o in outcomes]


def test_sequence_numbers_increase_and_state_follows(storage: SqliteStorage) -> None:
    out = storage.push("notes", "c1", [add(1, "a"), add(2, "b"), delete(3, "a")])
    assert statuses(out) == [("applied", 1, None), ("applied", 2, None), ("applied", 3, None)]
    info = storage.get_store("notes")
    assert (info.head_seq, info.live_records, info.log_length) == (3, 1, 3)
    assert storage.get_record("notes", "a") is None
    assert jsoncodec.loads(storage.get_record("notes", "b"))["value"] == {"n": 2}


def test_each_defined_outcome(storage: SqliteStorage) -> None:
    storage.push(
        "notes", "c1", [add(1, "k", {"v": 1}, ("tag:x",)), add(2, "gone"), delete(3, "gone")]
    )
    out = storage.push(
        "notes",
        "c2",
        [
            add(1, "k", {"v": 1}, ("tag:x",)),  # same content again: a success
            add(2, "k", {"v": 2}, ("tag:x",)),  # other content
            add(3, "gone"),  # reuse of a deleted key
            delete(4, "never"),  # unknown key
            delete(5, "gone"),  # second delete
            add(6, "fresh"),  # still applied after the rejections
        ],
    )
    assert statuses(out) == [
        ("duplicate", 1, None),
        ("rejected", None, "key_exists"),
        ("rejected", None, "key_deleted"),
        ("rejected", None, "key_not_found"),
        ("duplicate", 3, None),
        ("applied", 4, None),
    ]
    assert all(o.message for o in out if o.status == "rejected")


def test_identical_content_ignores_object_key_order(storage: SqliteStorage) -> None:
    storage.push("notes", "c1", [Change(1, "add", "k", (), '{"a":1,"b":2}')])
    out = storage.push("notes", "c2", [Change(1, "add", "k", (), '{"b":2,"a":1}')])
    assert out[0].status == "duplicate"


def test_replay_returns_first_outcomes_and_applies_nothing(storage: SqliteStorage) -> None:
    batch = [add(1, "a"), add(2, "a", {"other": True}), delete(3, "zzz")]
    first = storage.push("notes", "c1", batch)
    again = storage.push("notes", "c1", batch)
    assert first == again
    assert storage.get_store("notes").head_seq == 1


def test_same_change_number_with_other_body_is_rejected(storage: SqliteStorage) -> None:
    storage.push("notes", "c1", [add(1, "a")])
    out = storage.push("notes", "c1", [add(1, "b"), add(2, "c")])
    assert statuses(out) == [("rejected", None, "change_number_conflict"), ("applied", 2, None)]
    assert storage.get_record("notes", "b") is None


def test_pull_pages_by_count_and_bytes(storage: SqliteStorage) -> None:
    storage.push("notes", "c1", [add(n, f"k{n}", {"pad": "x" * 100}) for n in range(1, 11)])
    page = storage.pull("notes", None, limit=4, max_bytes=10**6)
    assert [jsoncodec.loads(i)["seq"] for i in page.items_json] == [1, 2, 3, 4]
    assert page.more and page.cursor.seq == 4
    small = storage.pull("notes", page.cursor, limit=100, max_bytes=350)
    assert [jsoncodec.loads(i)["seq"] for i in small.items_json] == [5, 6]
    assert small.more
    # One change is always returned, even when it alone is over the byte bound.
    one = storage.pull("notes", small.cursor, limit=100, max_bytes=1)
    assert len(one.items_json) == 1
    rest = storage.pull("notes", one.cursor, limit=100, max_bytes=10**6)
    assert [jsoncodec.loads(i)["seq"] for i in rest.items_json] == [8, 9, 10]
    assert not rest.more


def test_pull_items_are_valid_json_with_the_stored_value(storage: SqliteStorage) -> None:
    value = {"text": 'quote " backslash \\ é 😀', "list": [1, 2.5, None, True]}
    storage.push(
        "notes",
        "c1",
        [add(1, 'key "with" quotes', value, ("tag:a",)), delete(2, 'key "with" quotes')],
    )
    items = [jsoncodec.loads(i) for i in storage.pull("notes", None, 10, 10**6).items_json]
    assert items == [
        {"seq": 1, "op": "add", "key": 'key "with" quotes', "index": ["tag:a"], "value": value},
        {"seq": 2, "op": "delete", "key": 'key "with" quotes'},
    ]


def test_cursor_checks(storage: SqliteStorage) -> None:
    storage.push("notes", "c1", [add(1, "a")])
    epoch = storage.get_store("notes").epoch
    with pytest.raises(ResetRequired, match="past the head"):
        storage.pull("notes", Cursor(epoch, 2), 10, 1000)
    with pytest.raises(ResetRequired):
        storage.pull("notes", Cursor("0" * 16, 1), 10, 1000)
    with pytest.raises(StoreNotFound):
        storage.pull("nope", None, 10, 1000)


def test_drop_and_recreate_changes_the_epoch(storage: SqliteStorage) -> None:
    storage.push("notes", "c1", [add(1, "a")])
    old = storage.get_store("notes").head_cursor
    storage.drop_store("notes")
    with pytest.raises(StoreNotFound):
        storage.get_store("notes")
    with pytest.raises(StoreExists):
        storage.create_store(storage.create_store("notes").name)
    with pytest.raises(ResetRequired):
        storage.pull("notes", old, 10, 1000)
    assert storage.get_record("notes", "a") is None
    # The key belonged to the dropped store: the new one accepts it.
    assert storage.push("notes", "c1", [add(1, "a")])[0].status == "applied"


def test_snapshot_is_consistent_while_writes_go_on(storage: SqliteStorage) -> None:
    storage.push("notes", "c1", [add(n, f"k{n}") for n in range(1, 21)])
    first = storage.snapshot("notes", None, 0, limit=5, max_bytes=10**6)
    assert first.at.seq == 20 and first.more
    # Writes after the snapshot started: deletes of unseen records, new adds.
    storage.push("notes", "c1", [delete(21, "k15"), delete(22, "k2"), add(23, "late")])
    keys = [jsoncodec.loads(r)["key"] for r in first.records_json]
    page = first
    while page.more:
        page = storage.snapshot("notes", first.at, page.next_after, limit=5, max_bytes=10**6)
        keys += [jsoncodec.loads(r)["key"] for r in page.records_json]
    assert keys == [f"k{n}" for n in range(1, 21)]
    now = storage.snapshot("notes", None, 0, limit=100, max_bytes=10**6)
    now_keys = {jsoncodec.loads(r)["key"] for r in now.records_json}
    assert now_keys == {f"k{n}" for n in range(1, 21)} - {"k15", "k2"} | {"late"}


def test_find_exact_and_prefix_with_paging(storage: SqliteStorage) -> None:
    changes = [add(n, f"k{n}", index=(f"tag:{n % 3}", f"owner:{n % 2}")) for n in range(1, 31)]
    storage.push("notes", "c1", changes)
    storage.push("notes", "c1", [delete(31, "k3")])
    exact, _, more = storage.find("notes", "tag:0", False, 0, 100)
    assert {jsoncodec.loads(r)["key"] for r in exact} == {f"k{n}" for n in range(6, 31, 3)}
    assert not more
    found: list[str] = []
    after, more = 0, True
    while more:
        page, after, more = storage.find("notes", "tag:", True, after, 7)
        found += [jsoncodec.loads(r)["key"] for r in page]
    assert sorted(found) == sorted(f"k{n}" for n in range(1, 31) if n != 3)
    assert storage.find("notes", "tag:9", False, 0, 10) == ([], 0, False)


def test_prefix_upper_bound() -> None:
    assert prefix_upper_bound("tag:") == "tag;"
    assert prefix_upper_bound("a\U0010ffff") == "b"
    assert prefix_upper_bound("\ud7ff") == "\ue000"
    assert prefix_upper_bound("") is None


MAX = "\U0010ffff"


def _found(storage: SqliteStorage, item: str) -> set[str]:
    found: set[str] = set()
    after, more = 0, True
    for _ in range(100):  # bounded: two pages per query at most here
        page, after, more = storage.find("notes", item, True, after, 2)
        found |= {jsoncodec.loads(r)["key"] for r in page}
        if not more:
            return found
    raise AssertionError("find did not finish")


def test_prefix_query_edges_of_the_code_space(storage: SqliteStorage) -> None:
    items = {
        "max1": "p" + MAX,  # continues with U+10FFFF: inside "p"
        "max2": "p" + MAX + MAX + "z",
        "plain": "pa",
        "exact": "p",
        "bound": "q",  # equal to the upper bound of "p": outside
        "bound2": "q\x01",
        "below": "o" + MAX,
        "allmax": MAX + MAX,
        "allmax1": MAX,
        "d7ff": "\ud7ff",
        "e000": "\ue000",  # the bound of U+D7FF (surrogates skipped): outside
    }
    storage.push(
        "notes",
        "c1",
        [add(n, key, index=(item,)) for n, (key, item) in enumerate(items.items(), 1)],
    )
    assert _found(storage, "p") == {"max1", "max2", "plain", "exact"}
    assert _found(storage, "p" + MAX) == {"max1", "max2"}
    # A prefix that is all U+10FFFF has no upper bound.
    assert _found(storage, MAX) == {"allmax", "allmax1"}
    assert _found(storage, MAX + MAX) == {"allmax"}
    assert _found(storage, "\ud7ff") == {"d7ff"}
    assert _found(storage, "o") == {"below"}


def test_push_is_one_transaction(storage: SqliteStorage, db_path: Path) -> None:
    # A failure in the middle of a batch (here a trigger refusing one key)
    # leaves nothing of the batch behind.
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "CREATE TRIGGER refuse_c BEFORE INSERT ON records WHEN NEW.key = 'c'"
            " BEGIN SELECT RAISE(ABORT, 'disk I/O error'); END"
        )
    with pytest.raises(StorageFailure):
        storage.push("notes", "c1", [add(1, "a"), add(2, "b"), add(3, "c")])
    with sqlite3.connect(db_path) as conn:
        conn.execute("DROP TRIGGER refuse_c")
    assert storage.get_store("notes").head_seq == 0
    assert storage.pull("notes", None, 10, 1000).items_json == []
    assert storage.push("notes", "c1", [add(1, "a")])[0].status == "applied"


def test_add_and_delete_of_one_key_in_one_batch(storage: SqliteStorage) -> None:
    out = storage.push(
        "notes", "c1", [add(1, "k", index=("tag:a",)), delete(2, "k"), delete(3, "k"), add(4, "k")]
    )
    assert statuses(out) == [
        ("applied", 1, None),
        ("applied", 2, None),
        ("duplicate", 2, None),
        ("rejected", None, "key_deleted"),
    ]
    assert storage.get_record("notes", "k") is None
    assert storage.find("notes", "tag:a", False, 0, 10)[0] == []
    info = storage.get_store("notes")
    assert (info.live_records, info.log_length) == (0, 2)


def test_schema_version_is_checked(db_path: Path) -> None:
    SqliteStorage(db_path).close()
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StorageFailure, match="schema version 99"):
        SqliteStorage(db_path)


def test_concurrent_pushes_get_distinct_gapless_sequences(storage: SqliteStorage) -> None:
    def worker(client: str) -> None:
        for n in range(1, 21):
            storage.push("notes", client, [add(n, f"{client}-{n}")])

    threads = [threading.Thread(target=worker, args=(f"c{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seqs = [jsoncodec.loads(i)["seq"] for i in storage.pull("notes", None, 1000, 10**7).items_json]
    assert seqs == list(range(1, 81))


@pytest.mark.parametrize(
    ("stored", "sent"),
    [
        ("0", "false"),
        ("1", "true"),
        ('{"a":true}', '{"a":1}'),
        ("[1]", "[true]"),
        ("1", "1.0"),
        ('{"a":[0,{"b":1}]}', '{"a":[false,{"b":1.0}]}'),
        ("0.0", "-0.0"),
    ],
)
def test_equal_in_python_but_not_in_json_is_key_exists(
    storage: SqliteStorage, stored: str, sent: str
) -> None:
    storage.push("notes", "c1", [Change(1, "add", "k", (), stored)])
    out = storage.push("notes", "c2", [Change(1, "add", "k", (), sent)])
    assert statuses(out) == [("rejected", None, "key_exists")]
    # The stored value is untouched and keeps its type.
    assert jsoncodec.loads(storage.get_record("notes", "k"))["value"] == jsoncodec.loads(stored)
    assert jsoncodec.canonical(
        jsoncodec.loads(storage.get_record("notes", "k"))["value"]
    ) == jsoncodec.canonical(jsoncodec.loads(stored))


def test_duplicate_needs_the_exact_index_items(storage: SqliteStorage) -> None:
    storage.push("notes", "c1", [Change(1, "add", "k", ("a,b",), "1")])
    out = storage.push(
        "notes",
        "c2",
        [Change(1, "add", "k", ("a", "b"), "1"), Change(2, "add", "k", ("a,b",), "1")],
    )
    assert statuses(out) == [("rejected", None, "key_exists"), ("duplicate", 1, None)]


def test_change_number_reused_with_comma_joined_index_is_a_conflict(
    storage: SqliteStorage,
) -> None:
    storage.push("notes", "c1", [Change(1, "add", "k", ("a,b",), "1")])
    out = storage.push("notes", "c1", [Change(1, "add", "k", ("a", "b"), "1")])
    assert statuses(out) == [("rejected", None, "change_number_conflict")]
    storage.push("notes", "c1", [Change(2, "add", "j", ("x", "y"), "1")])
    out = storage.push("notes", "c1", [Change(2, "add", "j", ("x,y",), "1")])
    assert statuses(out) == [("rejected", None, "change_number_conflict")]


def test_replay_hash_is_type_exact_and_ignores_member_order(storage: SqliteStorage) -> None:
    storage.push("notes", "c1", [Change(1, "add", "k", (), '{"a":0,"b":[1]}')])
    out = storage.push(
        "notes",
        "c1",
        [
            Change(1, "add", "k", (), '{"b":[1],"a":0}'),
            Change(1, "add", "k", (), '{"a":false,"b":[1]}'),
        ],
    )
    assert statuses(out) == [("applied", 1, None), ("rejected", None, "change_number_conflict")]


def test_cursors_name_their_log_entry(storage: SqliteStorage) -> None:
    storage.push("notes", "c1", [add(1, "a"), add(2, "b")])
    page = storage.pull("notes", None, 1, 10**6)
    info = storage.get_store("notes")
    snap = storage.snapshot("notes", None, 0, 10, 10**6)
    for cursor in (page.cursor, info.head_cursor, snap.at):
        assert cursor.tag and Cursor.decode(cursor.encode()) == cursor
    assert info.head_cursor == snap.at and page.cursor.seq == 1
    assert page.cursor.tag != info.head_cursor.tag
    # The issued cursors are accepted; the same seq with another tag, or none, is not.
    assert len(storage.pull("notes", page.cursor, 10, 10**6).items_json) == 1
    assert storage.pull("notes", info.head_cursor, 10, 10**6).cursor == info.head_cursor
    epoch = info.epoch
    other = "0" if page.cursor.tag != "0" else "1"
    for bad in (Cursor(epoch, 1, other), Cursor(epoch, 1), Cursor(epoch, 0, page.cursor.tag)):
        with pytest.raises(ResetRequired):
            storage.pull("notes", bad, 10, 10**6)
        with pytest.raises(ResetRequired):
            storage.snapshot("notes", bad, 0, 10, 10**6)
    assert storage.pull("notes", Cursor(epoch, 0), 10, 10**6).cursor == info.head_cursor
    # An empty store: the head cursor is seq 0, without a tag.
    assert storage.create_store("empty").head_cursor == Cursor(storage.get_store("empty").epoch, 0)


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
