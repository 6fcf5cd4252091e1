"""The client's local schema, as peewee models.

:mod:`.localdb` queries these tables with plain SQL on its hot paths.
"""

from __future__ import annotations

from peewee import CompositeKey, FloatField, IntegerField, Model, TextField
from playhouse.sqlite_ext import AutoIncrementField

#: Bump when the tables change; a file of another version is refused at open.
SCHEMA_VERSION = 1


class BaseModel(Model):
    """Models bound to the local database at open time."""


class MetaRow(BaseModel):
    """Facts about the file: ``schema_version`` and this client's stable ``client_id``."""

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
    """The local view: synced records (``seq`` set) and pending local adds."""

    id = IntegerField(primary_key=True)
    store = TextField()
    key = TextField()
    index_json = TextField()
    value_json = TextField()
    seq = IntegerField(null=True)

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
    """A key deleted in this store (here or on the server): never shown again."""

    store = TextField()
    key = TextField()

    class Meta:
        table_name = "tombstones"
        primary_key = CompositeKey("store", "key")
        without_rowid = True


class OutboxRow(BaseModel):
    """A local change waiting for upload; ``n`` is its change number, never reused."""

    n = AutoIncrementField()
    store = TextField()
    op = TextField()
    key = TextField()
    index_json = TextField(null=True)
    value_json = TextField(null=True)

    class Meta:
        table_name = "outbox"
        indexes = ((("store", "n"), False),)


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

    class Meta:
        table_name = "snapshot_stage"
        primary_key = CompositeKey("store", "key")
        without_rowid = True


ALL_MODELS: list[type[BaseModel]] = [
    MetaRow,
    SyncStateRow,
    RecordRow,
    IndexItemRow,
    TombstoneRow,
    OutboxRow,
    RejectedRow,
    SnapshotStageRow,
]
