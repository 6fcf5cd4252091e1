"""The server's PostgreSQL schema and its numbered migrations.

The PostgreSQL history starts at schema version 2 (the SQLite schema of the
same release): there is no older PostgreSQL database to migrate. Later
changes come as numbered steps in :data:`STEPS`, run by the same runner as
SQLite's (:func:`.migrations.migrate`).

Every integer that can hold a sequence number, a tag or a count is
``BIGINT``. Index items are ``COLLATE "C"``: prefix queries rely on code
point order (see :func:`idsync_client.protocol.prefix_upper_bound`), which
the database's own collation need not follow.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from peewee import PostgresqlDatabase

from .accounts_schema import POSTGRESQL_TABLES, create_tables
from .base import StorageFailure
from .migrations import Migration

#: The first version of the PostgreSQL history; its tables are created as such.
BASE_VERSION = 2

#: Taken by a migrating process (``pg_advisory_xact_lock``), so that several
#: processes opening one old database migrate it once.
MIGRATION_LOCK = 0x1D5_7AC0

TABLES = [
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE stores ("
    " id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL UNIQUE, epoch TEXT NOT NULL,"
    " head_seq BIGINT NOT NULL DEFAULT 0, horizon_seq BIGINT NOT NULL DEFAULT 0,"
    " live_records BIGINT NOT NULL DEFAULT 0, log_length BIGINT NOT NULL DEFAULT 0,"
    " created_at DOUBLE PRECISION NOT NULL, retention_seconds BIGINT, horizon_tag BIGINT)",
    "CREATE TABLE changes ("
    " store_id BIGINT NOT NULL, seq BIGINT NOT NULL, op TEXT NOT NULL, key TEXT NOT NULL,"
    " index_json TEXT, value_json TEXT, tag BIGINT NOT NULL,"
    " logged_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (store_id, seq))",
    "CREATE TABLE records ("
    " id BIGSERIAL PRIMARY KEY, store_id BIGINT NOT NULL, key TEXT NOT NULL,"
    " added_seq BIGINT NOT NULL, deleted_seq BIGINT, UNIQUE (store_id, key))",
    "CREATE INDEX records_store_added ON records (store_id, added_seq)",
    "CREATE TABLE index_items ("
    ' store_id BIGINT NOT NULL, item TEXT COLLATE "C" NOT NULL, record_id BIGINT NOT NULL,'
    " PRIMARY KEY (store_id, item, record_id))",
    "CREATE TABLE client_changes ("
    " store_id BIGINT NOT NULL, client_id TEXT NOT NULL, n BIGINT NOT NULL,"
    " body_hash TEXT NOT NULL, status TEXT NOT NULL, seq BIGINT, code TEXT, message TEXT,"
    " PRIMARY KEY (store_id, client_id, n))",
    "CREATE TABLE dropped_stores (name TEXT PRIMARY KEY, epoch TEXT NOT NULL,"
    " dropped_at DOUBLE PRECISION NOT NULL)",
]


class PostgresqlSchemaTarget:
    """A PostgreSQL database as the migration runner sees it (the current schema)."""

    def __init__(self, db: PostgresqlDatabase) -> None:
        self.db = db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[PostgresqlDatabase]:
        """A transaction holding the migration lock: other processes wait, then see the result."""
        with self.db.atomic():
            self.db.execute_sql("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            yield self.db

    def read_version(self, handle: PostgresqlDatabase) -> int | None:
        """The ``meta`` table's schema version; None when the schema has no tables yet."""
        tables = set(handle.get_tables())
        if "meta" not in tables:
            if tables:
                raise StorageFailure(
                    "the database holds tables but no schema version: not an idsync server database"
                )
            return None
        row = handle.execute_sql("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None or not str(row[0]).isdigit():
            raise StorageFailure("the database has no readable schema version")
        return int(row[0])

    def create_latest(self, handle: PostgresqlDatabase) -> None:
        """Create every table and index (PostgreSQL's DDL is transactional)."""
        for statement in TABLES:
            handle.execute_sql(statement)
        create_tables(handle, POSTGRESQL_TABLES)

    def write_version(self, handle: PostgresqlDatabase, version: int) -> None:
        """Store ``version`` in ``meta``."""
        handle.execute_sql(
            "INSERT INTO meta (key, value) VALUES ('schema_version', %s)"
            " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            (str(version),),
        )


def _step3(db: PostgresqlDatabase) -> None:
    """Retention, compaction and dropped stores (as SQLite's step 3).

    Entries logged before get the time of the upgrade (a constant default:
    PostgreSQL adds such a column without rewriting the table).
    """
    db.execute_sql(
        "ALTER TABLE changes ADD COLUMN logged_at DOUBLE PRECISION NOT NULL"
        f" DEFAULT {time.time()!r}"
    )
    db.execute_sql("ALTER TABLE changes ALTER COLUMN logged_at DROP DEFAULT")
    db.execute_sql("ALTER TABLE stores ADD COLUMN retention_seconds BIGINT")
    db.execute_sql("ALTER TABLE stores ADD COLUMN horizon_tag BIGINT")
    db.execute_sql(TABLES[-1])


def _step4(db: PostgresqlDatabase) -> None:
    create_tables(db, POSTGRESQL_TABLES)


#: The steps, in order; step N leads from version N-1 to N.
STEPS: list[Migration[PostgresqlDatabase]] = [
    Migration(3, "log entry times, store retention, horizon tags, dropped stores", _step3),
    Migration(4, "users, tokens (as hashes) and store access", _step4),
]
