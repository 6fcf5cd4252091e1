"""Applying pulled pages in the local database.

Part of :class:`~.localdb.LocalDB`. A page and the cursor after it are one
transaction. A page of adds no local key can meet (a first sync) is
inserted column by column; any other page change by change: a pulled
delete leaves a tombstone, a pulled add of a tombstoned key is a delete the
server lost (:mod:`.revived`), our own add coming back settles in place. A
page that contradicts what this file knows of the server's history is
refused with ``ResetRequired``, nothing applied.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from itertools import repeat
from typing import Any

from . import history, jsoncodec, killpoint
from .errors import LocalStorageError, ResetRequired
from .localtables import RECORD_COLUMNS as _RECORD
from .localtables import LocalTables
from .localtables import record_from_row as _record
from .records import ChangeEvent, Record, same_json
from .revived import settle_revived


class PulledPages:
    """Pulled pages into the local view (a part of :class:`~.localdb.LocalDB`)."""

    def apply_pulled(
        self: LocalTables,
        store: str,
        changes: Sequence[dict[str, Any]],
        cursor: str,
        pulled_from: str | None,
    ) -> ChangeEvent | None:
        """Apply a pulled page and advance the cursor, in one transaction.

        ``pulled_from`` is the cursor the page was asked after; if another
        thread moved the cursor meanwhile, nothing is applied and None is
        returned (pull again).
        """
        # Not synced to disk: a page lost with its cursor (power loss) is pulled again.
        with self.transaction(durable=False):
            if self.cursor(store) != pulled_from:
                return None
            _check_same_history(self, store, changes)
            event = _apply_new_adds(self, store, changes, cursor)
            if event is None:
                event = _apply_changes(self, store, changes, cursor)
            killpoint.reached("client.pull.before_commit")
        killpoint.reached("client.pull.committed")
        return event


def _apply_new_adds(
    db: LocalTables, store: str, changes: Sequence[dict[str, Any]], cursor: str
) -> ChangeEvent | None:
    """The fast way for a page of adds no local key can meet (a first
    sync): inserted column by column; None when the page is not that."""
    if not _only_new_adds(db, store, changes):
        return None
    try:
        # A savepoint: should a key be in the view after all (a server
        # restored from an older copy logs a key again), the unique index
        # refuses it and the page is applied change by change instead.
        with db.transaction():
            fresh = _insert_pulled(db, store, changes)
            db._set_cursor(store, cursor)
        return ChangeEvent(store, "remote", tuple(fresh))
    except LocalStorageError as exc:
        if not isinstance(exc.original, sqlite3.IntegrityError):
            raise
        return None


def _only_new_adds(db: LocalTables, store: str, changes: Sequence[dict[str, Any]]) -> bool:
    """True when every change of a pulled page is an add and none can meet
    a key the local view or the tombstones hold: no tombstones in the
    store, and no record pending or at a sequence number of the page or
    later (our own changes come back at theirs). A first sync is all that."""
    if not changes or {c["op"] for c in changes} != {"add"}:
        return False
    if db._has("tombstones", store):
        return False
    low = min([c["seq"] for c in changes])
    # Pending records are found by their outbox entries: the (store, seq)
    # index holds synced records only.
    return not db._sql(
        "SELECT 1 FROM outbox WHERE store = ? AND op = 'add'"
        " UNION ALL SELECT 1 FROM records WHERE store = ? AND seq >= ? LIMIT 1",
        (store, store, low),
    ).fetchone()


def _insert_pulled(db: LocalTables, store: str, changes: Sequence[dict[str, Any]]) -> list[Record]:
    """Insert pulled adds new to the local view (one executemany, and
    their index rows in one statement); the records inserted."""
    dumps = jsoncodec.dumps
    first = db._sql("SELECT coalesce(max(id), 0) + 1 FROM records").fetchone()[0]
    # Column by column with map and comprehensions: no Python call per
    # record beyond the encoder's.
    ids = range(first, first + len(changes))
    keys = [c["key"] for c in changes]
    indexes = [c["index"] for c in changes]
    values = [dumps(c["value"]) for c in changes]
    seqs = [c["seq"] for c in changes]
    db._many(
        "INSERT INTO records (id, store, key, index_json, value_json, seq)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        zip(ids, repeat(store), keys, map(dumps, indexes), values, seqs),
    )
    db._index_from(first)
    return list(map(Record, keys, map(tuple, indexes), values, seqs))


def _apply_changes(
    db: LocalTables, store: str, changes: Sequence[dict[str, Any]], cursor: str
) -> ChangeEvent:
    """Apply a pulled page change by change (inside the page's transaction)."""
    added: list[Record] = []
    deleted: list[Record] = []
    fresh: dict[str, Record] = {}  # new to the local view: inserted together at the end
    dumps = jsoncodec.dumps
    add_keys = [c["key"] for c in changes if c["op"] == "add"]
    dead = _tombstoned(db, store, add_keys) if db._has("tombstones", store) else set()
    local = _local_rows(db, store, add_keys) if db._has("records", store) else {}
    if dead:
        dead -= settle_revived(db, store, changes, dead)
    for change in changes:
        key = change["key"]
        if change["op"] == "delete":
            if fresh.pop(key, None) is None:
                _delete_pulled(db, store, key, deleted)
            dead.add(key)
            db._sql(
                "INSERT INTO tombstones (store, key, seq) VALUES (?, ?, ?)"
                " ON CONFLICT(store, key) DO UPDATE SET seq = excluded.seq",
                (store, key, change["seq"]),
            )
            # Deleted on the server: a refusal of our own delete must
            # not bring it back.
            db._sql("DELETE FROM deleted_records WHERE store = ? AND key = ?", (store, key))
            continue
        if key in dead:
            continue
        record = Record(key, tuple(change["index"]), dumps(change["value"]), change["seq"])
        row = local.get(key)
        if row is not None:
            if row == (record.seq, dumps(change["index"]), record.value_json):
                # This client's own add coming back, already settled at
                # this seq with this content: nothing to write.
                continue
            if _update_pulled(db, store, record):
                added.append(record)
        else:
            fresh[key] = record
    db._insert_records(store, list(fresh.values()))
    db._set_cursor(store, cursor)
    return ChangeEvent(store, "remote", (*added, *fresh.values()), tuple(deleted))


def _check_same_history(db: LocalTables, store: str, changes: Sequence[dict[str, Any]]) -> None:
    """Raise ResetRequired when a pulled change sits at a sequence number
    where this file knows another change (another key, or another op).

    That happens when the server was restored from an older copy and
    logged new changes over the ones it lost, behind a cursor it still
    accepts: this file's view is of a history the server no longer has.
    """
    seqs = [c["seq"] for c in changes if isinstance(c.get("seq"), int)]
    if not seqs:
        return
    known = history.known_changes(db, store, seqs)
    if not known:
        return
    for change in changes:
        seq = change.get("seq")
        if not isinstance(seq, int):
            continue
        other = history.contradiction(known, seq, (change["op"], change["key"]))
        if other is not None:
            raise ResetRequired(
                f"store {store}: the server's change {seq} is not the one this"
                " client saw there (the server's history changed)",
                code="reset_required",
            )


def _local_rows(db: LocalTables, store: str, keys: list[str]) -> dict[str, tuple[int, str, str]]:
    """The local view's ``(seq, index_json, value_json)`` of each of ``keys`` it holds."""
    found: dict[str, tuple[int, str, str]] = {}
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        rows = db._sql(
            "SELECT key, seq, index_json, value_json FROM records"
            f" WHERE store = ? AND key IN ({','.join('?' * len(chunk))})",
            (store, *chunk),
        )
        found.update((row[0], row[1:]) for row in rows)
    return found


def _delete_pulled(db: LocalTables, store: str, key: str, deleted: list[Record]) -> None:
    row = db._sql(
        f"SELECT id, {_RECORD} FROM records WHERE store = ? AND key = ?", (store, key)
    ).fetchone()
    if row is not None:
        record = _record(row[1:])
        db._remove(store, row[0], record.index)
        deleted.append(record)


def _tombstoned(db: LocalTables, store: str, keys: list[str]) -> set[str]:
    dead: set[str] = set()
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        rows = db._sql(
            f"SELECT key FROM tombstones WHERE store = ? AND key IN ({','.join('?' * len(chunk))})",
            (store, *chunk),
        )
        dead.update(row[0] for row in rows)
    return dead


def _update_pulled(db: LocalTables, store: str, record: Record) -> bool:
    """A pulled add of a key the local view has: our own pending add coming
    back, or (after a key clash) the server's version, which wins. True if
    the visible content changed."""
    index_json = jsoncodec.dumps(list(record.index))
    record_id, old_index, old_value = db._sql(
        "SELECT id, index_json, value_json FROM records WHERE store = ? AND key = ?",
        (store, record.key),
    ).fetchone()
    # Type-exact JSON equality (false != 0, 1 != 1.0, [1] != [true]) that
    # ignores the order of object members: the same content is no change.
    same = old_index == index_json and same_json(old_value, record.value_json)
    db._sql(
        "UPDATE records SET seq = ?, index_json = ?, value_json = ?,"
        " own = CASE WHEN ? THEN own ELSE 0 END WHERE id = ?",
        (record.seq, index_json, record.value_json, same, record_id),
    )
    if old_index != index_json:
        db._remove_index(store, record_id, jsoncodec.loads(old_index))
        db._many(
            "INSERT INTO index_items (store, item, record_id) VALUES (?, ?, ?)",
            [(store, item, record_id) for item in record.index],
        )
    return not same
