"""Attribute records: mutable attributes built from immutable records.

Setting attribute ``name`` of ``entity`` adds a record carrying the value,
indexed under ``@attr:<entity>/<name>``, and deletes the records that held the
previous value, in one local transaction. When two clients set the same
attribute while offline, both values reach the server; every client then
picks the same winner, **the value the server logged last** (highest
sequence number), and deletes the others.

A pending local value counts as newest: once uploaded it gets a sequence
number higher than any the client has seen.
"""

from __future__ import annotations

import uuid
from typing import Any

from .localdb import LocalDB
from .records import ChangeEvent, Record

PREFIX = "@attr:"


def index_item(entity: str, name: str) -> str:
    """The index item under which an attribute's records are found."""
    for what, text in (("entity", entity), ("attribute name", name)):
        if not isinstance(text, str) or not text:
            raise ValueError(f"{what} must be a non-empty string")
        if "/" in text:
            raise ValueError(f"{what} must not contain '/'")
    return f"{PREFIX}{entity}/{name}"


def entity_prefix(entity: str) -> str:
    """The index prefix that finds every attribute of ``entity``."""
    index_item(entity, "x")  # validates the entity
    return f"{PREFIX}{entity}/"


def winner(records: list[Record]) -> Record | None:
    """The record whose value counts: the newest pending one, else the highest seq."""
    pending = [r for r in records if r.seq is None]
    if pending:
        return pending[-1]
    return max(records, key=lambda r: r.seq or 0, default=None)


def holders(db: LocalDB, store: str, item: str) -> list[Record]:
    """Every record in the local view that holds a value of the attribute ``item``."""
    return [record for _, record in db.find(store, item, False, 0, 1_000_000)]


def losers_after_pull(db: LocalDB, store: str, event: ChangeEvent) -> list[str]:
    """Keys of attribute records that lost to a newer value, after a pulled page.

    Only records that are on the server are deleted: if a pending value
    exists it will be logged last, so every synced value has lost.
    """
    items = {item for record in event.added for item in record.index if item.startswith(PREFIX)}
    losing: list[str] = []
    for item in sorted(items):
        records = holders(db, store, item)
        if len(records) < 2:
            continue
        keep = winner(records)
        losing += [r.key for r in records if r is not keep and r.seq is not None]
    return losing


def new_key() -> str:
    """A fresh record key for an attribute value."""
    return str(uuid.uuid4())


def value_of(record: Record | None) -> Any:
    """The attribute value a record carries (None when there is no record)."""
    return None if record is None else record.value["value"]
