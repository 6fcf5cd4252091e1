"""The server's SQLite schema, as peewee models.

The models define the tables and their indexes; the hot paths in
:mod:`.sqlite` query them with plain SQL through the same connection.
"""

from __future__ import annotations

from peewee import (
    AutoField,
    CompositeKey,
    FloatField,
    IntegerField,
    Model,
    TextField,
)

#: The version these models describe. Each change of the tables comes with a
#: numbered step in :mod:`.sqlite_migrations` that leads an older file here.
SCHEMA_VERSION = 5


class BaseModel(Model):
    """Models bound to the server database at open time."""


class MetaRow(BaseModel):
    """Facts about the database file itself (``schema_version``)."""

    key = TextField(primary_key=True)
    value = TextField()

    class Meta:
        table_name = "meta"


class StoreRow(BaseModel):
    """A store: its name, current epoch, head sequence and counters."""

    id = AutoField()
    name = TextField(unique=True)
    epoch = TextField()
    head_seq = IntegerField(default=0)
    horizon_seq = IntegerField(default=0)
    live_records = IntegerField(default=0)
    log_length = IntegerField(default=0)
    created_at = FloatField()
    #: Seconds deleted records' log entries are kept; NULL: the server's default.
    retention_seconds = IntegerField(null=True)
    #: The tag of the log entry at ``horizon_seq`` once compaction removed it,
    #: so that a cursor naming it stays valid.
    horizon_tag = IntegerField(null=True)

    class Meta:
        table_name = "stores"


class DroppedStoreRow(BaseModel):
    """A dropped store's name, remembered so that it is not re-created by accident."""

    name = TextField(primary_key=True)
    epoch = TextField()
    dropped_at = FloatField()

    class Meta:
        table_name = "dropped_stores"


class ChangeRow(BaseModel):
    """One entry of a store's append-only change log.

    ``tag`` is drawn at random when the entry is logged (0 to 2**63-1, sent
    in hex): cursors name it, so a cursor is only accepted on the history
    that issued it.
    """

    store_id = IntegerField()
    seq = IntegerField()
    op = TextField()
    key = TextField()
    index_json = TextField(null=True)
    value_json = TextField(null=True)
    tag = IntegerField()
    #: When the entry was logged (Unix time): compaction keeps it for the retention.
    logged_at = FloatField()

    class Meta:
        table_name = "changes"
        primary_key = CompositeKey("store_id", "seq")
        without_rowid = True


class RecordRow(BaseModel):
    """Current state: every key a store ever had; ``deleted_seq`` marks deletion.

    The content (index items, value) is not copied here: it is read from the
    log entry at ``added_seq``, which is kept while the record lives.
    """

    id = AutoField()
    store_id = IntegerField()
    key = TextField()
    added_seq = IntegerField()
    deleted_seq = IntegerField(null=True)

    class Meta:
        table_name = "records"
        indexes = (
            (("store_id", "key"), True),
            (("store_id", "added_seq"), False),
        )


class IndexItemRow(BaseModel):
    """An index item of a live record; points at the record's integer id."""

    store_id = IntegerField()
    item = TextField()
    record_id = IntegerField()

    class Meta:
        table_name = "index_items"
        primary_key = CompositeKey("store_id", "item", "record_id")
        without_rowid = True


class ClientBatchRow(BaseModel):
    """What a run of a client's numbered changes did, so a retried upload is answered the same.

    ``outcomes`` is the JSON list of ``[n, body_hash, status, seq, code,
    message]`` of the numbers ``first_n`` to ``last_n`` stored together
    (:mod:`.client_runs`). ``body_hash`` is :func:`.equality.change_hash` of
    the change, or a schema-1 hash marked ``v1:`` for rows whose body could
    not be recovered when the file was migrated.
    """

    store_id = IntegerField()
    client_id = TextField()
    last_n = IntegerField()
    first_n = IntegerField()
    outcomes = TextField()

    class Meta:
        table_name = "client_batches"
        primary_key = CompositeKey("store_id", "client_id", "last_n")
        without_rowid = True


ALL_MODELS: list[type[BaseModel]] = [
    MetaRow,
    StoreRow,
    DroppedStoreRow,
    ChangeRow,
    RecordRow,
    IndexItemRow,
    ClientBatchRow,
]
