"""The client's local schema, as peewee models.

:mod:`.localdb` queries these tables with plain SQL on its hot paths.
"""

from __future__ import annotations

from peewee import (
    SQL,
    CompositeKey,
    Database,
    FloatField,
    IntegerField,
    Model,
    Node,
    TextField,
)
from playhouse.sqlite_ext import AutoIncrementField

#: The version of the tables below. A fresh file is created at this version;
#: an older file is brought to it by the numbered steps in :mod:`.migrations`
#: (add a step with every change here); a newer file is refused.
SCHEMA_VERSION = 4

_ZERO: list[Node] = [SQL("DEFAULT 0")]


class BaseModel(Model):
    """Models bound to the local database at open time."""


class MetaRow(BaseModel):
    """Facts about the file: ``schema_version``, this client's ``client_id``, and
    ``instance``, the marker that tells a copy of the file from the file itself."""

    key = TextField(primary_key=True)
    value = TextField()

    class Meta:
        table_name = "meta"


class SyncStateRow(BaseModel):
    """Per store: the cursor after the last pulled change."""

    store = TextField(primary_key=True)
    cursor = TextField(null=True)

    class Meta:
        table_name = "sync_state"


class RecordRow(BaseModel):
    """The local view: synced records (``seq`` set) and pending local adds.

    ``own`` is 1 for a record this client added and the server acknowledged
    (set at settle time): after a reset, the ones the server lacks are sent again.
    The ``(store, seq)`` index holds synced records only: a local add writes
    no entry in it (one B-tree page less per durable write).
    """

    id = IntegerField(primary_key=True)
    store = TextField()
    key = TextField()
    index_json = TextField()
    value_json = TextField()
    seq = IntegerField(null=True)
    own = IntegerField(constraints=_ZERO)

    class Meta:
        table_name = "records"
        indexes = ((("store", "key"), True),)


class IndexItemRow(BaseModel):
    """An index item of a record in the local view; points at the record's id."""

    store = TextField()
    item = TextField()
    record_id = IntegerField()

    class Meta:
        table_name = "index_items"
        primary_key = CompositeKey("store", "item", "record_id")
        without_rowid = True


class TombstoneRow(BaseModel):
    """A key deleted in this store (here or on the server): never shown again.

    ``seq`` is where the server logged the delete, when known; ``own`` is 1
    for a delete this client made and the server acknowledged (sent again
    after a reset if the server lost it).
    """

    store = TextField()
    key = TextField()
    own = IntegerField(constraints=_ZERO)
    seq = IntegerField(null=True)

    class Meta:
        table_name = "tombstones"
        primary_key = CompositeKey("store", "key")
        without_rowid = True


class DeletedRecordRow(BaseModel):
    """A record deleted here whose delete the server has not acknowledged yet.

    Kept so that a delete the server refuses for good brings the record back.
    """

    store = TextField()
    key = TextField()
    index_json = TextField()
    value_json = TextField()
    seq = IntegerField(null=True)

    class Meta:
        table_name = "deleted_records"
        primary_key = CompositeKey("store", "key")
        without_rowid = True


class OutboxRow(BaseModel):
    """A local change waiting for upload; ``n`` is its change number, never reused.

    ``n`` is the rowid: a new entry takes the greatest ``n`` in the table plus
    one, and the triggers of :data:`TRIGGERS` lift it above
    :class:`OutboxFloorRow` when the entries above the floor have left. Unlike
    ``AUTOINCREMENT``, whose counter row is written by every insert, nothing
    but the entry itself is written when a change is queued.

    ``resend`` is 1 for a change sent again after a reset (the app acknowledged
    it long ago): if the server refuses it, that is settled quietly.

    ``seen`` is 1 for a delete once the server was seen holding its record
    while the delete waited (a pulled add, or the snapshot of the latest
    reset): a refusal ``key_not_found``, answered before the record came
    back, then sends the delete again.
    """

    n = IntegerField(primary_key=True)
    store = TextField()
    op = TextField()
    key = TextField()
    index_json = TextField(null=True)
    value_json = TextField(null=True)
    resend = IntegerField(constraints=_ZERO)
    seen = IntegerField(constraints=_ZERO)

    class Meta:
        table_name = "outbox"
        indexes = ((("store", "n"), False),)


class OutboxFloorRow(BaseModel):
    """One row: the greatest change number that has left the outbox (settled,
    rejected or dropped); no change number at or below it is given again.

    Written when entries leave the outbox (by the trigger of
    :data:`TRIGGERS`), never when one is queued.
    """

    n = IntegerField()

    class Meta:
        table_name = "outbox_floor"
        primary_key = False


class RejectedRow(BaseModel):
    """A change the server refused for good, kept until the app dismisses it."""

    id = AutoIncrementField()
    n = IntegerField()
    store = TextField()
    op = TextField()
    key = TextField()
    index_json = TextField(null=True)
    value_json = TextField(null=True)
    code = TextField()
    message = TextField()
    at = FloatField()

    class Meta:
        table_name = "rejected"


class SnapshotStageRow(BaseModel):
    """Snapshot pages being loaded during a reset, before they replace the synced view."""

    store = TextField()
    key = TextField()
    index_json = TextField()
    value_json = TextField()
    seq = IntegerField()
    own = IntegerField(constraints=_ZERO)

    class Meta:
        table_name = "snapshot_stage"
        primary_key = CompositeKey("store", "key")
        without_rowid = True


# Partial: pending records (no seq yet) and tombstones of unacknowledged
# deletes take no entry; every query on seq compares it, which implies NOT NULL.
RecordRow.add_index(RecordRow.index(RecordRow.store, RecordRow.seq, where=RecordRow.seq.is_null(False)))
TombstoneRow.add_index(
    TombstoneRow.index(TombstoneRow.store, TombstoneRow.seq, where=TombstoneRow.seq.is_null(False))
)

#: Keep outbox numbers above every number that left the outbox. An entry
#: leaving raises the floor; an entry queued at or below the floor (the
#: entries above it have all left, so the table's greatest n + 1 is too low)
#: moves to the floor + 1, which no entry holds. Every insert and delete of
#: the outbox goes through them, whichever code runs it.
TRIGGERS = (
    'CREATE TRIGGER "outbox_raise_floor" AFTER DELETE ON "outbox"'
    ' WHEN old."n" > (SELECT "n" FROM "outbox_floor")'
    ' BEGIN UPDATE "outbox_floor" SET "n" = old."n"; END',
    'CREATE TRIGGER "outbox_above_floor" AFTER INSERT ON "outbox"'
    ' WHEN new."n" <= (SELECT "n" FROM "outbox_floor")'
    ' BEGIN UPDATE "outbox" SET "n" = (SELECT "n" FROM "outbox_floor") + 1'
    ' WHERE "n" = new."n"; END',
)

ALL_MODELS: list[type[BaseModel]] = [
    MetaRow,
    SyncStateRow,
    RecordRow,
    IndexItemRow,
    TombstoneRow,
    DeletedRecordRow,
    OutboxRow,
    OutboxFloorRow,
    RejectedRow,
    SnapshotStageRow,
]


def create_all(db: Database) -> None:
    """Create every table, index and trigger of a fresh file (inside its
    first transaction), with the outbox floor at 0."""
    with db.bind_ctx(ALL_MODELS):
        db.create_tables(ALL_MODELS)
    for sql in TRIGGERS:
        db.execute_sql(sql)
    db.execute_sql('INSERT INTO "outbox_floor" ("n") VALUES (0)')
