"""Reloading a store from the server's snapshot (a reset) in the local database.

Part of :class:`~.localdb.LocalDB`. Snapshot pages are staged on disk, then
swapped in atomically: pending local changes survive, and this client's own
acknowledged changes that the snapshot lacks are queued to be sent again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import jsoncodec
from .localtables import PENDING_DELETES as _PENDING_DELETES
from .localtables import LocalTables
from .records import ChangeEvent, same_json


class SnapshotReload:
    """Snapshot staging and install (a part of :class:`~.localdb.LocalDB`)."""

    def stage_clear(self: LocalTables, store: str) -> None:
        """Start a snapshot reload: empty the staging area of ``store``."""
        with self.transaction():
            self._sql("DELETE FROM snapshot_stage WHERE store = ?", (store,))

    def stage_page(self: LocalTables, store: str, records: Sequence[dict[str, Any]]) -> None:
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

    def stage_install(self: LocalTables, store: str, at: str) -> tuple[ChangeEvent, int]:
        """Replace the synced records of ``store`` by the staged snapshot, atomically.

        Pending local changes survive: pending adds stay, pending deletes keep
        their records out. This client's own acknowledged changes that the
        snapshot lacks (the server was restored from an older copy, or the
        store was re-created) are kept and queued to be sent again: records
        it added that the snapshot does not hold, and records it deleted that
        the snapshot still holds. Returns the event and how many changes were
        queued again.
        """
        with self.transaction():
            old = self.cursor(store)
            resent = _queue_lost_deletes(self, store)
            # Other deletes of keys the snapshot holds were lost by the server
            # too; the snapshot is the truth (their authors send them again).
            self._sql(
                "DELETE FROM tombstones WHERE store = ? AND key IN"
                f" (SELECT key FROM snapshot_stage WHERE store = ?) AND key NOT IN ({_PENDING_DELETES})",
                (store, store, store),
            )
            if old is None or old.split(".")[0] != at.split(".")[0]:
                # A new epoch: forget deletions the old history made, but keep
                # the ones still waiting to be uploaded.
                self._sql(
                    f"DELETE FROM tombstones WHERE store = ? AND key NOT IN ({_PENDING_DELETES})",
                    (store, store),
                )
            # Sequence numbers of the old view name a history the server may
            # no longer hold: they must not be compared with new ones.
            self._sql("UPDATE tombstones SET seq = NULL WHERE store = ?", (store,))
            resent += _queue_lost_adds(self, store)
            _carry_own_marks(self, store)
            self._sql(
                "DELETE FROM index_items WHERE store = ? AND record_id IN"
                " (SELECT id FROM records WHERE store = ? AND seq IS NOT NULL)",
                (store, store),
            )
            self._sql("DELETE FROM records WHERE store = ? AND seq IS NOT NULL", (store,))
            first_new = self._sql("SELECT coalesce(max(id), 0) FROM records").fetchone()[0]
            self._sql(
                "INSERT INTO records (store, key, index_json, value_json, seq, own)"
                " SELECT store, key, index_json, value_json, seq, own FROM snapshot_stage s"
                " WHERE s.store = ? AND s.key NOT IN (SELECT key FROM tombstones WHERE store = ?)"
                " AND s.key NOT IN (SELECT key FROM records WHERE store = ?)"
                " ORDER BY s.seq",
                (store, store, store),
            )
            self._index_new_records(store, "r.id > ?", (first_new,))
            self._sql("DELETE FROM snapshot_stage WHERE store = ?", (store,))
            self._set_cursor(store, at)
        return ChangeEvent(store, "remote", reset=True), resent


def _carry_own_marks(db: LocalTables, store: str) -> None:
    """Our own records that the snapshot holds stay marked as ours (when the
    content is the same JSON: the same text, or equal type-exactly)."""
    rows = db._sql(
        "SELECT s.key, s.index_json = r.index_json AND s.value_json = r.value_json,"
        " s.index_json, r.index_json, s.value_json, r.value_json"
        " FROM snapshot_stage s JOIN records r ON r.store = s.store AND r.key = s.key"
        " WHERE s.store = ? AND r.own = 1 AND r.seq IS NOT NULL",
        (store,),
    ).fetchall()
    db._many(
        "UPDATE snapshot_stage SET own = 1 WHERE store = ? AND key = ?",
        [
            (store, key)
            for key, same_text, s_index, r_index, s_value, r_value in rows
            if same_text or (s_index == r_index and same_json(s_value, r_value))
        ],
    )


def _queue_lost_deletes(db: LocalTables, store: str) -> int:
    """Queue again our acknowledged deletes of records the snapshot still holds
    (returns how many); mark the pending ones as seen on the server."""
    where = (
        "FROM tombstones t JOIN snapshot_stage s ON s.store = t.store AND s.key = t.key"
        f" WHERE t.store = ? AND t.own = 1 AND t.key NOT IN ({_PENDING_DELETES})"
    )
    # Pending deletes note whether the server holds their records now
    # (revived.py): one refused key_not_found before its record came back
    # goes again; a note from before this reset (an older history, an older
    # epoch) goes.
    db._sql(
        "UPDATE outbox SET seen = key IN (SELECT key FROM snapshot_stage WHERE store = ?)"
        " WHERE store = ? AND op = 'delete'",
        (store, store),
    )
    # The snapshot's content is what comes back if the server refuses the delete.
    db._sql(
        "INSERT OR REPLACE INTO deleted_records (store, key, index_json, value_json, seq)"
        f" SELECT s.store, s.key, s.index_json, s.value_json, s.seq {where}",
        (store, store),
    )
    return db._sql(
        f"INSERT INTO outbox (store, op, key, resend) SELECT t.store, 'delete', t.key, 1 {where}",
        (store, store),
    ).rowcount


def _queue_lost_adds(db: LocalTables, store: str) -> int:
    """Queue again our acknowledged records the snapshot lacks; they stay in
    the local view, pending again."""
    where = (
        "WHERE store = ? AND seq IS NOT NULL AND own = 1"
        " AND key NOT IN (SELECT key FROM snapshot_stage WHERE store = ?)"
    )
    count = db._sql(
        "INSERT INTO outbox (store, op, key, index_json, value_json, resend)"
        f" SELECT store, 'add', key, index_json, value_json, 1 FROM records {where} ORDER BY seq",
        (store, store),
    ).rowcount
    db._sql(f"UPDATE records SET seq = NULL, own = 0 {where}", (store, store))
    return count
