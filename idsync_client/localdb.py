"""The client's local SQLite database (peewee): records, index, outbox, sync state.

Guarantees:

- A local write (record, index items, outbox entry) is one transaction.
- Reads see local writes at once: the ``records`` table is the local view,
  synced records (``seq`` set) and pending ones (``seq`` NULL) together.
- Applying a pulled page and advancing the cursor is one transaction.
- Outbox numbers (the client's change numbers) are never reused
  (``AUTOINCREMENT``), so the server's idempotency never confuses two changes.
- Deleted keys are remembered (``tombstones``): a pulled add of a key deleted
  here, pending or not, never brings the record back.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from . import jsoncodec
from .errors import IdsyncError
from .protocol import Outcome, prefix_upper_bound
from .records import ChangeEvent, KeyInUse, OutboxEntry, Record, RejectedChange
from .schema import ALL_MODELS, SCHEMA_VERSION, MetaRow
from .sqlitedb import open_database

_RECORD = "key, index_json, value_json, seq"


def _record(row: Sequence[Any]) -> Record:
    key, index_json, value_json, seq = row
    return Record(key, tuple(jsoncodec.loads(index_json)), value_json, seq)


class LocalDB:
    """One local database file. Safe to use from several threads and processes.

    ``synchronous`` is SQLite's durability: ``FULL`` (default) survives power
    loss after a write returns; ``NORMAL`` survives a process crash but may
    lose the last writes on power loss, and is several times faster.
    """

    def __init__(
        self, path: str | Path, synchronous: str = "FULL", busy_timeout_ms: int = 10_000
    ) -> None:
        self.path = Path(path)
        self.db = open_database(self.path, synchronous, busy_timeout_ms)
        self._write_lock = threading.RLock()
        with self.transaction(), self.db.bind_ctx(ALL_MODELS):
            self.db.create_tables(ALL_MODELS, safe=True)
            version = MetaRow.get_or_none(MetaRow.key == "schema_version")
            if version is None:
                MetaRow.create(key="schema_version", value=str(SCHEMA_VERSION))
                MetaRow.create(key="client_id", value=uuid.uuid4().hex)
            elif version.value != str(SCHEMA_VERSION):
                raise IdsyncError(
                    f"{self.path} has local schema version {version.value}; "
                    f"this client knows version {SCHEMA_VERSION}"
                )
            self.client_id: str = MetaRow.get(MetaRow.key == "client_id").value

    # -- plumbing -----------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction (``BEGIN IMMEDIATE``); nested ones are savepoints."""
        # Threads of this process queue here rather than in SQLite's busy
        # handler, whose sleeps grow to 100 ms and would stall the UI and sync.
        with self._write_lock, self.db.atomic("IMMEDIATE"):
            yield

    def _sql(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        cursor: sqlite3.Cursor = self.db.execute_sql(sql, params)
        return cursor

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(self._sql(sql, params).fetchone()[0])

    def _many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.db.connection().executemany(sql, rows)

    def close(self) -> None:
        """Close this thread's connection."""
        if not self.db.is_closed():
            self.db.close()

    # -- local writes (call inside transaction()) ---------------------------

    def _key_in_use(self, store: str, key: str) -> bool:
        return bool(
            self._sql("SELECT 1 FROM records WHERE store = ? AND key = ?", (store, key)).fetchone()
            or self._sql(
                "SELECT 1 FROM tombstones WHERE store = ? AND key = ?", (store, key)
            ).fetchone()
        )

    def add(self, store: str, key: str, index: tuple[str, ...], value_json: str) -> Record:
        """Add a pending record with its outbox entry. KeyInUse if the key was ever used."""
        if self._key_in_use(store, key):
            raise KeyInUse(f"key {key!r} exists or existed in store {store!r}")
        index_json = jsoncodec.dumps(list(index))
        record_id = self._sql(
            "INSERT INTO records (store, key, index_json, value_json, seq) VALUES (?, ?, ?, ?, NULL)",
            (store, key, index_json, value_json),
        ).lastrowid
        if index:
            self._many(
                "INSERT INTO index_items (store, item, record_id) VALUES (?, ?, ?)",
                [(store, item, record_id) for item in index],
            )
        self._sql(
            "INSERT INTO outbox (store, op, key, index_json, value_json) VALUES (?, 'add', ?, ?, ?)",
            (store, key, index_json, value_json),
        )
        return Record(key, index, value_json, None)

    def add_many(self, store: str, rows: Sequence[tuple[str, tuple[str, ...], str]]) -> None:
        """Add many pending records at once (bulk); KeyInUse if any key was used."""
        keys = [key for key, _, _ in rows]
        if len(set(keys)) != len(keys):
            raise KeyInUse("the same key appears twice in the batch")
        for chunk_start in range(0, len(keys), 500):
            chunk = keys[chunk_start : chunk_start + 500]
            marks = ",".join("?" * len(chunk))
            used = self._sql(
                f"SELECT key FROM records WHERE store = ? AND key IN ({marks}) UNION ALL "
                f"SELECT key FROM tombstones WHERE store = ? AND key IN ({marks})",
                (store, *chunk, store, *chunk),
            ).fetchone()
            if used:
                raise KeyInUse(f"key {used[0]!r} exists or existed in store {store!r}")
        records = [Record(key, index, value_json, None) for key, index, value_json in rows]
        index_json = self._insert_records(store, records)
        self._many(
            "INSERT INTO outbox (store, op, key, index_json, value_json) VALUES (?, 'add', ?, ?, ?)",
            [(store, r.key, ij, r.value_json) for r, ij in zip(records, index_json, strict=True)],
        )

    def _index_new_records(self, store: str, where: str, params: Sequence[Any]) -> None:
        self._sql(
            "INSERT OR IGNORE INTO index_items (store, item, record_id)"
            " SELECT r.store, j.value, r.id FROM records r, json_each(r.index_json) j"
            f" WHERE r.store = ? AND {where}",
            (store, *params),
        )

    def delete(self, store: str, key: str) -> Record:
        """Delete a record by key with its outbox entry; KeyError if there is none."""
        row = self._sql(
            f"SELECT id, {_RECORD} FROM records WHERE store = ? AND key = ?", (store, key)
        ).fetchone()
        if row is None:
            raise KeyError(f"no record with key {key!r} in store {store!r}")
        record = _record(row[1:])
        self._remove(store, row[0], record.index)
        self._sql("INSERT OR IGNORE INTO tombstones (store, key) VALUES (?, ?)", (store, key))
        self._sql("INSERT INTO outbox (store, op, key) VALUES (?, 'delete', ?)", (store, key))
        return record

    def _remove(self, store: str, record_id: int, index: Sequence[str]) -> None:
        self._remove_index(store, record_id, index)
        self._sql("DELETE FROM records WHERE id = ?", (record_id,))

    def _remove_index(self, store: str, record_id: int, index: Sequence[str]) -> None:
        # By (store, item, record_id), the index table's own key: no scan.
        self._many(
            "DELETE FROM index_items WHERE store = ? AND item = ? AND record_id = ?",
            [(store, item, record_id) for item in index],
        )

    # -- reads --------------------------------------------------------------

    def get(self, store: str, key: str) -> Record | None:
        """The record with ``key`` (synced or pending), or None."""
        row = self._sql(
            f"SELECT {_RECORD} FROM records WHERE store = ? AND key = ?", (store, key)
        ).fetchone()
        return None if row is None else _record(row)

    def find(
        self, store: str, item: str, prefix: bool, after: int, limit: int
    ) -> list[tuple[int, Record]]:
        """Records with index item ``item`` (or an item starting with it), by id."""
        params: tuple[Any, ...]
        if prefix:
            bound = prefix_upper_bound(item)
            if bound is None:  # the prefix is all U+10FFFF: nothing sorts above it
                where, params = "item >= ?", (item,)
            else:
                where, params = "item >= ? AND item < ?", (item, bound)
        else:
            where, params = "item = ?", (item,)
        rows = self._sql(
            f"SELECT r.id, {_RECORD} FROM records r WHERE r.id IN"
            f" (SELECT record_id FROM index_items WHERE store = ? AND {where} AND record_id > ?)"
            " ORDER BY r.id LIMIT ?",
            (store, *params, after, limit),
        ).fetchall()
        return [(row[0], _record(row[1:])) for row in rows]

    def scan(self, store: str, after: int, limit: int) -> list[tuple[int, Record]]:
        """Records of a store in insertion order, ``limit`` at a time."""
        rows = self._sql(
            f"SELECT id, {_RECORD} FROM records WHERE store = ? AND id > ? ORDER BY id LIMIT ?",
            (store, after, limit),
        ).fetchall()
        return [(row[0], _record(row[1:])) for row in rows]

    def count(self, store: str) -> int:
        """How many records the local view of a store holds."""
        return self._scalar("SELECT count(*) FROM records WHERE store = ?", (store,))

    # -- outbox -------------------------------------------------------------

    def pending(self, store: str, limit: int) -> list[OutboxEntry]:
        """The oldest ``limit`` changes waiting to be uploaded for ``store``."""
        rows = self._sql(
            "SELECT n, store, op, key, index_json, value_json FROM outbox"
            " WHERE store = ? ORDER BY n LIMIT ?",
            (store, limit),
        ).fetchall()
        return [OutboxEntry(*row) for row in rows]

    def pending_count(self, store: str | None = None) -> int:
        """Changes waiting to be uploaded (in one store, or in all)."""
        if store is None:
            return self._scalar("SELECT count(*) FROM outbox")
        return self._scalar("SELECT count(*) FROM outbox WHERE store = ?", (store,))

    def settle(
        self, store: str, entries: Sequence[OutboxEntry], outcomes: Sequence[Outcome]
    ) -> tuple[list[RejectedChange], ChangeEvent]:
        """Record what the server did with uploaded changes, in one transaction.

        Applied and duplicate changes leave the outbox (an add gets its seq);
        rejected ones move to the rejected list and their local effect is undone.
        """
        by_n = {o.n: o for o in outcomes}
        rejected: list[RejectedChange] = []
        undone: list[Record] = []
        done: list[tuple[int]] = []
        synced: list[tuple[int | None, str, str]] = []
        with self.transaction():
            for entry in entries:
                outcome = by_n.get(entry.n)
                if outcome is None:
                    continue
                if outcome.ok:
                    done.append((entry.n,))
                    if entry.op == "add":
                        synced.append((outcome.seq, store, entry.key))
                    continue
                rejection, record = self._reject(
                    entry, outcome.code or "rejected", outcome.message or ""
                )
                rejected.append(rejection)
                if record is not None:
                    undone.append(record)
            self._many(
                "UPDATE records SET seq = ? WHERE store = ? AND key = ? AND seq IS NULL", synced
            )
            self._many("DELETE FROM outbox WHERE n = ?", done)
        return rejected, ChangeEvent(store, "remote", deleted=tuple(undone))

    def reject(
        self, entry: OutboxEntry, code: str, message: str
    ) -> tuple[RejectedChange, ChangeEvent]:
        """Move one outbox entry to the rejected list (its local effect undone)."""
        with self.transaction():
            rejection, record = self._reject(entry, code, message)
        return rejection, ChangeEvent(entry.store, "remote", deleted=(record,) if record else ())

    def _reject(
        self, entry: OutboxEntry, code: str, message: str
    ) -> tuple[RejectedChange, Record | None]:
        now = time.time()
        cursor = self._sql(
            "INSERT INTO rejected (n, store, op, key, index_json, value_json, code, message, at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                entry.n,
                entry.store,
                entry.op,
                entry.key,
                entry.index_json,
                entry.value_json,
                code,
                message,
                now,
            ),
        )
        self._sql("DELETE FROM outbox WHERE n = ?", (entry.n,))
        record = None
        if entry.op == "add":
            row = self._sql(
                f"SELECT id, {_RECORD} FROM records WHERE store = ? AND key = ? AND seq IS NULL",
                (entry.store, entry.key),
            ).fetchone()
            if row is not None:
                record = _record(row[1:])
                self._remove(entry.store, row[0], record.index)
        assert cursor.lastrowid is not None
        rejection = RejectedChange(
            cursor.lastrowid,
            entry.n,
            entry.store,
            entry.op,
            entry.key,
            tuple(jsoncodec.loads(entry.index_json or "[]")),
            jsoncodec.loads(entry.value_json) if entry.value_json else None,
            code,
            message,
            now,
        )
        return rejection, record

    def rejected(self) -> list[RejectedChange]:
        """Every rejected change not yet dismissed, oldest first."""
        rows = self._sql(
            "SELECT id, n, store, op, key, index_json, value_json, code, message, at"
            " FROM rejected ORDER BY id"
        ).fetchall()
        return [
            RejectedChange(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                tuple(jsoncodec.loads(r[5] or "[]")),
                jsoncodec.loads(r[6]) if r[6] else None,
                r[7],
                r[8],
                r[9],
            )
            for r in rows
        ]

    def dismiss(self, rejected_id: int) -> bool:
        """Forget a rejected change; False if there was none with that id."""
        with self.transaction():
            return self._sql("DELETE FROM rejected WHERE id = ?", (rejected_id,)).rowcount > 0

    # -- sync state and pulled changes ---------------------------------------

    def known_stores(self) -> list[str]:
        """Stores this database has synced or has pending changes for."""
        rows = self._sql("SELECT store FROM sync_state UNION SELECT store FROM outbox")
        return sorted(row[0] for row in rows)

    def cursor(self, store: str) -> str | None:
        """The cursor after the last pulled change of ``store``, if any."""
        row = self._sql("SELECT cursor FROM sync_state WHERE store = ?", (store,)).fetchone()
        return row[0] if row else None

    def _set_cursor(self, store: str, cursor: str) -> None:
        self._sql(
            "INSERT INTO sync_state (store, cursor) VALUES (?, ?)"
            " ON CONFLICT(store) DO UPDATE SET cursor = excluded.cursor",
            (store, cursor),
        )

    def apply_pulled(
        self, store: str, changes: Sequence[dict[str, Any]], cursor: str, pulled_from: str | None
    ) -> ChangeEvent | None:
        """Apply a pulled page and advance the cursor, in one transaction.

        ``pulled_from`` is the cursor the page was asked after; if another
        thread moved the cursor meanwhile, nothing is applied and None is
        returned (pull again).
        """
        added: list[Record] = []
        deleted: list[Record] = []
        fresh: dict[str, Record] = {}  # new to the local view: inserted together at the end
        dumps = jsoncodec.dumps
        with self.transaction():
            if self.cursor(store) != pulled_from:
                return None
            add_keys = [c["key"] for c in changes if c["op"] == "add"]
            dead = self._tombstoned(store, add_keys) if self._has("tombstones", store) else set()
            local = self._present(store, add_keys) if self._has("records", store) else set()
            for change in changes:
                key = change["key"]
                if change["op"] == "delete":
                    if fresh.pop(key, None) is None:
                        self._delete_pulled(store, key, deleted)
                    dead.add(key)
                    self._sql(
                        "INSERT OR IGNORE INTO tombstones (store, key) VALUES (?, ?)", (store, key)
                    )
                    continue
                if key in dead:
                    continue
                record = Record(key, tuple(change["index"]), dumps(change["value"]), change["seq"])
                if key in local:
                    if self._update_pulled(store, record):
                        added.append(record)
                else:
                    fresh[key] = record
            self._insert_records(store, list(fresh.values()))
            self._set_cursor(store, cursor)
        return ChangeEvent(store, "remote", (*added, *fresh.values()), tuple(deleted))

    def _has(self, table: str, store: str) -> bool:
        # A first sync into an empty store skips the per-key look-ups.
        return bool(
            self._sql(f"SELECT 1 FROM {table} WHERE store = ? LIMIT 1", (store,)).fetchone()
        )

    def _present(self, store: str, keys: list[str]) -> set[str]:
        found: set[str] = set()
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            rows = self._sql(
                f"SELECT key FROM records WHERE store = ? AND key IN ({','.join('?' * len(chunk))})",
                (store, *chunk),
            )
            found.update(row[0] for row in rows)
        return found

    def _delete_pulled(self, store: str, key: str, deleted: list[Record]) -> None:
        row = self._sql(
            f"SELECT id, {_RECORD} FROM records WHERE store = ? AND key = ?", (store, key)
        ).fetchone()
        if row is not None:
            record = _record(row[1:])
            self._remove(store, row[0], record.index)
            deleted.append(record)

    def _insert_records(self, store: str, records: Sequence[Record]) -> list[str]:
        """Insert records new to the local view in two executemany; their index JSON."""
        if not records:
            return []
        # Ids are chosen here, inside the write transaction, so that the index
        # rows can be written in one batch too.
        first = self._sql("SELECT coalesce(max(id), 0) + 1 FROM records").fetchone()[0]
        dumps = jsoncodec.dumps
        index_json = [dumps(list(r.index)) for r in records]
        self._many(
            "INSERT INTO records (id, store, key, index_json, value_json, seq)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [
                (first + i, store, r.key, index_json[i], r.value_json, r.seq)
                for i, r in enumerate(records)
            ],
        )
        self._many(
            "INSERT INTO index_items (store, item, record_id) VALUES (?, ?, ?)",
            [(store, item, first + i) for i, r in enumerate(records) for item in r.index],
        )
        return index_json

    def _tombstoned(self, store: str, keys: list[str]) -> set[str]:
        dead: set[str] = set()
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            rows = self._sql(
                f"SELECT key FROM tombstones WHERE store = ? AND key IN"
                f" ({','.join('?' * len(chunk))})",
                (store, *chunk),
            )
            dead.update(row[0] for row in rows)
        return dead

    def _update_pulled(self, store: str, record: Record) -> bool:
        """A pulled add of a key the local view has: our own pending add coming
        back, or (after a key clash) the server's version, which wins. True if
        the visible content changed."""
        index_json = jsoncodec.dumps(list(record.index))
        record_id, old_index, old_value = self._sql(
            "SELECT id, index_json, value_json FROM records WHERE store = ? AND key = ?",
            (store, record.key),
        ).fetchone()
        self._sql(
            "UPDATE records SET seq = ?, index_json = ?, value_json = ? WHERE id = ?",
            (record.seq, index_json, record.value_json, record_id),
        )
        if old_index != index_json:
            self._remove_index(store, record_id, jsoncodec.loads(old_index))
            self._many(
                "INSERT INTO index_items (store, item, record_id) VALUES (?, ?, ?)",
                [(store, item, record_id) for item in record.index],
            )
        return bool(old_index != index_json or old_value != record.value_json)

    # -- snapshot reload (reset) ---------------------------------------------

    def stage_clear(self, store: str) -> None:
        """Start a snapshot reload: empty the staging area of ``store``."""
        with self.transaction():
            self._sql("DELETE FROM snapshot_stage WHERE store = ?", (store,))

    def stage_page(self, store: str, records: Sequence[dict[str, Any]]) -> None:
        """Keep one snapshot page in the staging area (on disk, not in memory)."""
        dumps = jsoncodec.dumps
        with self.transaction():
            self._many(
                "INSERT OR REPLACE INTO snapshot_stage (store, key, index_json, value_json, seq)"
                " VALUES (?, ?, ?, ?, ?)",
                [
                    (store, r["key"], dumps(r["index"]), dumps(r["value"]), r["seq"])
                    for r in records
                ],
            )

    def stage_install(self, store: str, at: str) -> ChangeEvent:
        """Replace the synced records of ``store`` by the staged snapshot, atomically.

        Pending local changes survive: pending adds stay, pending deletes keep
        their records out.
        """
        with self.transaction():
            old = self.cursor(store)
            if old is None or old.split(".")[0] != at.split(".")[0]:
                # A new epoch: forget deletions the old history made, but keep
                # the ones still waiting to be uploaded.
                self._sql(
                    "DELETE FROM tombstones WHERE store = ? AND key NOT IN"
                    " (SELECT key FROM outbox WHERE store = ? AND op = 'delete')",
                    (store, store),
                )
            self._sql(
                "DELETE FROM index_items WHERE store = ? AND record_id IN"
                " (SELECT id FROM records WHERE store = ? AND seq IS NOT NULL)",
                (store, store),
            )
            self._sql("DELETE FROM records WHERE store = ? AND seq IS NOT NULL", (store,))
            first_new = self._sql("SELECT coalesce(max(id), 0) FROM records").fetchone()[0]
            self._sql(
                "INSERT INTO records (store, key, index_json, value_json, seq)"
                " SELECT store, key, index_json, value_json, seq FROM snapshot_stage s"
                " WHERE s.store = ? AND s.key NOT IN (SELECT key FROM tombstones WHERE store = ?)"
                " AND s.key NOT IN (SELECT key FROM records WHERE store = ?)"
                " ORDER BY s.seq",
                (store, store, store),
            )
            self._index_new_records(store, "r.id > ?", (first_new,))
            self._sql("DELETE FROM snapshot_stage WHERE store = ?", (store,))
            self._set_cursor(store, at)
        return ChangeEvent(store, "remote", reset=True)
