"""Pulled adds of keys this file holds a tombstone for: a delete the server lost.

In one history a key is never added after its delete. A pulled add of a
tombstoned key means the server holds a history without that delete: it was
restored from an older copy that lacked the record, and the record's author
sent it again after its reset. Whose delete it was decides what happens:

- **this client's own** (acknowledged, or answered ``key_not_found`` while
  the server lacked the record): the app was told the delete is saved, so it
  is queued again, and the record stays out of the local view;
- **another client's**: the server is the truth, as for the deletes by others
  that a snapshot contradicts: the tombstone goes and the record shows, so
  this client agrees with the server (the delete's author sends it again).

A key whose delete is still pending is neither: that delete goes as usual.
But the server holds the record now, and the delete may already have been
answered ``key_not_found`` (sent while the server lacked the record, the
answer not settled yet). The outbox entry notes it (``seen``), which
settling reads: such a refusal sends the delete again (settling.py).

An add logged before the known sequence number of this client's delete is
no revival: the delete comes later in the same history (a later page, or
further on in this one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import jsoncodec
from .localtables import LocalTables


def settle_revived(
    db: LocalTables, store: str, changes: Sequence[dict[str, Any]], dead: set[str]
) -> set[str]:
    """Handle the pulled adds in ``changes`` of keys in ``dead`` (tombstoned);
    returns the keys whose tombstone went (their add is to be applied).

    Runs inside the transaction that applies the page.
    """
    revived = [c for c in changes if c["op"] == "add" and c["key"] in dead]
    if not revived:
        return set()
    shown: set[str] = set()
    for change in revived:
        key = change["key"]
        # A pending delete of the key notes that the server holds the record
        # (the UPDATE finds it, or there is none: one statement for both).
        if db._sql(
            "UPDATE outbox SET seen = 1 WHERE store = ? AND op = 'delete' AND key = ?", (store, key)
        ).rowcount:
            continue
        row = db._sql(
            "SELECT own, seq FROM tombstones WHERE store = ? AND key = ?", (store, key)
        ).fetchone()
        if row is not None and row[1] is not None and change["seq"] < row[1]:
            # The delete sits later in this history (a page to come): our own
            # add heard back before our delete, no revival. (Were the history
            # rewritten, the change found at that seq tells: a reset.)
            continue
        if row is None or not row[0]:
            db._sql("DELETE FROM tombstones WHERE store = ? AND key = ?", (store, key))
            shown.add(key)
            continue
        # Ours: send it again. The content is kept in case the server refuses
        # the delete for good (the record then comes back, as for any delete).
        db._sql(
            "INSERT OR REPLACE INTO deleted_records (store, key, index_json, value_json, seq)"
            " VALUES (?, ?, ?, ?, ?)",
            (
                store,
                key,
                jsoncodec.dumps(change["index"]),
                jsoncodec.dumps(change["value"]),
                change["seq"],
            ),
        )
        queue_delete_again(db, store, key)
    return shown


def queue_delete_again(db: LocalTables, store: str, key: str) -> None:
    """Queue a delete of ``key`` sent again (behind any change already queued)."""
    db._sql("INSERT INTO outbox (store, op, key, resend) VALUES (?, 'delete', ?, 1)", (store, key))
