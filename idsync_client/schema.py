"""The client's local schema, as peewee models.

:mod:`.localdb` queries these tables with plain SQL on its hot paths.
"""

from __future__ import annotations

from peewee import SQL, CompositeKey, FloatField, IntegerField, Model, Node, TextField
from playhouse.sqlite_ext import AutoIncrementField

#: The version of the tables below. A fresh file is created at this version;
#: an older file is brought to it by the numbered steps in :mod:`.migrations`
#: (add a step with every change here); a newer file is refused.
SCHEMA_VERSION = 2

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
        indexes = ((("store", "key"), True), (("store", "seq"), False))


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
        indexes = ((("store", "seq"), False),)


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

    ``resend`` is 1 for a change sent again after a reset (the app acknowledged
    it long ago): if the server refuses it, that is settled quietly.
    """

    n = AutoIncrementField()
    store = TextField()
    op = TextField()
    key = TextField()
    index_json = TextField(null=True)
    value_json = TextField(null=True)
    resend = IntegerField(constraints=_ZERO)

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
    own = IntegerField(constraints=_ZERO)

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
    DeletedRecordRow,
    OutboxRow,
    RejectedRow,
    SnapshotStageRow,
]
