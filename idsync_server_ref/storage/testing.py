"""The storage contract suite: every backend runs these tests in a few lines.

A backend's test module subclasses :class:`StorageContract` and overrides
the ``backend`` fixture to yield its :class:`BackendUnderTest` (a fresh
database per test, and the few ways a test reaches under the contract: a
trigger that makes an insert fail, the stored schema version, a delay held
inside the push transaction)::

    class TestSqlite(StorageContract):
        @pytest.fixture
        def backend(self, tmp_path):
            with SqliteBackend(tmp_path / "db.sqlite3") as backend:
                yield backend

What a backend can or cannot do is said by capability flags on the class
(``multi_process``), never by naming the backend in a test; a test that
needs a capability the backend lacks is reported as skipped, with the reason.

History (compaction, retention, dropped stores, export and import) has its
own part, :class:`.testing_history.HistoryContract`, mixed in beside this one.
"""

from __future__ import annotations

import abc
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, ClassVar

import pytest

from idsync_client import jsoncodec
from idsync_client.protocol import Change, Cursor, Outcome

from .accounts import AccountStore, Grant, TokenNotFound, UserExists, UserNotFound
from .base import (
    FindPage,
    ResetRequired,
    SchemaTooNew,
    Storage,
    StorageFailure,
    StoreExists,
    StoreNotFound,
)

#: Rounds of the out-of-order commit test, each one push per writer
#: (``IDSYNC_TRAP_ROUNDS`` for more).
TRAP_ROUNDS = int(os.environ.get("IDSYNC_TRAP_ROUNDS", "1000"))


def add(n: int, key: str, value: object = None, index: tuple[str, ...] = ()) -> Change:
    """An add change with sorted index items; the value defaults to ``{"n": n}``."""
    return Change(n, "add", key, tuple(sorted(index)), jsoncodec.dumps(value or {"n": n}))


def delete(n: int, key: str) -> Change:
    """A delete change."""
    return Change(n, "delete", key)


def statuses(outcomes: list[Outcome]) -> list[tuple[Any, ...]]:
    """(status, seq, code) of each outcome, for compact assertions."""
    return [(o.status, o.seq, o.code) for o in outcomes]


def _record(storage: Storage, key: str) -> Any:
    """The live record ``key`` of store ``notes``, decoded; AssertionError if missing."""
    text = storage.get_record("notes", key)
    assert text is not None, f"no live record {key!r}"
    return jsoncodec.loads(text)


def _seqs(items_json: list[str]) -> list[int]:
    return [int(jsoncodec.loads(item)["seq"]) for item in items_json]


class BackendUnderTest(abc.ABC):
    """One test's fresh database of one backend, and how a test reaches under it.

    Use as a context manager: leaving it closes every instance :meth:`open`
    returned.
    """

    def __init__(self) -> None:
        self._opened: list[Storage] = []

    def open(self) -> Storage:
        """A new storage instance on this test's database."""
        storage = self._open()
        self._opened.append(storage)
        return storage

    @abc.abstractmethod
    def _open(self) -> Storage:
        """Open a new instance on this test's database."""

    @abc.abstractmethod
    def refuse_record_key(self, key: str) -> AbstractContextManager[None]:
        """While inside, the database itself fails an insert of a record with ``key``."""

    @abc.abstractmethod
    def set_schema_version(self, version: int) -> None:
        """Overwrite the schema version the database records."""

    @abc.abstractmethod
    def hold_commits(
        self, storage: Storage, delay: Callable[[], float]
    ) -> AbstractContextManager[None]:
        """While inside, each push through ``storage`` waits ``delay()`` seconds after
        its log entries are written (their sequence numbers taken), before it commits."""

    def __enter__(self) -> BackendUnderTest:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for storage in self._opened:
            storage.close()
        self._opened.clear()


MAX = "\U0010ffff"


def _found_by_prefix(storage: Storage, item: str) -> set[str]:
    found: set[str] = set()
    after = 0
    for _ in range(100):  # bounded: two pages per query at most here
        page = storage.find("notes", item, True, after, 2)
        found |= {jsoncodec.loads(r)["key"] for r in page.records_json}
        after = page.after
        if not page.more:
            return found
    raise AssertionError("find did not finish")


class StorageContract:
    """The tests every backend passes. Subclass it and override the ``backend`` fixture."""

    #: Several processes (instances) share one database, and each instance's
    #: listeners hear the changes committed through the others.
    multi_process: ClassVar[bool] = False

    @pytest.fixture
    def backend(self) -> Iterator[BackendUnderTest]:
        """A fresh database of the backend under test (a backend's test class overrides it)."""
        raise NotImplementedError("a backend's test class overrides the backend fixture")

    @pytest.fixture
    def storage(self, backend: BackendUnderTest) -> Storage:
        """An instance on the test's database, with an empty store ``notes``."""
        storage = backend.open()
        storage.create_store("notes")
        return storage

    def test_sequence_numbers_increase_and_state_follows(self, storage: Storage) -> None:
        out = storage.push("notes", "c1", [add(1, "a"), add(2, "b"), delete(3, "a")])
        assert statuses(out) == [("applied", 1, None), ("applied", 2, None), ("applied", 3, None)]
        info = storage.get_store("notes")
        assert (info.head_seq, info.live_records, info.log_length) == (3, 1, 3)
        assert storage.get_record("notes", "a") is None
        assert _record(storage, "b")["value"] == {"n": 2}

    def test_each_defined_outcome(self, storage: Storage) -> None:
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

    def test_identical_content_ignores_object_key_order(self, storage: Storage) -> None:
        storage.push("notes", "c1", [Change(1, "add", "k", (), '{"a":1,"b":2}')])
        out = storage.push("notes", "c2", [Change(1, "add", "k", (), '{"b":2,"a":1}')])
        assert out[0].status == "duplicate"

    def test_replay_returns_first_outcomes_and_applies_nothing(self, storage: Storage) -> None:
        batch = [add(1, "a"), add(2, "a", {"other": True}), delete(3, "zzz")]
        first = storage.push("notes", "c1", batch)
        again = storage.push("notes", "c1", batch)
        assert first == again
        assert storage.get_store("notes").head_seq == 1

    def test_replays_are_answered_per_change_number_in_any_grouping(
        self, storage: Storage
    ) -> None:
        # Numbers close together, far apart and at the top of the range; the
        # retries group them otherwise than the first uploads did.
        numbers = [1, 2, 3, 900, 2_000, 2_001, 10**12, 2**63 - 1]
        first = storage.push("notes", "c1", [add(n, f"k{n}") for n in numbers[:5]])
        first += storage.push(
            "notes", "c1", [add(n, f"k{n}") for n in numbers[5:]] + [delete(7, "never")]
        )
        by_n = {o.n: o for o in first}
        head = storage.get_store("notes").head_seq
        mixed = [delete(7, "never"), add(2**63 - 1, f"k{2**63 - 1}"), add(2, "k2"), add(5, "k5")]
        out = storage.push("notes", "c1", mixed)
        assert out[:3] == [by_n[7], by_n[2**63 - 1], by_n[2]]
        assert statuses(out[3:]) == [("applied", head + 1, None)]
        for n in numbers:  # one at a time
            assert storage.push("notes", "c1", [add(n, f"k{n}")]) == [by_n[n]]
        # Another client's numbers are its own.
        assert statuses(storage.push("notes", "c2", [add(2_000, "new")])) == [
            ("applied", head + 2, None)
        ]
        conflict = storage.push("notes", "c1", [add(10**12, "other")])
        assert statuses(conflict) == [("rejected", None, "change_number_conflict")]
        assert storage.get_store("notes").head_seq == head + 2

    def test_replays_of_numbers_spread_widely_in_one_batch_get_their_first_answers(
        self, storage: Storage
    ) -> None:
        # 1,000 numbers 1,000 apart: as wide as one batch's numbers can be
        # kept together; the first, a middle and the last replayed alone.
        numbers = [1 + i * 1000 for i in range(1000)]
        first = storage.push("notes", "c1", [add(n, f"k{n}") for n in numbers])
        by_n = {o.n: o for o in first}
        head = storage.get_store("notes").head_seq
        for n in (numbers[0], numbers[500], numbers[-1]):
            assert storage.push("notes", "c1", [add(n, f"k{n}")]) == [by_n[n]]
        assert storage.get_store("notes").head_seq == head

    def test_same_change_number_with_other_body_is_rejected(self, storage: Storage) -> None:
        storage.push("notes", "c1", [add(1, "a")])
        out = storage.push("notes", "c1", [add(1, "b"), add(2, "c")])
        assert statuses(out) == [("rejected", None, "change_number_conflict"), ("applied", 2, None)]
        assert storage.get_record("notes", "b") is None

    def test_pull_pages_by_count_and_bytes(self, storage: Storage) -> None:
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

    def test_page_bounds_count_utf8_bytes_not_characters(self, storage: Storage) -> None:
        # Each value is ~100 characters but ~400 bytes in UTF-8 (4-byte emoji).
        storage.push(
            "notes", "c1", [add(n, f"k{n}", {"pad": "\U0001f600" * 100}) for n in (1, 2, 3)]
        )
        page = storage.pull("notes", None, limit=100, max_bytes=1000)
        sizes = [len(i.encode()) for i in page.items_json]
        assert len(page.items_json) == 2 and sum(sizes) <= 1000 < sum(sizes) + sizes[0]
        assert page.more
        snap = storage.snapshot("notes", None, 0, limit=100, max_bytes=1000)
        assert len(snap.records_json) == 2 and snap.more

    def test_pull_items_are_valid_json_with_the_stored_value(self, storage: Storage) -> None:
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

    def test_served_json_quotes_keys_as_the_client_encodes_them(self, storage: Storage) -> None:
        """Pull and snapshot write keys (a backend may do it in SQL) exactly as jsoncodec does."""
        keys = ['q"uote', "back\\slash", "é ü 😀", "a/b", "\u2028line", "\u00a0nbsp", "~"]
        value = {"v": [1, 2.5, "s"]}
        storage.push("notes", "c1", [add(n, k, value, ("t",)) for n, k in enumerate(keys, 1)])
        pulled = storage.pull("notes", None, 100, 10**6).items_json
        snap = storage.snapshot("notes", None, 0, 100, 10**6).records_json
        for n, (key, change, record) in enumerate(zip(keys, pulled, snap, strict=True), 1):
            quoted = jsoncodec.dumps(key)
            assert (
                change
                == f'{{"seq":{n},"op":"add","key":{quoted},"index":["t"],"value":{{"v":[1,2.5,"s"]}}}}'
            )
            assert (
                record == f'{{"key":{quoted},"index":["t"],"value":{{"v":[1,2.5,"s"]}},"seq":{n}}}'
            )

    def test_cursor_checks(self, storage: Storage) -> None:
        storage.push("notes", "c1", [add(1, "a")])
        epoch = storage.get_store("notes").epoch
        with pytest.raises(ResetRequired, match="past the head"):
            storage.pull("notes", Cursor(epoch, 2), 10, 1000)
        with pytest.raises(ResetRequired):
            storage.pull("notes", Cursor("0" * 16, 1), 10, 1000)
        with pytest.raises(StoreNotFound):
            storage.pull("nope", None, 10, 1000)

    def test_drop_and_recreate_changes_the_epoch(self, storage: Storage) -> None:
        storage.push("notes", "c1", [add(1, "a")])
        old = storage.get_store("notes").head_cursor
        storage.drop_store("notes")
        with pytest.raises(StoreNotFound):
            storage.get_store("notes")
        with pytest.raises(StoreExists):
            storage.create_store(storage.create_store("notes", recreate=True).name)
        with pytest.raises(ResetRequired):
            storage.pull("notes", old, 10, 1000)
        assert storage.get_record("notes", "a") is None
        # The key belonged to the dropped store: the new one accepts it.
        assert storage.push("notes", "c1", [add(1, "a")])[0].status == "applied"

    def test_snapshot_is_consistent_while_writes_go_on(self, storage: Storage) -> None:
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

    def test_find_exact_and_prefix_with_paging(self, storage: Storage) -> None:
        changes = [add(n, f"k{n}", index=(f"tag:{n % 3}", f"owner:{n % 2}")) for n in range(1, 31)]
        storage.push("notes", "c1", changes)
        storage.push("notes", "c1", [delete(31, "k3")])
        exact = storage.find("notes", "tag:0", False, 0, 100)
        assert {jsoncodec.loads(r)["key"] for r in exact.records_json} == {
            f"k{n}" for n in range(6, 31, 3)
        }
        assert not exact.more
        found: list[str] = []
        after, more = 0, True
        while more:
            page = storage.find("notes", "tag:", True, after, 7)
            found += [jsoncodec.loads(r)["key"] for r in page.records_json]
            after, more = page.after, page.more
        assert sorted(found) == sorted(f"k{n}" for n in range(1, 31) if n != 3)
        assert storage.find("notes", "tag:9", False, 0, 10) == FindPage([], 0, False)

    def test_prefix_query_edges_of_the_code_space(self, storage: Storage) -> None:
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
        assert _found_by_prefix(storage, "p") == {"max1", "max2", "plain", "exact"}
        assert _found_by_prefix(storage, "p" + MAX) == {"max1", "max2"}
        # A prefix that is all U+10FFFF has no upper bound.
        assert _found_by_prefix(storage, MAX) == {"allmax", "allmax1"}
        assert _found_by_prefix(storage, MAX + MAX) == {"allmax"}
        assert _found_by_prefix(storage, "\ud7ff") == {"d7ff"}
        assert _found_by_prefix(storage, "o") == {"below"}

    def test_add_and_delete_of_one_key_in_one_batch(self, storage: Storage) -> None:
        out = storage.push(
            "notes",
            "c1",
            [add(1, "k", index=("tag:a",)), delete(2, "k"), delete(3, "k"), add(4, "k")],
        )
        assert statuses(out) == [
            ("applied", 1, None),
            ("applied", 2, None),
            ("duplicate", 2, None),
            ("rejected", None, "key_deleted"),
        ]
        assert storage.get_record("notes", "k") is None
        assert storage.find("notes", "tag:a", False, 0, 10).records_json == []
        info = storage.get_store("notes")
        assert (info.live_records, info.log_length) == (0, 2)

    def test_concurrent_pushes_get_distinct_gapless_sequences(self, storage: Storage) -> None:
        def worker(client: str) -> None:
            for n in range(1, 21):
                storage.push("notes", client, [add(n, f"{client}-{n}")])

        threads = [threading.Thread(target=worker, args=(f"c{i}",)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seqs = [
            jsoncodec.loads(i)["seq"] for i in storage.pull("notes", None, 1000, 10**7).items_json
        ]
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
        self, storage: Storage, stored: str, sent: str
    ) -> None:
        storage.push("notes", "c1", [Change(1, "add", "k", (), stored)])
        out = storage.push("notes", "c2", [Change(1, "add", "k", (), sent)])
        assert statuses(out) == [("rejected", None, "key_exists")]
        # The stored value is untouched and keeps its type.
        assert _record(storage, "k")["value"] == jsoncodec.loads(stored)
        assert jsoncodec.canonical(_record(storage, "k")["value"]) == jsoncodec.canonical(
            jsoncodec.loads(stored)
        )

    def test_duplicate_needs_the_exact_index_items(self, storage: Storage) -> None:
        storage.push("notes", "c1", [Change(1, "add", "k", ("a,b",), "1")])
        out = storage.push(
            "notes",
            "c2",
            [Change(1, "add", "k", ("a", "b"), "1"), Change(2, "add", "k", ("a,b",), "1")],
        )
        assert statuses(out) == [("rejected", None, "key_exists"), ("duplicate", 1, None)]

    def test_change_number_reused_with_comma_joined_index_is_a_conflict(
        self,
        storage: Storage,
    ) -> None:
        storage.push("notes", "c1", [Change(1, "add", "k", ("a,b",), "1")])
        out = storage.push("notes", "c1", [Change(1, "add", "k", ("a", "b"), "1")])
        assert statuses(out) == [("rejected", None, "change_number_conflict")]
        storage.push("notes", "c1", [Change(2, "add", "j", ("x", "y"), "1")])
        out = storage.push("notes", "c1", [Change(2, "add", "j", ("x,y",), "1")])
        assert statuses(out) == [("rejected", None, "change_number_conflict")]

    def test_replay_hash_is_type_exact_and_ignores_member_order(self, storage: Storage) -> None:
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

    def test_cursors_name_their_log_entry(self, storage: Storage) -> None:
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
        assert storage.create_store("empty").head_cursor == Cursor(
            storage.get_store("empty").epoch, 0
        )

    # -- transactions and schema --------------------------------------------

    def test_push_is_one_transaction(self, backend: BackendUnderTest, storage: Storage) -> None:
        # A failure in the middle of a batch (the database refusing one key)
        # leaves nothing of the batch behind.
        with backend.refuse_record_key("c"), pytest.raises(StorageFailure):
            storage.push("notes", "c1", [add(1, "a"), add(2, "b"), add(3, "c")])
        assert storage.get_store("notes").head_seq == 0
        assert storage.pull("notes", None, 10, 1000).items_json == []
        assert storage.push("notes", "c1", [add(1, "a")])[0].status == "applied"

    def test_a_schema_newer_than_the_code_is_refused(self, backend: BackendUnderTest) -> None:
        backend.open().close()
        backend.set_schema_version(99)
        with pytest.raises(SchemaTooNew, match="schema version 99"):
            backend.open()

    def test_opening_again_keeps_the_data(
        self, backend: BackendUnderTest, storage: Storage
    ) -> None:
        storage.push("notes", "c1", [add(1, "a")])
        again = backend.open()
        assert again.get_store("notes") == storage.get_store("notes")
        assert again.push("notes", "c1", [add(1, "a")])[0].status == "applied"

    # -- several writers ----------------------------------------------------

    def test_the_same_push_through_two_instances_at_once_applies_once(
        self, backend: BackendUnderTest, storage: Storage
    ) -> None:
        other = backend.open()
        for round_ in range(5):
            batch = [add(n, f"r{round_}-{n}") for n in range(round_ * 20 + 1, round_ * 20 + 21)]
            results = _push_at_once([storage, other], "c1", batch)
            assert results[0] == results[1]
            assert [o.status for o in results[0]] == ["applied"] * 20
        info = storage.get_store("notes")
        assert (info.head_seq, info.log_length, info.live_records) == (100, 100, 100)
        assert _seqs(storage.pull("notes", None, 1000, 10**7).items_json) == list(range(1, 101))

    def test_no_reader_passes_a_change_it_has_not_seen(
        self, backend: BackendUnderTest, storage: Storage
    ) -> None:
        """Writers hold their transaction open (random delays) after taking sequence
        numbers while others commit; a reader pulling in a tight loop never skips one."""
        writers = [backend.open(), backend.open()]
        reader = backend.open()
        rounds = TRAP_ROUNDS
        rng = random.Random()
        delays = [
            [rng.choice((0.0, rng.uniform(0, 0.002))) for _ in range(rounds)] for _ in writers
        ]
        total = 2 * rounds
        failures: list[BaseException] = []

        def write(i: int) -> None:
            schedule = iter(delays[i])
            try:
                with backend.hold_commits(writers[i], lambda: next(schedule)):
                    for r in range(rounds):
                        writers[i].push("notes", f"w{i}", [add(r + 1, f"w{i}-{r}")])
            except BaseException as exc:  # reported by the main thread
                failures.append(exc)

        threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        seen: list[int] = []
        cursor: Cursor | None = None
        pulls = 0
        deadline = time.monotonic() + 120
        while len(seen) < total and not failures and time.monotonic() < deadline:
            page = reader.pull("notes", cursor, 50, 10**7)
            pulls += 1
            got = _seqs(page.items_json)
            start = cursor.seq if cursor else 0
            # Each page continues exactly where the last ended: no gap, no repeat.
            assert got == list(range(start + 1, start + 1 + len(got))), (start, got)
            seen += got
            cursor = page.cursor
        for t in threads:
            t.join(timeout=60)
        assert not failures, failures
        assert seen == list(range(1, total + 1))
        assert pulls > 10  # the reader did race the writers

    # -- change notification ------------------------------------------------

    def test_listen_is_called_after_the_commit(self, storage: Storage) -> None:
        calls: list[tuple[str, int, list[int]]] = []

        def listener(name: str, head: int) -> None:
            # Called after the commit: the change is already visible.
            visible = _seqs(storage.pull(name, None, 100, 10**6).items_json)
            calls.append((name, head, visible))

        def broken(name: str, head: int) -> None:
            raise RuntimeError("a listener that fails does not stop the others")

        storage.listen(broken)
        storage.listen(listener)
        storage.push("notes", "c1", [add(1, "a"), add(2, "b")])
        _wait_for(lambda: len(calls) >= 1)
        assert calls[0] == ("notes", 2, [1, 2])
        # A push that applies nothing (a replay) changes nothing: no call.
        storage.push("notes", "c1", [add(1, "a"), add(2, "b")])
        storage.push("notes", "c1", [add(3, "c")])
        _wait_for(lambda: any(head == 3 for _, head, _ in calls))
        assert [head for _, head, _ in calls] == [2, 3]

    def test_listen_hears_changes_made_through_another_instance(
        self, backend: BackendUnderTest, storage: Storage
    ) -> None:
        if not self.multi_process:
            pytest.skip("this backend serves one process: listeners hear their own instance")
        other = backend.open()
        heard: list[tuple[str, int]] = []
        other.listen(lambda name, head: heard.append((name, head)))
        storage.push("notes", "c1", [add(1, "a")])
        _wait_for(lambda: ("notes", 1) in heard)
        storage.create_store("other")
        storage.push("other", "c1", [add(1, "a"), add(2, "b")])
        _wait_for(lambda: ("other", 2) in heard)


def _push_at_once(
    instances: list[Storage], client_id: str, batch: list[Change]
) -> list[list[Outcome]]:
    """Push ``batch`` through each instance at the same instant; their outcomes, in order."""
    barrier = threading.Barrier(len(instances), timeout=30)
    results: dict[int, list[Outcome]] = {}

    def send(i: int) -> None:
        barrier.wait()
        results[i] = instances[i].push("notes", client_id, batch)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(instances))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return [results[i] for i in range(len(instances))]


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until ``condition()`` is true; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not become true in time")
        time.sleep(0.005)


# -- accounts -----------------------------------------------------------------


class AccountContract:
    """The account tests every backend passes (:class:`~.accounts.AccountStore`).

    Subclass it and override the ``backend`` fixture, as for :class:`StorageContract`.
    """

    @pytest.fixture
    def backend(self) -> Iterator[BackendUnderTest]:
        """A fresh database of the backend under test (a backend's test class overrides it)."""
        raise NotImplementedError("a backend's test class overrides the backend fixture")

    @pytest.fixture
    def accounts(self, backend: BackendUnderTest) -> AccountStore:
        """The account tables of a fresh database."""
        return backend.open().accounts()

    def test_users_are_added_listed_and_removed(self, accounts: AccountStore) -> None:
        assert not accounts.any_users() and accounts.list_users() == []
        accounts.add_user("bob", False, 2.0)
        alice = accounts.add_user("alice", True, 1.0)
        assert accounts.any_users()
        assert accounts.get_user("alice") == alice and alice.is_admin
        assert [u.name for u in accounts.list_users()] == ["alice", "bob"]
        with pytest.raises(UserExists):
            accounts.add_user("alice", False, 3.0)
        accounts.remove_user("bob")
        assert accounts.get_user("bob") is None
        with pytest.raises(UserNotFound):
            accounts.remove_user("bob")

    def test_tokens_are_found_by_hash_and_revoked_once(self, accounts: AccountStore) -> None:
        accounts.add_user("alice", False, 1.0)
        made = accounts.add_token("alice", "t1", "h" * 64, "laptop", 5.0, 100.0)
        assert accounts.token_by_hash("h" * 64) == made
        assert accounts.token_by_hash("x" * 64) is None
        assert made.usable_at(99.0) and not made.usable_at(100.0)
        revoked = accounts.revoke_token("t1", 7.0)
        assert revoked.revoked_at == 7.0 and not revoked.usable_at(6.0)
        assert accounts.revoke_token("t1", 9.0).revoked_at == 7.0
        assert accounts.token_by_hash("h" * 64) == revoked
        with pytest.raises(TokenNotFound):
            accounts.revoke_token("nope", 1.0)
        with pytest.raises(UserNotFound):
            accounts.add_token("carol", "t2", "g" * 64, "", 1.0, None)
        assert accounts.token_by_hash("g" * 64) is None

    def test_tokens_are_listed_per_user(self, accounts: AccountStore) -> None:
        for name in ("alice", "bob"):
            accounts.add_user(name, False, 1.0)
        accounts.add_token("bob", "b1", "1" * 64, "phone", 1.0, None)
        accounts.add_token("alice", "a2", "2" * 64, "phone", 3.0, None)
        accounts.add_token("alice", "a1", "3" * 64, "laptop", 2.0, None)
        assert [t.token_id for t in accounts.list_tokens("alice")] == ["a1", "a2"]
        assert [t.token_id for t in accounts.list_tokens()] == ["a1", "a2", "b1"]

    def test_grants_are_given_replaced_and_taken(self, accounts: AccountStore) -> None:
        for name in ("alice", "bob"):
            accounts.add_user(name, False, 1.0)
        accounts.grant("alice.notes", "bob", "reader")
        assert accounts.role_of("alice.notes", "bob") == "reader"
        accounts.grant("alice.notes", "bob", "writer")
        assert accounts.grants("alice.notes") == [Grant("alice.notes", "bob", "writer")]
        assert accounts.granted_stores("bob") == {"alice.notes": "writer"}
        assert accounts.role_of("alice.other", "bob") is None
        assert accounts.revoke_access("alice.notes", "bob")
        assert not accounts.revoke_access("alice.notes", "bob")
        with pytest.raises(UserNotFound):
            accounts.grant("alice.notes", "carol", "reader")
        accounts.grant("alice.notes", "bob", "reader")
        accounts.forget_store("alice.notes")
        assert accounts.grants("alice.notes") == []

    def test_removing_a_user_removes_its_tokens_and_grants(self, accounts: AccountStore) -> None:
        accounts.add_user("bob", False, 1.0)
        accounts.add_token("bob", "b1", "1" * 64, "", 1.0, None)
        accounts.grant("alice.notes", "bob", "writer")
        accounts.remove_user("bob")
        assert accounts.token_by_hash("1" * 64) is None and accounts.list_tokens() == []
        assert accounts.grants("alice.notes") == []
        accounts.add_user("bob", False, 2.0)  # a new user of the name starts with nothing
        assert accounts.granted_stores("bob") == {}

    def test_accounts_are_seen_by_another_instance(
        self, backend: BackendUnderTest, accounts: AccountStore
    ) -> None:
        accounts.add_user("alice", True, 1.0)
        accounts.add_token("alice", "a1", "1" * 64, "", 1.0, None)
        other = backend.open().accounts()
        assert other.get_user("alice") is not None
        assert other.token_by_hash("1" * 64) is not None
