"""Numbered migrations of the client file: an older file is brought up to date at open.

Step ``n`` takes a file from version ``n - 1`` to version ``n``. Each step
runs in one transaction with its version bump, so a failure (a crash, a full
disk, a bug) leaves the file at the version before the step, openable again.
A fresh file is created at :data:`~.schema.SCHEMA_VERSION` directly; a file
newer than this code is refused, unchanged (:class:`UnsupportedSchema`).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

from peewee import SqliteDatabase

from .errors import IdsyncError
from .schema import SCHEMA_VERSION

__all__ = ["STEPS", "UnsupportedSchema", "check_file", "migrate", "read_version"]

Step = Callable[[SqliteDatabase], None]


class UnsupportedSchema(IdsyncError):
    """The file is not a client file this code can open (newer, or not idsync's)."""


def _step_2(db: SqliteDatabase) -> None:
    """Own-record and own-delete markers, delete seqs, restorable deletes, re-sends."""
    for sql in (
        'ALTER TABLE "records" ADD COLUMN "own" INTEGER NOT NULL DEFAULT 0',
        'CREATE INDEX "recordrow_store_seq" ON "records" ("store", "seq")',
        'ALTER TABLE "tombstones" ADD COLUMN "own" INTEGER NOT NULL DEFAULT 0',
        'ALTER TABLE "tombstones" ADD COLUMN "seq" INTEGER',
        'CREATE INDEX "tombstonerow_store_seq" ON "tombstones" ("store", "seq")',
        'CREATE TABLE "deleted_records" ("store" TEXT NOT NULL, "key" TEXT NOT NULL,'
        ' "index_json" TEXT NOT NULL, "value_json" TEXT NOT NULL, "seq" INTEGER,'
        ' PRIMARY KEY ("store", "key")) WITHOUT ROWID',
        'ALTER TABLE "outbox" ADD COLUMN "resend" INTEGER NOT NULL DEFAULT 0',
        'ALTER TABLE "snapshot_stage" ADD COLUMN "own" INTEGER NOT NULL DEFAULT 0',
    ):
        db.execute_sql(sql)


def _step_3(db: SqliteDatabase) -> None:
    """Fewer B-trees written per local write: partial seq indexes, and an
    outbox without ``AUTOINCREMENT`` whose numbers stay above a floor."""
    # The floor starts at the AUTOINCREMENT counter, which is at or above every
    # number ever given (an entry that left the outbox included).
    floor = (
        "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0),"
        " coalesce((SELECT max(n) FROM outbox), 0), coalesce((SELECT max(n) FROM rejected), 0))"
    )
    for sql in (
        'DROP INDEX "recordrow_store_seq"',
        'CREATE INDEX "recordrow_store_seq" ON "records" ("store", "seq")'
        ' WHERE ("seq" IS NOT NULL)',
        'DROP INDEX "tombstonerow_store_seq"',
        'CREATE INDEX "tombstonerow_store_seq" ON "tombstones" ("store", "seq")'
        ' WHERE ("seq" IS NOT NULL)',
        'CREATE TABLE "outbox_floor" ("n" INTEGER NOT NULL)',
        f'INSERT INTO "outbox_floor" ("n") {floor}',
        'CREATE TABLE "outbox_v3" ("n" INTEGER NOT NULL PRIMARY KEY, "store" TEXT NOT NULL,'
        ' "op" TEXT NOT NULL, "key" TEXT NOT NULL, "index_json" TEXT, "value_json" TEXT,'
        ' "resend" INTEGER NOT NULL DEFAULT 0)',
        'INSERT INTO "outbox_v3" ("n", "store", "op", "key", "index_json", "value_json", "resend")'
        ' SELECT "n", "store", "op", "key", "index_json", "value_json", "resend" FROM "outbox"',
        'DROP TABLE "outbox"',  # with its index and its sqlite_sequence row
        'ALTER TABLE "outbox_v3" RENAME TO "outbox"',
        'CREATE INDEX "outboxrow_store_n" ON "outbox" ("store", "n")',
        'CREATE TRIGGER "outbox_raise_floor" AFTER DELETE ON "outbox"'
        ' WHEN old."n" > (SELECT "n" FROM "outbox_floor")'
        ' BEGIN UPDATE "outbox_floor" SET "n" = old."n"; END',
        'CREATE TRIGGER "outbox_above_floor" AFTER INSERT ON "outbox"'
        ' WHEN new."n" <= (SELECT "n" FROM "outbox_floor")'
        ' BEGIN UPDATE "outbox" SET "n" = (SELECT "n" FROM "outbox_floor") + 1'
        ' WHERE "n" = new."n"; END',
    ):
        db.execute_sql(sql)


def _step_4(db: SqliteDatabase) -> None:
    """A pending delete notes that the server was seen holding its record
    (``outbox.seen``), so that a refusal answered before it came back sends
    the delete again."""
    db.execute_sql('ALTER TABLE "outbox" ADD COLUMN "seen" INTEGER NOT NULL DEFAULT 0')


#: Step n brings a file from version n - 1 to n. Never edit a released step: add one.
STEPS: dict[int, Step] = {2: _step_2, 3: _step_3, 4: _step_4}


def read_version(db: SqliteDatabase, path: Path) -> int | None:
    """The file's schema version; None for an empty file (no tables yet)."""
    return _version(db.execute_sql, path)


def check_file(path: Path) -> None:
    """Refuse a file this code cannot open (not idsync's, or newer), reading only.

    Runs before the file is opened for writing: a refused file stays
    byte-identical, in its own journal mode, with no ``-wal``, ``-shm`` or
    sidecar created. Without a ``-wal`` beside it, the whole database is in
    the file and it is read as immutable (SQLite then creates nothing, not
    even for a file in WAL mode); with one, read-only. sqlite3.Error when it
    is not an SQLite database at all.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return  # a new file, or an empty one: created at open
    has_wal = path.with_name(path.name + "-wal").exists()
    uri = path.absolute().as_uri() + ("?mode=ro" if has_wal else "?immutable=1")
    conn = sqlite3.connect(uri, uri=True)
    try:
        version = _version(conn.execute, path)
    finally:
        conn.close()
    if version is not None:
        check_supported(version, path)


def _version(execute: Callable[[str], sqlite3.Cursor], path: Path) -> int | None:
    tables = {row[0] for row in execute("SELECT name FROM sqlite_master")}
    if not tables:
        return None
    row = None
    if "meta" in tables:
        row = execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None or not str(row[0]).isdigit():
        raise UnsupportedSchema(f"{path} is not an idsync client file")
    return int(row[0])


def check_supported(version: int, path: Path) -> None:
    """Raise :class:`UnsupportedSchema` for a version this code cannot migrate from."""
    if version > SCHEMA_VERSION:
        raise UnsupportedSchema(
            f"{path} has local schema version {version}; this client knows version "
            f"{SCHEMA_VERSION} (a newer release made it: upgrade idsync to open it)"
        )
    if version < 1:
        raise UnsupportedSchema(f"{path} has an unknown local schema version {version}")


def migrate(
    db: SqliteDatabase,
    transaction: Callable[[], contextlib.AbstractContextManager[None]],
    path: Path,
) -> list[int]:
    """Run the missing steps, each in its own ``transaction()``; the steps run.

    The version is read again inside each transaction, so two processes
    opening an old file at once run every step exactly once.
    """
    done: list[int] = []
    for target in _targets():
        with transaction():
            version = read_version(db, path)
            assert version is not None
            check_supported(version, path)
            if version >= target:
                continue
            if version != target - 1:
                raise UnsupportedSchema(f"{path}: no migration from version {version}")
            STEPS[target](db)
            db.execute_sql("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(target),))
            done.append(target)
    return done


def _targets() -> Iterator[int]:
    return iter(range(2, SCHEMA_VERSION + 1))
