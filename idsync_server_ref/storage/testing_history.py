"""The storage contract for history: compaction, retention, dropped stores, export/import.

A backend's test class mixes :class:`HistoryContract` in beside
:class:`.testing.StorageContract` (it uses the same ``backend`` and
``storage`` fixtures)::

    class TestSqliteContract(StorageContract, HistoryContract): ...
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from idsync_client import jsoncodec
from idsync_client.protocol import Change, Cursor

from .base import (
    InvalidImport,
    ResetRequired,
    Storage,
    StoreDropped,
    StoreExists,
    StoreNotFound,
)
from .testing import BackendUnderTest, add, delete, statuses

#: A time far enough ahead that every entry is past any retention set in these tests.
LATER = 10.0


def _later() -> float:
    return time.time() + LATER


def snapshot_records(storage: Storage, name: str = "notes") -> tuple[dict[str, Any], Cursor]:
    """Every live record of a snapshot by key (decoded), and the snapshot's cursor."""
    records: dict[str, Any] = {}
    after, at = 0, None
    while True:
        page = storage.snapshot(name, at, after, 100, 10**6)
        for item in page.records_json:
            record = jsoncodec.loads(item)
            records[record["key"]] = record
        at, after = page.at, page.next_after
        if not page.more:
            return records, at


def pull_all(
    storage: Storage, cursor: Cursor | None, name: str = "notes"
) -> tuple[list[Any], Cursor]:
    """Every change after ``cursor`` (decoded) and the cursor after them."""
    changes: list[Any] = []
    while True:
        page = storage.pull(name, cursor, 100, 10**6)
        changes += [jsoncodec.loads(item) for item in page.items_json]
        cursor = page.cursor
        if not page.more:
            return changes, cursor


class _Replica:
    """A puller's copy of a store: follows the log, reloads a snapshot when told to reset."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.records: dict[str, Any] = {}
        self.cursor: Cursor | None = None
        self.resets = 0

    def catch_up(self) -> None:
        try:
            while True:
                page = self.storage.pull("notes", self.cursor, 50, 10**6)
                for item in page.items_json:
                    change = jsoncodec.loads(item)
                    if change["op"] == "add":
                        self.records[change["key"]] = change["value"]
                    else:
                        # A delete of a record the replica never saw is a gap.
                        assert change["key"] in self.records, f"passed a gap: {change}"
                        del self.records[change["key"]]
                self.cursor = page.cursor
                if not page.more:
                    return
        except ResetRequired:
            self.resets += 1
            records, self.cursor = snapshot_records(self.storage)
            self.records = {key: record["value"] for key, record in records.items()}


class HistoryContract:
    """Compaction, retention, dropped stores and export/import, for every backend."""

    def test_compaction_removes_deleted_records_and_moves_the_horizon(
        self, storage: Storage
    ) -> None:
        storage.push("notes", "c1", [add(1, "a"), add(2, "b"), add(3, "c")])
        at_removed_add = storage.pull("notes", None, 1, 10**6).cursor
        before_delete = storage.get_store("notes").head_cursor
        storage.push("notes", "c1", [delete(4, "a"), delete(5, "b")])
        at_removed_delete = storage.pull("notes", before_delete, 1, 10**6).cursor
        at_horizon = storage.get_store("notes").head_cursor
        assert (at_removed_add.seq, at_removed_delete.seq) == (1, 4)
        storage.push("notes", "c1", [add(6, "d")])
        storage.set_retention("notes", 0)
        report = storage.compact("notes", now=_later())
        assert report.entries_removed == 4 and report.horizons == {"notes": 5}
        info = storage.get_store("notes")
        assert (info.horizon_seq, info.log_length, info.live_records) == (5, 2, 2)
        # A cursor that saw an add but not its delete would keep a stale record.
        for behind in (None, at_removed_add, before_delete, at_removed_delete):
            with pytest.raises(ResetRequired, match="horizon"):
                storage.pull("notes", behind, 10, 10**6)
        # The cursor at the horizon names a removed entry: it stays valid.
        changes, _ = pull_all(storage, at_horizon)
        assert [(c["op"], c["key"]) for c in changes] == [("add", "d")]
        records, _ = snapshot_records(storage)
        assert sorted(records) == ["c", "d"]
        # Nothing more to remove: a second run changes nothing.
        again = storage.compact("notes", now=_later())
        assert again.entries_removed == 0 and again.horizons == {}

    def test_deleted_keys_and_replays_stay_answered_after_compaction(
        self, storage: Storage
    ) -> None:
        first = storage.push("notes", "c1", [add(1, "a", index=("tag:x",)), delete(2, "a")])
        storage.set_retention("notes", 0)
        assert storage.compact("notes", now=_later()).entries_removed == 2
        # Keys are never reused, also once their log entries are gone.
        again = storage.push("notes", "c2", [add(1, "a", index=("tag:x",)), delete(2, "a")])
        assert statuses(again) == [("rejected", None, "key_deleted"), ("duplicate", 2, None)]
        # The client's own retry gets its first outcomes; nothing applies twice.
        assert storage.push("notes", "c1", [add(1, "a", index=("tag:x",))]) == first[:1]
        assert storage.get_store("notes").head_seq == 2
        assert storage.find("notes", "tag:x", False, 0, 10).records_json == []

    def test_retention_keeps_recent_deletes(self, storage: Storage) -> None:
        storage.push("notes", "c1", [add(1, "a"), delete(2, "a")])
        assert storage.compact(now=time.time()).entries_removed == 0  # default: 7 days
        assert storage.compact(now=time.time() + 8 * 86400).entries_removed == 2
        storage.create_store("other")
        info = storage.set_retention("other", 3600)
        assert info.retention_seconds == 3600 and info.to_wire()["retention_seconds"] == 3600
        storage.push("other", "c1", [add(1, "a"), delete(2, "a")])
        assert storage.compact("other", now=time.time() + 60).entries_removed == 0
        assert storage.compact("other", now=time.time() + 3700).entries_removed == 2
        assert storage.set_retention("other", None).retention_seconds is None
        with pytest.raises(ValueError):
            storage.set_retention("other", -1)
        with pytest.raises(StoreNotFound):
            storage.compact("nope")

    def test_a_head_whose_entry_was_compacted_is_still_a_cursor(self, storage: Storage) -> None:
        storage.push("notes", "c1", [add(1, "a"), delete(2, "a")])
        storage.set_retention("notes", 0)
        storage.compact("notes", now=_later())
        head = storage.get_store("notes").head_cursor
        assert head.seq == 2 and head.tag
        records, at = snapshot_records(storage)
        assert records == {} and at == head
        assert storage.pull("notes", at, 10, 10**6).items_json == []
        storage.push("notes", "c1", [add(3, "b")])
        changes, _ = pull_all(storage, at)
        assert [c["key"] for c in changes] == ["b"]

    def test_many_edits_of_one_attribute_compact_to_one_record(self, storage: Storage) -> None:
        # The attribute-record pattern: each edit adds a record and deletes the last.
        n, previous = 0, None
        batch: list[Change] = []
        for i in range(2000):
            key = f"title-{i}"
            n += 1
            batch.append(add(n, key, {"title": i}))
            if previous is not None:
                n += 1
                batch.append(delete(n, previous))
            previous = key
            if len(batch) >= 200:
                storage.push("notes", "c1", batch)
                batch = []
        storage.push("notes", "c1", batch)
        assert storage.get_store("notes").log_length == 3999
        storage.set_retention("notes", 0)
        report = storage.compact("notes", now=_later())
        print(
            f"\n2,000 edits: {report.entries_removed} entries removed in {report.chunks}"
            f" chunks, {report.duration * 1000:.0f} ms"
        )
        assert report.entries_removed == 3998 and report.chunks > 2
        info = storage.get_store("notes")
        assert info.log_length == 1
        records, at = snapshot_records(storage)
        assert list(records) == ["title-1999"]
        # A new device from the start is told to load the snapshot: one record.
        with pytest.raises(ResetRequired):
            storage.pull("notes", None, 10, 10**6)
        assert pull_all(storage, at)[0] == []

    def test_compaction_during_pushes_and_pulls_loses_nothing(self, storage: Storage) -> None:
        storage.set_retention("notes", 0)
        stop = threading.Event()
        errors: list[BaseException] = []
        replicas = [_Replica(storage) for _ in range(2)]
        rounds = 150

        def push() -> None:
            rng = random.Random(7)
            live: list[str] = []
            for i in range(rounds):
                changes: list[Change] = [add(2 * i + 1, f"k{i}")]
                if live and rng.random() < 0.7:
                    changes.append(delete(2 * i + 2, live.pop(rng.randrange(len(live)))))
                live.append(f"k{i}")
                storage.push("notes", "writer", changes)

        def follow(replica: _Replica) -> None:
            while not stop.is_set():
                replica.catch_up()

        def compact() -> None:
            while not stop.is_set():
                storage.compact("notes", now=_later())

        def guarded(fn: Any, *args: Any) -> Any:
            def run() -> None:
                try:
                    fn(*args)
                except BaseException as exc:  # reported by the test thread
                    errors.append(exc)
                    stop.set()

            return threading.Thread(target=run)

        pusher = guarded(push)
        others = [guarded(follow, r) for r in replicas] + [guarded(compact)]
        for thread in [pusher, *others]:
            thread.start()
        pusher.join(timeout=120)
        stop.set()
        for thread in others:
            thread.join(timeout=60)
        assert not errors, errors
        assert not pusher.is_alive() and not any(t.is_alive() for t in others)
        storage.compact("notes", now=_later())
        expected, _ = snapshot_records(storage)
        for replica in replicas:
            replica.catch_up()
            assert replica.records == {k: r["value"] for k, r in expected.items()}
        print(f"\nresets per puller: {[r.resets for r in replicas]}")
        assert storage.get_store("notes").live_records == len(expected)

    def test_a_dropped_store_stays_dropped(self, storage: Storage) -> None:
        storage.push("notes", "c1", [add(1, "a")])
        old = storage.get_store("notes")
        storage.drop_store("notes")
        calls: list[Callable[[], object]] = [
            lambda: storage.push("notes", "c1", [add(2, "b")]),
            lambda: storage.pull("notes", old.head_cursor, 10, 10**6),
            lambda: storage.snapshot("notes", None, 0, 10, 10**6),
            lambda: storage.get_store("notes"),
            lambda: storage.create_store("notes"),
            lambda: storage.compact("notes"),
        ]
        for call in calls:
            with pytest.raises(StoreDropped) as caught:
                call()
            assert caught.value.epoch == old.epoch
        # A name never used is plain not found.
        with pytest.raises(StoreNotFound) as missing:
            storage.pull("never", None, 10, 10**6)
        assert not isinstance(missing.value, StoreDropped)
        assert "notes" not in [s.name for s in storage.list_stores()]
        fresh = storage.create_store("notes", recreate=True)
        assert fresh.epoch != old.epoch and fresh.head_seq == 0
        assert storage.push("notes", "c1", [add(1, "a")])[0].status == "applied"

    def test_store_figures_have_retention_and_bytes(self, storage: Storage) -> None:
        storage.push("notes", "c1", [add(i, f"k{i}", {"text": "x" * 500}) for i in range(1, 50)])
        info = storage.get_store("notes")
        assert info.retention_seconds is None
        assert isinstance(info.bytes_on_disk, int) and info.bytes_on_disk > 49 * 500
        wire = info.to_wire()
        assert wire["bytes_on_disk"] == info.bytes_on_disk and "retention_seconds" in wire
        listed = {s.name: s for s in storage.list_stores()}
        assert listed["notes"].bytes_on_disk == info.bytes_on_disk
        storage.vacuum()  # runs on every backend (a no-op where the database reclaims space)

    def test_export_drop_import_keeps_live_records_and_deleted_keys(self, storage: Storage) -> None:
        storage.push(
            "notes",
            "c1",
            [add(1, "a", {"big": 2**62}, ("tag:x",)), add(2, "b", [1.5, False]), delete(3, "a")],
        )
        storage.push("notes", "c1", [add(4, "c", "é\u2028", ("tag:y", "owner:ana"))])
        before, old_at = snapshot_records(storage)
        lines = list(storage.export_store("notes"))
        header = jsoncodec.loads(lines[0])
        assert header["format"] == "idsync-store" and header["head_seq"] == 4
        storage.drop_store("notes")
        info = storage.import_store("notes", lines)
        assert info.epoch != header["epoch"] and info.head_seq == 4 and info.live_records == 2
        after, _ = snapshot_records(storage)
        assert after == before
        with pytest.raises(ResetRequired):
            storage.pull("notes", old_at, 10, 10**6)
        assert statuses(storage.push("notes", "c2", [add(1, "a")])) == [
            ("rejected", None, "key_deleted")
        ]
        found = storage.find("notes", "owner:", True, 0, 10).records_json
        assert [jsoncodec.loads(r)["key"] for r in found] == ["c"]
        assert storage.push("notes", "c2", [add(2, "d")])[0].seq == 5
        with pytest.raises(StoreExists):
            storage.import_store("notes", lines)

    @pytest.mark.parametrize(
        "bad",
        [
            ["not json"],
            ['{"format":"other","version":1,"store":"x","epoch":"e","head_seq":1}'],
            ['{"format":"idsync-store","version":99,"store":"x","epoch":"e","head_seq":1}'],
            [
                '{"format":"idsync-store","version":1,"store":"x","epoch":"e","head_seq":2}',
                '{"key":"a","index":[],"value":1,"seq":1}',
                '{"key":"a","index":[],"value":2,"seq":2}',
            ],
            [
                '{"format":"idsync-store","version":1,"store":"x","epoch":"e","head_seq":2}',
                '{"key":"a","index":[],"value":1,"seq":3}',
            ],
            [
                '{"format":"idsync-store","version":1,"store":"x","epoch":"e","head_seq":2}',
                '{"key":"a","index":[],"value":1,"seq":1}',
                '{"key":"b","index":[],"value":%s,"seq":2}' % (2**64),
            ],
            [
                '{"format":"idsync-store","version":1,"store":"x","epoch":"e","head_seq":2}',
                '{"deleted":"","seq":1}',
            ],
            [],
        ],
    )
    def test_a_bad_import_is_refused_and_writes_nothing(
        self, backend: BackendUnderTest, storage: Storage, bad: list[str]
    ) -> None:
        with pytest.raises(InvalidImport):
            storage.import_store("imported", bad)
        with pytest.raises(StoreNotFound):
            storage.get_store("imported")
        assert [s.name for s in storage.list_stores()] == ["notes"]
