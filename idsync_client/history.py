"""What the local file knows of the server's history: which change sits at
which sequence number.

A server restored from an older copy logs new changes at sequence numbers it
had already given to changes it lost. The client sees that when the server
puts a change (pulled, or just logged for this client) at a sequence number
where the local file knows another one. Several local rows may sit at one
sequence number once that has happened, so every one of them is compared.
"""

from __future__ import annotations

from collections.abc import Iterable

from .localtables import LocalTables

#: A change as the history knows it: (op, key).
Change = tuple[str, str]


def known_changes(db: LocalTables, store: str, seqs: Iterable[int]) -> dict[int, set[Change]]:
    """The changes the local file holds at each of ``seqs`` (records: adds,
    tombstones: deletes)."""
    wanted = sorted(set(seqs))
    known: dict[int, set[Change]] = {}
    if not wanted:
        return known
    low, high = wanted[0], wanted[-1]
    for table, op in (("records", "add"), ("tombstones", "delete")):
        rows = db._sql(
            f"SELECT seq, key FROM {table} WHERE store = ? AND seq BETWEEN ? AND ?",
            (store, low, high),
        )
        for seq, key in rows:
            known.setdefault(seq, set()).add((op, key))
    return known


def contradiction(known: dict[int, set[Change]], seq: int, change: Change) -> Change | None:
    """Another change the local file knows at ``seq`` than ``change``, if any."""
    others = known.get(seq, set()) - {change}
    return min(others) if others else None
