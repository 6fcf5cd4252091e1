"""A store handle: add, delete, get, find, iterate, subscribe, attributes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from . import arguments, attributes, killpoint
from .attributes import ConflictCallback
from .protocol import Limits, ProtocolViolation, encode_value, validate_index_items, validate_key
from .records import ChangeEvent, Record
from .subscriptions import Callback, Subscription

if TYPE_CHECKING:
    from .client import Client


#: The fields an item of :meth:`Store.add_many` may have.
_ITEM_FIELDS = frozenset({"value", "index", "key"})


def _key(key: object, limits: Limits, code: str = "invalid_request") -> str:
    return validate_key(arguments.text("key", key), limits, code)


def _index_items(index: Iterable[str], limits: Limits) -> tuple[str, ...]:
    # A lone string is iterable too: refuse it rather than index its letters.
    if isinstance(index, str | bytes):
        raise ValueError("index must be a list of strings, not a single string")
    if not isinstance(index, Iterable):
        raise TypeError(f"index must be a list of strings, not {type(index).__name__}")
    listed = [arguments.text("an index item", item) for item in index]
    items = validate_index_items(listed, limits, "invalid_change")
    for item in items:
        # A plain record under these items would count as an attribute value
        # or an entity's deletion on every client.
        if item.startswith((attributes.PREFIX, attributes.DELETED_PREFIX)):
            raise ProtocolViolation(
                "invalid_change",
                f"index item {item!r}: items starting with {attributes.PREFIX!r} or"
                f" {attributes.DELETED_PREFIX!r} are kept for attribute records"
                " (set_attr, delete_entity)",
            )
    return items


def _attr_item(entity: str, name: str, limits: Limits) -> str:
    # The attribute's index item must pass the server's checks (no control
    # characters, not too long): refused here, before anything is written.
    item = attributes.index_item(arguments.text("entity", entity), arguments.text("name", name))
    return validate_index_items([item], limits, "invalid_change")[0]


def _deleted_item(entity: str, limits: Limits) -> str:
    item = attributes.deleted_item(arguments.text("entity", entity))
    return validate_index_items([item], limits, "invalid_change")[0]


class Store:
    """A named collection of records in a :class:`~idsync_client.Client`.

    Every write commits locally, with its outbox entry, before it returns:
    it survives a crash and is uploaded by the next sync. Reads see local
    writes at once.
    """

    def __init__(self, client: Client, name: str) -> None:
        self._client = client
        self.name = name

    def __repr__(self) -> str:
        return f"<Store {self.name!r}>"

    # -- writes -------------------------------------------------------------

    def add(self, value: Any, *, index: Iterable[str] = (), key: str | None = None) -> str:
        """Add a record; returns its key (a new UUID unless ``key`` is given).

        Raises ``ValueError`` for an invalid key, index item or value (and
        :class:`~idsync_client.localdb.KeyInUse` if the key was ever used here).
        """
        limits = self._client.limits
        key = str(uuid.uuid4()) if key is None else _key(key, limits, "invalid_change")
        items = _index_items(index, limits)
        value_json = encode_value(value, limits, "invalid_change")
        db = self._client._local()
        with db.transaction():
            record = db.add(self.name, key, items, value_json)
        killpoint.reached("client.write.committed")
        self._client._changed(ChangeEvent(self.name, "local", added=(record,)))
        return key

    def add_many(self, items: Iterable[Mapping[str, Any]]) -> list[str]:
        """Add many records in one transaction (the bulk API); returns their keys.

        Each item is a mapping with ``value`` and optionally ``index`` and
        ``key``. All are validated first: one bad item adds nothing.
        """
        limits = self._client.limits
        rows: list[tuple[str, tuple[str, ...], str]] = []
        new_key = uuid.uuid4
        for item in items:
            if type(item) is not dict and not isinstance(item, Mapping):
                raise TypeError("each item must be a mapping with a 'value'")
            if "value" not in item:
                raise TypeError("each item must be a mapping with a 'value'")
            if not _ITEM_FIELDS.issuperset(item):
                raise ValueError(f"unknown item fields {sorted(set(item) - _ITEM_FIELDS)}")
            key = item.get("key")
            key = str(new_key()) if key is None else _key(key, limits, "invalid_change")
            index = item.get("index")
            rows.append(
                (
                    key,
                    _index_items(index, limits) if index else (),
                    encode_value(item["value"], limits, "invalid_change"),
                )
            )
        db = self._client._local()
        with db.transaction():
            added = db.add_many(self.name, rows)
        self._client._changed(ChangeEvent(self.name, "local", added=tuple(added)))
        return [row[0] for row in rows]

    def delete(self, key: str) -> None:
        """Delete a record by key; ``KeyError`` if this store has no such record."""
        _key(key, self._client.limits)
        db = self._client._local()
        with db.transaction():
            record = db.delete(self.name, key)
        killpoint.reached("client.write.committed")
        self._client._changed(ChangeEvent(self.name, "local", deleted=(record,)))

    # -- reads --------------------------------------------------------------

    def get(self, key: str) -> Record | None:
        """The record with ``key`` (synced or pending), or None."""
        _key(key, self._client.limits)
        return self._client._local().get(self.name, key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def find(self, item: str, *, prefix: bool = False, page_size: int = 500) -> Iterator[Record]:
        """Records with index item ``item``, or with an item starting with it.

        Iterates page by page (``page_size`` rows per query), in the order the
        records arrived locally. An item the server's find would refuse (empty,
        a control character, longer than ``max_index_item_length``) raises
        :class:`~idsync_client.protocol.ProtocolViolation` (a ``ValueError``)
        here too, at the call.
        """
        # The same checks the server makes on its find endpoint: the same
        # input gets the same answer both ways, prefix or not.
        validate_index_items([arguments.text("item", item)], self._client.limits)
        if page_size < 1:
            raise ValueError("page_size must be positive")
        return self._find_pages(item, prefix, page_size)

    def _find_pages(self, item: str, prefix: bool, page_size: int) -> Iterator[Record]:
        after = 0
        while True:
            rows = self._client._local().find(self.name, item, prefix, after, page_size)
            for _, record in rows:
                yield record
            if len(rows) < page_size:
                return
            after = rows[-1][0]

    def __iter__(self) -> Iterator[Record]:
        after = 0
        while True:
            rows = self._client._local().scan(self.name, after, 500)
            for _, record in rows:
                yield record
            if len(rows) < 500:
                return
            after = rows[-1][0]

    def __len__(self) -> int:
        return self._client._local().count(self.name)

    def subscribe(self, callback: Callback, *, index: str | None = None) -> Subscription:
        """Call ``callback(event)`` after local or remote changes to this store.

        With ``index``, only changes to records carrying that index item.
        Callbacks run on the thread that made the change. TypeError if
        ``callback`` is not callable; ProtocolViolation (a ValueError) if
        ``index`` is not a valid index item (empty, a control character, too
        long): no record could ever carry it.
        """
        self._client._check_open()
        if index is not None:
            index = validate_index_items([arguments.text("index", index)], self._client.limits)[0]
        return self._client._hub.add(self.name, callback, index)

    # -- attribute records --------------------------------------------------

    def on_conflict(self, callback: ConflictCallback) -> Callable[[], None]:
        """Call ``callback(ConflictEvent)`` when a value this device set loses.

        A value set here loses when another device set the same attribute
        without having seen it and the server logged that value later (see
        :class:`~idsync_client.records.ConflictEvent`). Told once per lost
        value, by the sync that finds it (also after a restart); never for a
        value replaced by a later write here. Callbacks run like subscription
        callbacks (after the library's locks are released, on the syncing
        thread). Returns a function that unsubscribes.
        """
        self._client._check_open()
        return self._client._attributes.listen(self.name, callback)

    def set_attr(self, entity: str, name: str, value: Any) -> str:
        """Set attribute ``name`` of ``entity``: add the new value, delete the old ones.

        Returns the key of the record holding the new value. An entity or
        name the server would refuse (a control character, an index item over
        ``max_index_item_length``) raises
        :class:`~idsync_client.protocol.ProtocolViolation` and writes nothing.
        """
        item = _attr_item(entity, name, self._client.limits)
        db = self._client._local()
        with db.transaction():
            if attributes.is_deleted(db, self.name, entity):
                raise ValueError(f"entity {entity!r} was deleted")
            old = attributes.holders(db, self.name, item)
            value_json = encode_value(
                attributes.record_value(entity, name, value, db.client_id, old),
                self._client.limits,
                "invalid_change",
            )
            added = db.add(self.name, attributes.new_key(), (item,), value_json)
            deleted = tuple(db.delete(self.name, record.key) for record in old)
        self._client._changed(ChangeEvent(self.name, "local", added=(added,), deleted=deleted))
        return added.key

    def delete_entity(self, entity: str) -> bool:
        """Delete ``entity`` and all its attributes in one local transaction.

        Adds a marker record (index item ``@deleted:<entity>``) that every
        client honours: attribute records of the entity that arrive later
        (set by a device that had not seen the delete) are deleted by
        whichever client sees them. The entity cannot get attributes again
        (``set_attr`` raises ValueError). Returns False if it had no
        attributes and was already deleted.
        """
        item = _deleted_item(entity, self._client.limits)
        db = self._client._local()
        with db.transaction():
            deleted = tuple(attributes.delete_attributes(db, self.name, entity))
            added: tuple[Record, ...] = ()
            if not attributes.is_deleted(db, self.name, entity):
                value_json = encode_value(
                    attributes.marker_value(entity, db.client_id),
                    self._client.limits,
                    "invalid_change",
                )
                added = (db.add(self.name, attributes.new_key(), (item,), value_json),)
        self._client._changed(ChangeEvent(self.name, "local", added=added, deleted=deleted))
        return bool(added or deleted)

    def get_attr(self, entity: str, name: str, default: Any = None) -> Any:
        """The value of attribute ``name`` of ``entity``, or ``default`` if unset."""
        item = _attr_item(entity, name, self._client.limits)
        record = attributes.winner(attributes.holders(self._client._local(), self.name, item))
        return default if record is None else attributes.value_of(record)

    def delete_attr(self, entity: str, name: str) -> bool:
        """Unset an attribute; False if it had no value."""
        item = _attr_item(entity, name, self._client.limits)
        db = self._client._local()
        with db.transaction():
            deleted = tuple(
                db.delete(self.name, r.key) for r in attributes.holders(db, self.name, item)
            )
        self._client._changed(ChangeEvent(self.name, "local", deleted=deleted))
        return bool(deleted)

    def attrs(self, entity: str) -> dict[str, Any]:
        """Every attribute of ``entity`` with its current value (none once deleted)."""
        grouped: dict[str, list[Record]] = {}
        prefix = attributes.entity_prefix(arguments.text("entity", entity))
        validate_index_items([prefix], self._client.limits, "invalid_change")
        if attributes.is_deleted(self._client._local(), self.name, entity):
            return {}
        for record in self.find(prefix, prefix=True):
            for item in record.index:
                if item.startswith(prefix):
                    grouped.setdefault(item[len(prefix) :], []).append(record)
        return {
            name: attributes.value_of(attributes.winner(records))
            for name, records in grouped.items()
        }

    def entities(self) -> list[str]:
        """Every entity that has at least one attribute in this store and was not deleted."""
        found: set[str] = set()
        for record in self.find(attributes.PREFIX, prefix=True):
            # By the index item: another program's record there may hold any value.
            entity = attributes.entity_of(record)
            if entity is not None:
                found.add(entity)
        return sorted(found - attributes.deleted_entities(self._client._local(), self.name))
