"""Settling the server's answers to an upload in the local database.

Part of :class:`~.localdb.LocalDB`: what the server logged leaves the outbox
(marked as this client's own), what it refused for good moves to the
rejected list with its local effect undone, and changes whose numbers
another copy of this file used stay to be sent again under a new client id.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import history, jsoncodec
from .localtables import RECORD_COLUMNS as _RECORD
from .localtables import LocalTables
from .localtables import record_from_row as _record
from .protocol import Outcome
from .records import ChangeEvent, OutboxEntry, Record, RejectedChange
from .revived import queue_delete_again

#: The server's answer when a change number was used before with another body.
CHANGE_NUMBER_CONFLICT = "change_number_conflict"


@dataclass
class Settled:
    """What settling the outcomes of an upload did.

    ``pushed``: changes now in the server's log; ``rejected``: refused for
    good; ``conflicts``: some changes stayed in the outbox because the
    server knows their numbers from another copy of this file (renew the
    client id and send them again); ``history_changed``: the server logged a
    change at a sequence number where this file knows another change (it was
    restored from an older copy: reload the store); ``event``: what the app
    must hear.
    """

    event: ChangeEvent
    rejected: list[RejectedChange] = field(default_factory=list)
    pushed: int = 0
    conflicts: bool = False
    history_changed: bool = False


class Settling:
    """Outcomes of uploads, rejected changes (a part of :class:`~.localdb.LocalDB`)."""

    def settle(
        self: LocalTables,
        store: str,
        entries: Sequence[OutboxEntry],
        outcomes: Sequence[Outcome],
        keep_conflicts: bool = True,
    ) -> Settled:
        """Record what the server did with uploaded changes, in one transaction.

        Applied and duplicate changes leave the outbox (an add gets its seq and
        is marked as this client's own; so is a delete's tombstone). Rejected
        ones move to the rejected list and their local effect is undone: a
        refused add disappears, a refused delete brings its record back.

        With ``keep_conflicts``, the first ``change_number_conflict`` and every
        change after it stay in the outbox (another copy of this file used
        these numbers: send them again under a new client id, in order).
        Changes sent again after a reset are settled quietly when the server
        already knows better (the key was deleted, or holds other content).
        A change logged at a sequence number where this file knows another
        change sets ``history_changed`` (it is settled all the same: the
        server did log it).
        """
        by_n = {o.n: o for o in outcomes}
        result = Settled(ChangeEvent(store, "remote"))
        undone: list[Record] = []
        restored: list[Record] = []
        done: list[int] = []
        synced: list[tuple[int | None, str, str]] = []
        deleted: list[tuple[int | None, str, str]] = []
        with self.transaction():
            result.history_changed = _history_changed(self, store, entries, by_n)
            for entry in entries:
                outcome = by_n.get(entry.n)
                if outcome is None:
                    continue
                if keep_conflicts and outcome.code == CHANGE_NUMBER_CONFLICT:
                    result.conflicts = True
                if result.conflicts:
                    continue
                if outcome.ok:
                    result.pushed += 1
                    done.append(entry.n)
                    target = synced if entry.op == "add" else deleted
                    target.append((outcome.seq, store, entry.key))
                    continue
                code = outcome.code or "rejected"
                if _send_again_if_seen(self, entry, code) or _settle_resent(
                    self, entry, code, undone
                ):
                    continue
                rejection, gone, back = _reject(self, entry, code, outcome.message or "")
                result.rejected.append(rejection)
                undone += [gone] if gone else []
                restored += [back] if back else []
            self._many(
                "UPDATE records SET seq = coalesce(seq, ?), own = 1 WHERE store = ? AND key = ?",
                synced,
            )
            self._many(
                "UPDATE tombstones SET seq = ?, own = 1 WHERE store = ? AND key = ?", deleted
            )
            self._many(
                "DELETE FROM deleted_records WHERE store = ? AND key = ?",
                [(store, key) for _, _, key in deleted],
            )
            # One statement for the batch (a third faster than one per entry);
            # the outbox floor rises with them (its trigger).
            self._sql(
                "DELETE FROM outbox WHERE n IN (SELECT value FROM json_each(?))",
                (jsoncodec.dumps(done),),
            )
        result.event = ChangeEvent(store, "remote", tuple(restored), tuple(undone))
        return result

    def reject(
        self: LocalTables, entry: OutboxEntry, code: str, message: str
    ) -> tuple[RejectedChange, ChangeEvent]:
        """Move one outbox entry to the rejected list (its local effect undone)."""
        with self.transaction():
            rejection, gone, back = _reject(self, entry, code, message)
        event = ChangeEvent(
            entry.store, "remote", added=(back,) if back else (), deleted=(gone,) if gone else ()
        )
        return rejection, event

    def rejected(self: LocalTables) -> list[RejectedChange]:
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

    def dismiss(self: LocalTables, rejected_id: int) -> bool:
        """Forget a rejected change; False if there was none with that id."""
        with self.transaction():
            return self._sql("DELETE FROM rejected WHERE id = ?", (rejected_id,)).rowcount > 0


def _history_changed(
    db: LocalTables, store: str, entries: Sequence[OutboxEntry], by_n: dict[int, Outcome]
) -> bool:
    """True when the server puts one of ``entries`` (``applied`` now, or a
    ``duplicate`` of an earlier logging) at a sequence number where this
    file knows another change.

    The change itself at that seq is no contradiction: a pull on another
    thread may have brought it before this answer is settled.
    """
    applied = [
        (outcome.seq, (entry.op, entry.key))
        for entry in entries
        if (outcome := by_n.get(entry.n)) is not None and outcome.ok and outcome.seq is not None
    ]
    known = history.known_changes(db, store, [seq for seq, _ in applied])
    if not known:  # the usual case: nothing known at these seqs yet
        return False
    return any(history.contradiction(known, seq, change) for seq, change in applied)


def _send_again_if_seen(db: LocalTables, entry: OutboxEntry, code: str) -> bool:
    """A delete refused ``key_not_found`` whose record the server was seen
    holding while the delete waited (``outbox.seen``, see revived.py): the
    record came back after the refusal, so the delete goes again rather than
    holding. False otherwise."""
    if entry.op != "delete" or code != "key_not_found":
        return False
    row = db._sql("SELECT seen FROM outbox WHERE n = ?", (entry.n,)).fetchone()
    if row is None or not row[0]:
        return False
    db._sql("DELETE FROM outbox WHERE n = ?", (entry.n,))
    queue_delete_again(db, entry.store, entry.key)
    return True


def _settle_resent(db: LocalTables, entry: OutboxEntry, code: str, undone: list[Record]) -> bool:
    """A change sent again after a reset that the server refuses because it
    knows better: settled without troubling the app. False otherwise."""
    row = db._sql("SELECT resend FROM outbox WHERE n = ?", (entry.n,)).fetchone()
    expected = ("key_deleted", "key_exists") if entry.op == "add" else ("key_not_found",)
    if row is None or not row[0] or code not in expected:
        return False
    db._sql("DELETE FROM outbox WHERE n = ?", (entry.n,))
    if entry.op == "delete":
        # The server has no such record: the delete holds already, and it is
        # ours (sent again should the record come back).
        db._sql("DELETE FROM deleted_records WHERE store = ? AND key = ?", (entry.store, entry.key))
        db._sql(
            "UPDATE tombstones SET own = 1 WHERE store = ? AND key = ?", (entry.store, entry.key)
        )
        return True
    gone = _remove_pending(db, entry.store, entry.key)
    if gone is not None:
        undone.append(gone)
    if code == "key_deleted":  # deleted by someone while we did not look
        db._sql(
            "INSERT OR IGNORE INTO tombstones (store, key) VALUES (?, ?)",
            (entry.store, entry.key),
        )
    # key_exists: the server's version comes with the next pull.
    return True


def _remove_pending(db: LocalTables, store: str, key: str) -> Record | None:
    row = db._sql(
        f"SELECT id, {_RECORD} FROM records WHERE store = ? AND key = ? AND seq IS NULL",
        (store, key),
    ).fetchone()
    if row is None:
        return None
    record = _record(row[1:])
    db._remove(store, row[0], record.index)
    return record


def _restore_deleted(db: LocalTables, store: str, key: str, code: str) -> Record | None:
    """Undo a delete the server refused: the record comes back as it was synced.

    Not for ``key_not_found`` (the server never had the record: the delete
    holds), nor for a record that was never on the server.
    """
    row = db._sql(
        "SELECT index_json, value_json, seq FROM deleted_records WHERE store = ? AND key = ?",
        (store, key),
    ).fetchone()
    db._sql("DELETE FROM deleted_records WHERE store = ? AND key = ?", (store, key))
    if row is None or row[2] is None or code == "key_not_found":
        return None
    if db._sql(
        "SELECT 1 FROM outbox WHERE store = ? AND key = ? AND op = 'delete'", (store, key)
    ).fetchone():
        return None  # deleted again meanwhile: that delete is still to be sent
    db._sql("DELETE FROM tombstones WHERE store = ? AND key = ?", (store, key))
    record = _record((key, row[0], row[1], row[2]))
    db._insert_records(store, [record])
    return record


def _reject(
    db: LocalTables, entry: OutboxEntry, code: str, message: str
) -> tuple[RejectedChange, Record | None, Record | None]:
    """Move an entry to the rejected list; the record it removed and the one it restored."""
    now = time.time()
    cursor = db._sql(
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
    db._sql("DELETE FROM outbox WHERE n = ?", (entry.n,))
    gone = back = None
    if entry.op == "add":
        gone = _remove_pending(db, entry.store, entry.key)
    else:
        back = _restore_deleted(db, entry.store, entry.key, code)
        # key_not_found: the delete holds, and it is this client's: should the
        # server get the record back (its author sends it again after a
        # restore), the delete goes again (see revived.py). Any other refusal:
        # not a delete of ours to send again (a tombstone left is not ours).
        db._sql(
            "UPDATE tombstones SET own = ? WHERE store = ? AND key = ?",
            (code == "key_not_found", entry.store, entry.key),
        )
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
    return rejection, gone, back
