"""The SQLite server database's numbered migrations and how the runner reaches the file.

Version 1 is release 0.1.0's schema. Each step below turns version N-1 into
N inside one ``BEGIN IMMEDIATE`` transaction (SQLite's DDL is transactional),
committed together with the version bump by :func:`.migrations.migrate`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from peewee import SqliteDatabase

from idsync_client import jsoncodec
from idsync_client.protocol import Change

from . import client_runs
from .accounts_schema import SQLITE_TABLES, create_tables
from .base import StorageFailure
from .equality import LEGACY_PREFIX, change_hash, legacy_change_hash
from .migrations import Migration, latest_version, refuse_unknown_version
from .sqlite_schema import ALL_MODELS


class SqliteSchemaTarget:
    """The server's SQLite file as the migration runner sees it."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    @contextlib.contextmanager
    def transaction(self) -> Iterator[SqliteDatabase]:
        """A ``BEGIN IMMEDIATE`` transaction: other processes wait, then see the result."""
        with self.db.atomic("IMMEDIATE"):
            yield self.db

    def read_version(self, handle: SqliteDatabase) -> int | None:
        """The ``meta`` table's schema version; None when the file has no tables yet."""
        tables = {row[0] for row in handle.execute_sql("SELECT name FROM sqlite_master")}
        if "meta" not in tables:
            if any(not name.startswith("sqlite_") for name in tables):
                raise StorageFailure(
                    f"{handle.database} holds tables but no schema version:"
                    " not an idsync server database"
                )
            return None
        row = handle.execute_sql("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None or not str(row[0]).isdigit():
            raise StorageFailure(f"{handle.database} has no readable schema version")
        return int(row[0])

    def create_latest(self, handle: SqliteDatabase) -> None:
        """Create the tables the models describe."""
        with handle.bind_ctx(ALL_MODELS):
            handle.create_tables(ALL_MODELS)
        create_tables(handle, SQLITE_TABLES)

    def write_version(self, handle: SqliteDatabase, version: int) -> None:
        """Store ``version`` in ``meta``."""
        handle.execute_sql(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
            (str(version),),
        )


# Idempotency rows re-hashed per round trip of the migration.
_PAGE = 5000


def _tag_log_entries(db: SqliteDatabase) -> None:
    """Add ``changes.tag`` and draw one for every existing entry.

    Cursors issued before this step carry no tag; the server answers them
    ``reset_required`` past seq 0, once per client.
    """
    db.execute_sql("ALTER TABLE changes ADD COLUMN tag INTEGER NOT NULL DEFAULT 0")
    # SQLite's random() is seeded from the operating system; the tag needs
    # only to differ from those a restored copy will draw later.
    db.execute_sql("UPDATE changes SET tag = random() & 0x7fffffffffffffff")


def _recovered_body(op: str, key: str, index_json: str | None, value_json: str | None) -> Change:
    if op == "delete":
        return Change(0, "delete", key)
    assert index_json is not None and value_json is not None
    return Change(0, "add", key, tuple(jsoncodec.loads(index_json)), value_json)


def _rehash_client_changes(db: SqliteDatabase) -> None:
    """Re-hash the idempotency rows with the unambiguous encoding.

    Schema 1 hashed index items joined by a comma (``["a","b"]`` and
    ``["a,b"]`` alike). Where the body is in the log, the row is hashed again:
    for an ``applied`` row the entry at its seq is the change itself; for a
    ``duplicate`` row it is the add or delete the change repeated. A body
    recovered so is taken only when its schema-1 hash is the stored one (a
    duplicate add may have differed from the logged add in object member
    order, which schema 1 hashed apart).

    The other rows (``rejected`` outcomes, whose body was never stored, and
    duplicate adds whose text differed) keep their schema-1 hash, marked
    ``v1:``: a replay of such a change number is compared with the schema-1
    encoding of the incoming change, so it is answered exactly as before. The
    comma ambiguity therefore remains for those rows only: a change number
    first rejected before the upgrade, re-used for another change whose
    index items join to the same text, gets the old rejection again.

    Rows are read in pages along the primary key, so memory stays flat on a
    large file.
    """
    last: tuple[int, str, int] = (-1, "", -1)
    while True:
        rows = db.execute_sql(
            "SELECT cc.store_id, cc.client_id, cc.n, cc.body_hash,"
            " c.op, c.key, c.index_json, c.value_json"
            " FROM client_changes cc LEFT JOIN changes c"
            " ON c.store_id = cc.store_id AND c.seq = cc.seq AND cc.status != 'rejected'"
            " WHERE (cc.store_id, cc.client_id, cc.n) > (?, ?, ?)"
            " ORDER BY cc.store_id, cc.client_id, cc.n LIMIT ?",
            (*last, _PAGE),
        ).fetchall()
        if not rows:
            return
        updates: list[tuple[str, int, str, int]] = []
        for store_id, client_id, n, old_hash, op, key, index_json, value_json in rows:
            new_hash = LEGACY_PREFIX + old_hash
            if op is not None:  # the log entry at the row's seq (never for a rejection)
                body = _recovered_body(op, key, index_json, value_json)
                if legacy_change_hash(body) == old_hash:
                    new_hash = change_hash(body)
            updates.append((new_hash, store_id, client_id, n))
        db.connection().executemany(
            "UPDATE client_changes SET body_hash = ?"
            " WHERE store_id = ? AND client_id = ? AND n = ?",
            updates,
        )
        last = rows[-1][:3]


def _step2(db: SqliteDatabase) -> None:
    _tag_log_entries(db)
    _rehash_client_changes(db)


def _step3(db: SqliteDatabase) -> None:
    """Retention, compaction and dropped stores.

    Log entries get the time they were logged; entries from before get the
    time of the upgrade (a constant default: no rewrite of the log), so
    their retention counts from then. The switch to incremental
    auto-vacuum needs a ``VACUUM``, which cannot run inside a transaction:
    :func:`switch_to_incremental_vacuum` does it right after the steps.
    """
    db.execute_sql(
        f"ALTER TABLE changes ADD COLUMN logged_at REAL NOT NULL DEFAULT {time.time()!r}"
    )
    db.execute_sql("ALTER TABLE stores ADD COLUMN retention_seconds INTEGER")
    db.execute_sql("ALTER TABLE stores ADD COLUMN horizon_tag INTEGER")
    db.execute_sql(
        "CREATE TABLE dropped_stores (name TEXT NOT NULL PRIMARY KEY, epoch TEXT NOT NULL,"
        " dropped_at REAL NOT NULL)"
    )


def _step4(db: SqliteDatabase) -> None:
    create_tables(db, SQLITE_TABLES)


def _step5(db: SqliteDatabase) -> None:
    """Idempotency rows per run of change numbers instead of one per change.

    Each client's rows are read in the order of their numbers, in pages
    (memory stays flat on a large file), cut into runs by the same rule a
    push uses (:func:`.client_runs.pack`), and stored as they were: hashes
    (``v1:`` ones too), outcomes, codes and messages. Rows are stored up to
    the start of a client's last run read so far, which the next page may
    continue: the runs are those one pass over all the rows would cut.
    """
    db.execute_sql(
        "CREATE TABLE client_batches (store_id INTEGER NOT NULL, client_id TEXT NOT NULL,"
        " last_n INTEGER NOT NULL, first_n INTEGER NOT NULL, outcomes TEXT NOT NULL,"
        " PRIMARY KEY (store_id, client_id, last_n)) WITHOUT ROWID"
    )
    last: tuple[int, str, int] = (-1, "", -1)
    pending: list[tuple[Any, ...]] = []  # one client's rows not yet stored
    while True:
        rows = db.execute_sql(
            "SELECT store_id, client_id, n, body_hash, status, seq, code, message"
            " FROM client_changes WHERE (store_id, client_id, n) > (?, ?, ?)"
            " ORDER BY store_id, client_id, n LIMIT ?",
            (*last, _PAGE),
        ).fetchall()
        for row in rows:
            if pending and pending[-1][:2] != row[:2]:
                _store_runs(db, pending)
                pending = []
            pending.append(row)
        if not rows:
            _store_runs(db, pending)
            break
        last = rows[-1][:3]
        if len(pending) > client_runs.RUN_SIZE:
            # Store all but the last run: it may go on in the next page.
            cut = _last_run_start(pending)
            _store_runs(db, pending[:cut])
            pending = pending[cut:]
    db.execute_sql("DROP TABLE client_changes")


def _last_run_start(rows: list[tuple[Any, ...]]) -> int:
    """Where the last run of one client's rows (sorted by number) begins."""
    *_, last_run = client_runs.runs(row[2] for row in rows)
    return len(rows) - len(last_run)


def _store_runs(db: SqliteDatabase, rows: list[tuple[Any, ...]]) -> None:
    if not rows:
        return
    store_id, client_id = rows[0][:2]
    db.connection().executemany(
        "INSERT INTO client_batches (store_id, client_id, last_n, first_n, outcomes)"
        " VALUES (?, ?, ?, ?, ?)",
        [(store_id, client_id, *run) for run in client_runs.pack([row[2:] for row in rows])],
    )


#: The steps, in order; step N leads from version N-1 to N.
STEPS: list[Migration[SqliteDatabase]] = [
    Migration(2, "tag every log entry; re-hash idempotency rows unambiguously", _step2),
    Migration(3, "log entry times, store retention, horizon tags, dropped stores", _step3),
    Migration(4, "users, tokens (as hashes) and store access", _step4),
    Migration(5, "idempotency rows per run of change numbers", _step5),
]


def switch_to_incremental_vacuum(db: SqliteDatabase) -> bool:
    """Rebuild a file made before schema 3 with ``auto_vacuum=INCREMENTAL``; True if it did.

    New files get the mode at creation (the pragma is set before the first
    table). An older file needs one ``VACUUM`` (outside any transaction; it
    rewrites the file, so it needs free space about the file's size). A
    server killed during it leaves the file as it was, and the next open
    does it again.
    """
    if db.execute_sql("PRAGMA auto_vacuum").fetchone()[0] == 2:
        return False
    db.execute_sql("PRAGMA auto_vacuum = INCREMENTAL")
    db.execute_sql("VACUUM")
    return True


def check_before_opening(path: Path, steps: Sequence[Migration[SqliteDatabase]]) -> None:
    """Refuse a file this server must not open, reading it only.

    Opening for real switches the file to WAL before the schema can be read;
    a file that is then refused (newer than this code, another program's
    database, not a database at all) must be left exactly as it was, so it
    is checked first through a read-only connection. A missing or empty
    file passes: it becomes a new database.
    """
    if not path.exists() or path.stat().st_size == 0:
        return
    reader = SqliteDatabase(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        with reader.connection_context():
            version = SqliteSchemaTarget(reader).read_version(reader)
    finally:
        reader.close()
    if version is not None:
        refuse_unknown_version(version, latest_version(steps), str(path))
