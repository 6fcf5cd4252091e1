"""Attribute records: mutable attributes built from immutable records.

Setting attribute ``name`` of ``entity`` adds a record carrying the value,
indexed under ``@attr:<entity>/<name>``, and deletes the records that held the
previous value, in one local transaction. The record also names its writer
(``by``, the client id) and the keys it replaced (``replaces``). When two clients set the same
attribute while offline, both values reach the server; every client then
picks the same winner, **the value the server logged last** (highest
sequence number), and deletes the others.

A pending local value counts as newest: once uploaded it gets a sequence
number higher than any the client has seen.

:class:`AttributeCleanUp` runs after every pulled page (a hook of the sync
engine): it deletes the losers and tells the app, through
:class:`~idsync_client.records.ConflictEvent`, when a value this device set
lost to another device's.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from functools import partial
from itertools import chain
from operator import attrgetter, methodcaller
from typing import Any

from .listeners import Listeners, require_callable
from .localdb import LocalDB
from .protocol import prefix_upper_bound
from .records import ChangeEvent, ConflictEvent, Record
from .subscriptions import SubscriptionHub

ConflictCallback = Callable[[ConflictEvent], None]

PREFIX = "@attr:"
#: The index prefix of entity-deleted markers: ``@deleted:<entity>``.
DELETED_PREFIX = "@deleted:"
# What PREFIX and DELETED_PREFIX start with.
_RESERVED = "@"


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


def deleted_item(entity: str) -> str:
    """The index item of the markers saying ``entity`` was deleted."""
    index_item(entity, "x")  # validates the entity
    return f"{DELETED_PREFIX}{entity}"


def is_deleted(db: LocalDB, store: str, entity: str) -> bool:
    """True when this client knows a marker saying ``entity`` was deleted."""
    return bool(db.find(store, deleted_item(entity), False, 0, 1))


def deleted_entities(db: LocalDB, store: str) -> set[str]:
    """Every entity of ``store`` a marker says was deleted."""
    found = db.find(store, DELETED_PREFIX, True, 0, 1_000_000)
    return {
        item[len(DELETED_PREFIX) :]
        for _, record in found
        for item in record.index
        if item.startswith(DELETED_PREFIX)
    }


def entity_of(record: Record) -> str | None:
    """The entity an attribute record belongs to (None for other records)."""
    for item in record.index:
        if item.startswith(PREFIX):
            return item[len(PREFIX) :].partition("/")[0]
    return None


def delete_attributes(db: LocalDB, store: str, entity: str) -> list[Record]:
    """Delete every attribute record of ``entity`` (in the caller's transaction)."""
    found = db.find(store, entity_prefix(entity), True, 0, 1_000_000)
    return [db.delete(store, record.key) for _, record in found]


def marker_value(entity: str, by: str) -> dict[str, Any]:
    """The value of the record that marks ``entity`` deleted."""
    return {"entity": entity, "deleted": True, "by": by}


def winner(records: list[Record]) -> Record | None:
    """The record whose value counts: the newest pending one, else the highest seq."""
    pending = [r for r in records if r.seq is None]
    if pending:
        return pending[-1]
    return max(records, key=lambda r: r.seq or 0, default=None)


def holders(db: LocalDB, store: str, item: str) -> list[Record]:
    """Every record in the local view that holds a value of the attribute ``item``."""
    return [record for _, record in db.find(store, item, False, 0, 1_000_000)]


def _contested_items(db: LocalDB, store: str) -> list[str]:
    """Every attribute item of ``store`` that more than one record holds."""
    bound = prefix_upper_bound(PREFIX) or PREFIX + "\U0010ffff"
    # The index table's own key (store, item, record_id) answers this without
    # reading a record: cheap enough to run once per store and process.
    rows = db._sql(
        "SELECT item FROM index_items WHERE store = ? AND item >= ? AND item < ?"
        " GROUP BY item HAVING count(*) > 1 ORDER BY item",
        (store, PREFIX, bound),
    ).fetchall()
    return [row[0] for row in rows]


def _own_keys(db: LocalDB, store: str, keys: list[str]) -> set[str]:
    """Which of ``keys`` are records this client added and the server acknowledged."""
    if not keys:
        return set()
    marks = ",".join("?" * len(keys))
    rows = db._sql(
        f"SELECT key FROM records WHERE store = ? AND own = 1 AND key IN ({marks})",
        (store, *keys),
    ).fetchall()
    return {row[0] for row in rows}


def _marked(event: ChangeEvent) -> bool:
    """Whether a record of ``event`` has an attribute or marker item (both
    start with ``@``). One pass at C speed: a page holds thousands of records."""
    records = chain(event.added, event.deleted)
    items = chain.from_iterable(map(attrgetter("index"), records))
    return any(map(methodcaller("startswith", _RESERVED), items))


def _deleted_at(db: LocalDB, store: str, key: str) -> int:
    """Where the server logged the delete of ``key`` (0 when not known)."""
    row = db._sql("SELECT seq FROM tombstones WHERE store = ? AND key = ?", (store, key)).fetchone()
    return int(row[0]) if row is not None and row[0] is not None else 0


class AttributeCleanUp:
    """After a pulled page: delete attribute values that lost, and report conflicts.

    Registered as a page hook of the sync engine (``hook(store, event)``).
    The first page of each store in a process, and the first after a
    snapshot reload, checks every attribute of the store, so a clean-up that
    a crash interrupted (the page was committed, its clean-up was not) or
    values a snapshot brought are handled then; other pages check only the
    attributes they touched.

    A :class:`ConflictEvent` goes to :meth:`listen`'s callbacks for each
    value this client wrote (its ``own`` mark, or ``by`` naming this client)
    that loses to a value of another client logged later whose writer had
    not seen it (not in the winner's ``replaces``): when this client deletes
    the loser, or when a page brings another client's delete of it, made
    after the winner. Exactly once: the loser is found and deleted in one
    transaction, and a pulled page is applied once. Callbacks run after the
    library's locks are released (the client's callback queue).
    """

    def __init__(self, db: LocalDB, hub: SubscriptionHub) -> None:
        self.db = db
        self.hub = hub
        self._checked: set[str] = set()
        self._listeners: Listeners[tuple[str, ConflictCallback]] = Listeners()
        self._lock = threading.Lock()

    def listen(self, store: str, callback: ConflictCallback) -> Callable[[], None]:
        """Call ``callback(event)`` for each conflict in ``store``; returns an unsubscribe."""
        require_callable(callback)
        return self._listeners.add((store, callback))

    def __call__(self, store: str, event: ChangeEvent) -> None:
        with self._lock:
            first = store not in self._checked
            self._checked.add(store)
        if not first and not _marked(event):
            return  # no attribute value nor marker in the page: nothing to settle
        if first:
            # A snapshot reload brings values no page event lists: check the
            # whole store again at the next page after one. Resets only: a
            # round holds its callbacks, with their events, until it ends,
            # and every page's records held so would grow with the download.
            self.hub.add(store, self._after_change, resets_only=True)
        with self.db.transaction():
            removed = self._remove_deleted_entities(store, event, first)
        if removed:
            with self.hub.callbacks.held():
                self.hub.publish(ChangeEvent(store, "remote", deleted=tuple(removed)))
        touched = {
            item
            for record in (*event.added, *event.deleted)
            for item in record.index
            if item.startswith(PREFIX)
        }
        if first:
            touched.update(_contested_items(self.db, store))
        if not touched:
            return
        # Values of ours that the page deleted: another device cleaned them
        # up (a conflict) or replaced them knowingly (not one); the winner's
        # ``replaces`` tells which.
        me = self.db.client_id
        gone = {
            item: record
            for record in event.deleted
            for item in record.index
            if item.startswith(PREFIX) and _writer(record) == me
        }
        deleted: list[Record] = []
        conflicts: list[ConflictEvent] = []
        with self.db.transaction():  # finds and deletes at once: each loser is told once
            for item in sorted(touched):
                self._settle_item(store, item, gone.get(item), deleted, conflicts)
        with self.hub.callbacks.held():
            self.hub.publish(ChangeEvent(store, "remote", deleted=tuple(deleted)))
            listeners = [cb for name, cb in self._listeners.current() if name == store]
            for conflict in conflicts:
                for callback in listeners:
                    self.hub.callbacks.call(partial(callback, conflict))

    def _remove_deleted_entities(
        self, store: str, event: ChangeEvent, everything: bool
    ) -> list[Record]:
        """Delete the attribute records of deleted entities: those a marker in
        the page names, those the page brought for an entity this client
        knows deleted (another device set them before it saw the delete),
        and, with ``everything``, all of the store's."""
        entities = {
            item[len(DELETED_PREFIX) :]
            for record in event.added
            for item in record.index
            if item.startswith(DELETED_PREFIX)
        }
        arrived = {entity_of(record) for record in event.added} - {None}
        known = deleted_entities(self.db, store) if arrived or everything else set()
        entities |= known if everything else {e for e in arrived if e in known}
        removed: list[Record] = []
        for entity in sorted(e for e in entities if e is not None):
            removed += delete_attributes(self.db, store, entity)
        return removed

    def _after_change(self, event: ChangeEvent) -> None:
        if event.reset:
            with self._lock:
                self._checked.discard(event.store)

    def _settle_item(
        self,
        store: str,
        item: str,
        gone: Record | None,
        deleted: list[Record],
        conflicts: list[ConflictEvent],
    ) -> None:
        records = holders(self.db, store, item)
        keep = winner(records)
        if keep is None:
            return  # the attribute was unset
        # Only values on the server are deleted: a pending one is logged last.
        losing = [r for r in records if r is not keep and r.seq is not None]
        own = _own_keys(self.db, store, [r.key for r in losing] + [keep.key])
        me = self.db.client_id
        if keep.seq is None or keep.key in own or _writer(keep) == me:
            self._delete(store, losing, deleted)  # ours wins: nothing of ours lost here
            return
        lost = [r for r in losing if r.key in own or _writer(r) == me]
        if gone is not None and _deleted_at(self.db, store, gone.key) > (keep.seq or 0):
            # Deleted after the winner was logged: a clean-up by a device that
            # saw both (a delete before it was an unset, made knowingly).
            lost.append(gone)
        self._delete(store, losing, deleted)
        known = _replaced(keep)
        for record in lost:
            if record.key not in known and (record.seq or 0) < (keep.seq or 0):
                conflicts.append(_conflict(store, item, keep, record))

    def _delete(self, store: str, losing: list[Record], deleted: list[Record]) -> None:
        deleted += [self.db.delete(store, record.key) for record in losing]


def _writer(record: Record) -> Any:
    value = record.value
    return value.get("by") if isinstance(value, dict) else None


def _replaced(record: Record) -> set[str]:
    value = record.value
    keys = value.get("replaces") if isinstance(value, dict) else None
    return {k for k in keys if isinstance(k, str)} if isinstance(keys, list) else set()


def _carried(record: Record) -> Any:
    # A record another app put under an attribute item may hold any value.
    value = record.value
    return value.get("value") if isinstance(value, dict) else value


def _conflict(store: str, item: str, keep: Record, lost: Record) -> ConflictEvent:
    entity, _, name = item[len(PREFIX) :].partition("/")
    return ConflictEvent(
        store=store,
        entity=entity,
        name=name,
        winning_value=_carried(keep),
        winning_seq=keep.seq,
        winning_key=keep.key,
        losing_value=_carried(lost),
        losing_seq=lost.seq,
        losing_key=lost.key,
    )


def new_key() -> str:
    """A fresh record key for an attribute value."""
    return str(uuid.uuid4())


def value_of(record: Record | None) -> Any:
    """The attribute value a record carries (None when there is no record)."""
    return None if record is None else _carried(record)


def record_value(entity: str, name: str, value: Any, by: str, replaces: list[Record]) -> dict[str, Any]:
    """The value of the record that sets an attribute.

    ``by`` is the writing client's id and ``replaces`` the keys of the values
    it saw and replaced: a device that finds one of its values deleted
    tells a knowing replacement from a conflict by them.
    """
    return {
        "entity": entity,
        "name": name,
        "value": value,
        "by": by,
        "replaces": [record.key for record in replaces],
    }
