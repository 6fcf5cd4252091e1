"""The client's local SQLite database (peewee): records, index, outbox, sync state.

Guarantees:

- A local write (record, index items, outbox entry) is one transaction.
- Reads see local writes at once: the ``records`` table is the local view,
  synced records (``seq`` set) and pending ones (``seq`` NULL) together.
- Applying a pulled page and advancing the cursor is one transaction.
- Outbox numbers (the client's change numbers) are never reused (a floor
  kept by triggers, see :mod:`.schema`), so the server's idempotency never
  confuses two changes.
- Deleted keys are remembered (``tombstones``): a pulled add of a key deleted
  here, pending or not, never brings the record back.
- The file is created at the current schema version, or migrated to it step
  by step (:mod:`.migrations`); a copy of the file takes a fresh client id at
  open (:mod:`.instance`).
- A pulled page that contradicts what this file knows of the server's
  history (another change at a known sequence number) is refused with
  ``ResetRequired``, nothing applied.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from itertools import repeat
from pathlib import Path
from typing import Any

import peewee

from . import instance, jsoncodec, migrations, schema
from .errors import ClientClosed, LocalStorageError
from .localtables import RECORD_COLUMNS as _RECORD
from .localtables import record_from_row as _record
from .protocol import prefix_upper_bound
from .pulledpages import PulledPages
from .records import KeyInUse, OutboxEntry, Record
from .schema import SCHEMA_VERSION
from .settling import CHANGE_NUMBER_CONFLICT, Settled, Settling
from .snapshotload import SnapshotReload
from .sqlitedb import open_database, root_failure

__all__ = ["CHANGE_NUMBER_CONFLICT", "LocalDB", "Settled"]

log = logging.getLogger("idsync.client")

#: The page cache of each connection, in KiB (it grows to this only when used).
_CACHE_KIB = 8 * 1024

_DRIVER_ERRORS = (peewee.PeeweeException, sqlite3.Error)

# What failed, in words an app can show, by a fragment of SQLite's message.
_STORAGE_FAILURES = (
    ("database or disk is full", "the local database file is full (no disk space or size limit)"),
    ("disk i/o error", "a disk I/O error on the local database file"),
    ("readonly database", "the local database file is read-only"),
    ("unable to open database", "cannot open the local database file"),
    ("database is locked", "the local database file stayed locked by another connection"),
    ("not a database", "the local database file is not a database (corrupt?)"),
    ("malformed", "the local database file is corrupt"),
    ("closed database", "the local database connection was closed"),
)


def storage_error(exc: BaseException, path: Path) -> LocalStorageError:
    """The LocalStorageError for a driver exception on the file at ``path``."""
    root = root_failure(exc)
    if isinstance(root, LocalStorageError):
        return root
    text = str(root).lower()
    what = next((words for frag, words in _STORAGE_FAILURES if frag in text), None)
    message = f"{what or 'the local database failed'}: {path} ({root})"
    error = LocalStorageError(message, original=root)
    error.__cause__ = root
    return error


@contextlib.contextmanager
def _wrapped(path: Path) -> Iterator[None]:
    """Turn a driver exception into a LocalStorageError (cause attached)."""
    try:
        yield
    except _DRIVER_ERRORS as exc:
        raise storage_error(exc, path)  # noqa: B904 - the cause is set to the root failure


class _SqliteFile(peewee.SqliteDatabase):
    """peewee's SqliteDatabase, remembering every thread's connection.

    peewee opens one connection per thread; :meth:`close_all` closes them all,
    whichever thread opened them (hence ``check_same_thread=False``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._open: list[sqlite3.Connection] = []
        self._open_lock = threading.Lock()

    def _initialize_connection(self, conn: sqlite3.Connection) -> None:
        super()._initialize_connection(conn)  # type: ignore[misc]
        with self._open_lock:
            self._open.append(conn)

    def _close(self, conn: sqlite3.Connection) -> None:
        with self._open_lock:
            if conn in self._open:
                self._open.remove(conn)
        conn.close()

    def close_all(self) -> None:
        """Close every connection, of every thread. Later use fails (wrapped)."""
        with self._open_lock:
            conns, self._open = self._open, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()


def _new_client_id() -> str:
    return uuid.uuid4().hex


class LocalDB(PulledPages, Settling, SnapshotReload):
    """One local database file. Safe to use from several threads and processes.

    Applying pulled pages lives in :mod:`.pulledpages`, settling upload
    outcomes in :mod:`.settling`, snapshot reloads in :mod:`.snapshotload`.

    ``synchronous`` is SQLite's durability: ``FULL`` (default) survives power
    loss after a write returns; ``NORMAL`` survives a process crash but may
    lose the last writes on power loss, and is several times faster.
    """

    def __init__(
        self, path: str | Path, synchronous: str = "FULL", busy_timeout_ms: int = 10_000
    ) -> None:
        self.path = Path(path)
        # Before anything writes (WAL mode, the sidecar): a refused file stays as it was.
        try:
            with _wrapped(self.path):
                migrations.check_file(self.path)
        except OSError as exc:  # the file cannot even be looked at (permissions, ...)
            raise LocalStorageError(
                f"cannot read the local database file: {self.path} ({exc})", original=exc
            ) from exc
        try:
            base = open_database(self.path, synchronous, busy_timeout_ms)  # makes the folder
        except OSError as exc:
            raise LocalStorageError(
                f"cannot create the folder of the local database file: {self.path} ({exc})",
                original=exc,
            ) from exc
        # The same settings, on a database that can close every thread's connection.
        # Incremental auto-vacuum first: it takes effect only on a file with
        # no tables yet (a new one); an older file switches at vacuum().
        # A larger page cache than SQLite's 2 MB: inserting 100,000 pulled
        # records reads 139,000 pages from the file with 2 MB, 51,000 with
        # 8 MB, 33,000 with 16 MB (each a system call): 8 MB saves most of
        # the reads for half the memory of 16.
        pragmas = [
            ("auto_vacuum", "incremental"),
            *base._pragmas,  # type: ignore[attr-defined]
            ("cache_size", -_CACHE_KIB),
        ]
        self.db: peewee.SqliteDatabase = _SqliteFile(
            base.database,
            pragmas=pragmas,
            timeout=base._timeout,  # type: ignore[attr-defined]
            check_same_thread=False,
        )
        self._write_lock = threading.RLock()
        self._synchronous = synchronous.upper()
        self._closed = False
        try:
            self._open()
        except BaseException:
            self.db.close_all()  # a refused or failed open keeps no connection
            raise

    # -- opening: create, migrate, bind to this file ---------------------------

    def _open(self) -> None:
        """Create a fresh file at the latest version, or migrate an older one
        step by step; refuse a newer one unchanged; then check that this file
        is not a copy (see :mod:`.instance`)."""
        with self.transaction():
            version = migrations.read_version(self.db, self.path)
            if version is None:
                schema.create_all(self.db)
                self._sql(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?), ('client_id', ?)",
                    (str(SCHEMA_VERSION), _new_client_id()),
                )
            else:
                migrations.check_supported(version, self.path)
        migrations.migrate(self.db, self.transaction, self.path)
        try:
            self._bind_to_file()
        except OSError as exc:  # the sidecar (disk full, a read-only folder, ...)
            raise LocalStorageError(
                f"cannot write the instance file beside the local database:"
                f" {instance.sidecar_path(self.path)} ({exc})",
                original=exc,
            ) from exc

    def _bind_to_file(self) -> None:
        """Check the instance marker and renew it (see :mod:`.instance`);
        OSError when the sidecar cannot be written (nothing changed then)."""
        with self.transaction():
            marker = self._meta("instance")
            # No marker yet: a fresh file, or the first open since the marker
            # exists (a migrated file); there is nothing to compare with.
            if marker is not None and not instance.is_same_file(self.path, marker):
                old = self.client_id
                self._set_meta("client_id", _new_client_id())
                log.warning(
                    "%s is a copy (or a restored backup) of a client file: client id %s"
                    " replaced by %s so that the copies never share change numbers",
                    self.path,
                    old,
                    self.client_id,
                )
            marker = instance.new_marker()
            self._set_meta("instance", marker)
            # Written while the transaction holds the file's write lock: two
            # processes opening at once cannot cross their markers.
            instance.write_sidecar(self.path, marker)

    def _meta(self, key: str) -> str | None:
        row = self._sql("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._sql(
            "INSERT INTO meta (key, value) VALUES (?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    @property
    def client_id(self) -> str:
        """The id the server knows this file's changes by (read from the file:
        another process may have replaced it)."""
        value = self._meta("client_id")
        assert value is not None
        return value

    def renew_client_id(self, used: str) -> str:
        """Take a fresh client id if the file still has ``used``; the id now.

        Called when the server says another writer sent our change numbers
        under ``used`` (a copy of this file): pending changes are sent again
        under the new id, which no copy shares.
        """
        with self.transaction():
            if self.client_id == used:
                self._set_meta("client_id", _new_client_id())
                log.warning("client id %s is shared with a copy of %s: renewed", used, self.path)
            return self.client_id

    # -- plumbing -----------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, durable: bool = True) -> Iterator[None]:
        """One write transaction (``BEGIN IMMEDIATE``); nested ones are savepoints.

        ``durable=False`` (outermost transactions only): its commit is not
        synced to disk (``synchronous=NORMAL`` for it), for what the server
        can give again, like a pulled page and its cursor. A crash of the
        process never undoes it; a power loss may, whole (WAL), and the
        next commit that syncs makes it durable too.
        """
        # Threads of this process queue here rather than in SQLite's busy
        # handler, whose sleeps grow to 100 ms and would stall the UI and sync.
        # Every driver failure leaves as LocalStorageError; SQLite rolls back by
        # itself on "disk full", so the write is wholly absent either way.
        with self._write_lock:
            self._check_open()
            relaxed = not durable and self._synchronous != "NORMAL"
            relaxed = relaxed and not self.db.in_transaction()
            if relaxed:
                self._sql("PRAGMA synchronous = NORMAL")
            try:
                with _wrapped(self.path), self.db.atomic("IMMEDIATE"):
                    yield
            finally:
                if relaxed:
                    self._restore_synchronous()

    def _restore_synchronous(self) -> None:
        try:
            self._sql(f"PRAGMA synchronous = {self._synchronous}")
        except LocalStorageError:
            # This thread's connection must not stay less durable than asked:
            # closed, the next use opens one with the file's settings.
            with contextlib.suppress(Exception):
                self.db.close()
            raise

    def _check_open(self) -> None:
        # After close_all nothing touches the file again (peewee would
        # otherwise open a fresh connection for a thread that asks).
        if self._closed:
            raise ClientClosed(f"the local database is closed: {self.path}")

    def _sql(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        self._check_open()
        with _wrapped(self.path):
            cursor: sqlite3.Cursor = self.db.execute_sql(sql, params)
        return cursor

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> int:
        return int(self._sql(sql, params).fetchone()[0])

    def _many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self._check_open()
        with _wrapped(self.path):
            self.db.connection().executemany(sql, rows)

    def vacuum(self) -> int:
        """Give the file's free pages back to the file system; returns the bytes freed.

        A file in incremental auto-vacuum mode (every file this release
        creates) frees them at once; an older file is rebuilt once by a full
        ``VACUUM``, which also switches it to incremental mode. Holds the
        write lock meanwhile (other writes of this process wait).
        """
        with self._write_lock:
            self._check_open()
            before = self.file_bytes()
            with _wrapped(self.path):
                mode = int(self.db.execute_sql("PRAGMA auto_vacuum").fetchone()[0])
                if mode == 2:  # incremental
                    self.db.execute_sql("PRAGMA incremental_vacuum").fetchall()
                else:
                    self.db.execute_sql("PRAGMA auto_vacuum = incremental")
                    self.db.execute_sql("VACUUM")
                # The WAL holds the truncated pages until a checkpoint.
                self.db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            return max(0, before - self.file_bytes())

    def file_bytes(self) -> int:
        """The size of the file with its write-ahead log, in bytes."""
        total = 0
        for path in (self.path, self.path.with_name(self.path.name + "-wal")):
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total

    def close(self) -> None:
        """Close this thread's connection (it reopens on next use)."""
        if self._closed:
            return
        with _wrapped(self.path):
            if not self.db.is_closed():
                self.db.close()

    def close_all(self) -> None:
        """Close the connections of every thread (the client is closing).

        Waits (a second at most) for a write transaction under way to end.
        """
        assert isinstance(self.db, _SqliteFile)
        locked = self._write_lock.acquire(timeout=1.0)
        try:
            self._closed = True
            self.db.close_all()
        finally:
            if locked:
                self._write_lock.release()

    # -- local writes (call inside transaction()) ---------------------------

    def add(self, store: str, key: str, index: tuple[str, ...], value_json: str) -> Record:
        """Add a pending record with its outbox entry. KeyInUse if the key was ever used."""
        index_json = jsoncodec.dumps(list(index))
        self._check_open()
        # Three statements on the connection itself: the record (unless the
        # key is tombstoned; the unique index refuses a key in the view), its
        # index rows from its index JSON, its outbox entry.
        with _wrapped(self.path):
            execute = self.db.connection().execute
            try:
                cursor = execute(
                    "INSERT INTO records (store, key, index_json, value_json) SELECT ?, ?, ?, ?"
                    " WHERE NOT EXISTS (SELECT 1 FROM tombstones WHERE store = ? AND key = ?)",
                    (store, key, index_json, value_json, store, key),
                )
            except sqlite3.IntegrityError:
                cursor = None
            if cursor is None or cursor.rowcount != 1:
                raise KeyInUse(f"key {key!r} exists or existed in store {store!r}")
            record_id = cursor.lastrowid
            if index:
                execute(
                    "INSERT INTO index_items (store, item, record_id)"
                    " SELECT ?, value, ? FROM json_each(?)",
                    (store, record_id, index_json),
                )
            execute(
                "INSERT INTO outbox (store, op, key, index_json, value_json)"
                " VALUES (?, 'add', ?, ?, ?)",
                (store, key, index_json, value_json),
            )
        return Record(key, index, value_json, None)

    def add_many(
        self, store: str, rows: Sequence[tuple[str, tuple[str, ...], str]]
    ) -> list[Record]:
        """Add many pending records at once (bulk), each with its outbox entry;
        KeyInUse if any key was used (then none is added). The records added."""
        keys = [key for key, _, _ in rows]
        if len(set(keys)) != len(keys):
            raise KeyInUse("the same key appears twice in the batch")
        if self._has("tombstones", store):
            self._raise_if_used(store, keys, "tombstones")
        indexes = [index for _, index, _ in rows]
        values = [value_json for _, _, value_json in rows]
        try:
            # A savepoint: a refused batch leaves none of its rows, also
            # inside a caller's larger transaction.
            with _wrapped(self.path), self.db.atomic():
                # Column by column, ids chosen here (inside the write
                # transaction): no Python tuple built per record.
                first = self._scalar("SELECT coalesce(max(id), 0) + 1 FROM records")
                self._many(
                    "INSERT INTO records (id, store, key, index_json, value_json)"
                    " VALUES (?, ?, ?, ?, ?)",
                    zip(
                        range(first, first + len(rows)),
                        repeat(store),
                        keys,
                        map(jsoncodec.dumps, indexes),
                        values,
                    ),
                )
                self._index_from(first)
                # The outbox entries copied from the rows just written, in
                # their order, by SQLite: nothing bound again from Python.
                self._sql(
                    "INSERT INTO outbox (store, op, key, index_json, value_json)"
                    " SELECT store, 'add', key, index_json, value_json FROM records"
                    " WHERE id >= ? ORDER BY id",
                    (first,),
                )
        except LocalStorageError as exc:
            # The (store, key) unique index refused a key the view holds:
            # named here, after the savepoint rolled back, rather than looked
            # up before every batch.
            if isinstance(exc.original, sqlite3.IntegrityError):
                self._raise_if_used(store, keys, "records")
            raise
        return list(map(Record, keys, indexes, values, repeat(None)))

    def _raise_if_used(self, store: str, keys: Sequence[str], table: str) -> None:
        """KeyInUse naming the first of ``keys`` that ``table`` holds for ``store``."""
        for chunk_start in range(0, len(keys), 500):
            chunk = keys[chunk_start : chunk_start + 500]
            used = self._sql(
                f"SELECT key FROM {table} WHERE store = ? AND key IN ({','.join('?' * len(chunk))})"
                " LIMIT 1",
                (store, *chunk),
            ).fetchone()
            if used:
                raise KeyInUse(f"key {used[0]!r} exists or existed in store {store!r}")

    def _index_new_records(self, store: str, where: str, params: Sequence[Any]) -> None:
        self._sql(
            "INSERT OR IGNORE INTO index_items (store, item, record_id)"
            " SELECT r.store, j.value, r.id FROM records r, json_each(r.index_json) j"
            f" WHERE r.store = ? AND {where}",
            (store, *params),
        )

    def delete(self, store: str, key: str) -> Record:
        """Delete a record by key with its outbox entry; KeyError if there is none."""
        row = self._sql(
            f"SELECT id, {_RECORD} FROM records WHERE store = ? AND key = ?", (store, key)
        ).fetchone()
        if row is None:
            raise KeyError(f"no record with key {key!r} in store {store!r}")
        record = _record(row[1:])
        self._remove(store, row[0], record.index)
        # Kept until the server acknowledges the delete: a delete it refuses
        # for good brings the record back (see _reject).
        self._sql(
            "INSERT OR REPLACE INTO deleted_records (store, key, index_json, value_json, seq)"
            " VALUES (?, ?, ?, ?, ?)",
            (store, key, row[2], record.value_json, record.seq),
        )
        self._sql("INSERT OR IGNORE INTO tombstones (store, key) VALUES (?, ?)", (store, key))
        self._sql("INSERT INTO outbox (store, op, key) VALUES (?, 'delete', ?)", (store, key))
        return record

    def _remove(self, store: str, record_id: int, index: Sequence[str]) -> None:
        self._remove_index(store, record_id, index)
        self._sql("DELETE FROM records WHERE id = ?", (record_id,))

    def _remove_index(self, store: str, record_id: int, index: Sequence[str]) -> None:
        # By (store, item, record_id), the index table's own key: no scan.
        self._many(
            "DELETE FROM index_items WHERE store = ? AND item = ? AND record_id = ?",
            [(store, item, record_id) for item in index],
        )

    # -- reads --------------------------------------------------------------

    def get(self, store: str, key: str) -> Record | None:
        """The record with ``key`` (synced or pending), or None."""
        row = self._sql(
            f"SELECT {_RECORD} FROM records WHERE store = ? AND key = ?", (store, key)
        ).fetchone()
        return None if row is None else _record(row)

    def find(
        self, store: str, item: str, prefix: bool, after: int, limit: int
    ) -> list[tuple[int, Record]]:
        """Records with index item ``item`` (or an item starting with it), by id."""
        params: tuple[Any, ...]
        if prefix:
            bound = prefix_upper_bound(item)
            if bound is None:  # the prefix is all U+10FFFF: nothing sorts above it
                where, params = "item >= ?", (item,)
            else:
                where, params = "item >= ? AND item < ?", (item, bound)
        else:
            where, params = "item = ?", (item,)
        rows = self._sql(
            f"SELECT r.id, {_RECORD} FROM records r WHERE r.id IN"
            f" (SELECT record_id FROM index_items WHERE store = ? AND {where} AND record_id > ?)"
            " ORDER BY r.id LIMIT ?",
            (store, *params, after, limit),
        ).fetchall()
        return [(row[0], _record(row[1:])) for row in rows]

    def scan(self, store: str, after: int, limit: int) -> list[tuple[int, Record]]:
        """Records of a store in insertion order, ``limit`` at a time."""
        rows = self._sql(
            f"SELECT id, {_RECORD} FROM records WHERE store = ? AND id > ? ORDER BY id LIMIT ?",
            (store, after, limit),
        ).fetchall()
        return [(row[0], _record(row[1:])) for row in rows]

    def count(self, store: str) -> int:
        """How many records the local view of a store holds."""
        return self._scalar("SELECT count(*) FROM records WHERE store = ?", (store,))

    # -- outbox -------------------------------------------------------------

    def pending(self, store: str, limit: int, after: int = 0) -> list[OutboxEntry]:
        """The oldest ``limit`` changes waiting to be uploaded for ``store``,
        numbered above ``after``."""
        rows = self._sql(
            "SELECT n, store, op, key, index_json, value_json FROM outbox"
            " WHERE store = ? AND n > ? ORDER BY n LIMIT ?",
            (store, after, limit),
        ).fetchall()
        return [OutboxEntry(*row) for row in rows]

    def pending_count(self, store: str | None = None) -> int:
        """Changes waiting to be uploaded (in one store, or in all)."""
        if store is None:
            return self._scalar("SELECT count(*) FROM outbox")
        return self._scalar("SELECT count(*) FROM outbox WHERE store = ?", (store,))

    # -- sync state and pulled changes ---------------------------------------

    def newest_change_number(self) -> int:
        """The greatest change number given so far (waiting in the outbox, or
        left it): it grows when any process writes into this file, and only
        then."""
        return self._scalar(
            "SELECT max(coalesce((SELECT max(n) FROM outbox), 0), (SELECT n FROM outbox_floor))"
        )

    def known_stores(self) -> list[str]:
        """Stores this database has synced or has pending changes for."""
        rows = self._sql("SELECT store FROM sync_state UNION SELECT store FROM outbox")
        return sorted(row[0] for row in rows)

    def cursor(self, store: str) -> str | None:
        """The cursor after the last pulled change of ``store``, if any."""
        row = self._sql("SELECT cursor FROM sync_state WHERE store = ?", (store,)).fetchone()
        return row[0] if row else None

    def _set_cursor(self, store: str, cursor: str) -> None:
        self._sql(
            "INSERT INTO sync_state (store, cursor) VALUES (?, ?)"
            " ON CONFLICT(store) DO UPDATE SET cursor = excluded.cursor",
            (store, cursor),
        )

    def _has(self, table: str, store: str) -> bool:
        # A first sync into an empty store skips the per-key look-ups.
        return bool(
            self._sql(f"SELECT 1 FROM {table} WHERE store = ? LIMIT 1", (store,)).fetchone()
        )

    def _insert_records(self, store: str, records: Sequence[Record]) -> int:
        """Insert records new to the local view (one executemany, and their
        index rows in one statement); the id of the first (the others follow
        it, in order)."""
        # Ids are chosen here, inside the write transaction, so that the index
        # rows can be written in one batch too.
        first: int = self._sql("SELECT coalesce(max(id), 0) + 1 FROM records").fetchone()[0]
        if not records:
            return first
        dumps = jsoncodec.dumps
        ids = range(first, first + len(records))
        self._many(
            "INSERT INTO records (id, store, key, index_json, value_json, seq)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            [
                (i, store, r.key, dumps(r.index), r.value_json, r.seq)
                for i, r in zip(ids, records, strict=True)
            ],
        )
        self._index_from(first)
        return first

    def _index_from(self, first: int) -> None:
        """Write the index rows of the records from id ``first`` on (just
        inserted) from their index JSON, by SQLite: no Python tuple per item."""
        self._sql(
            "INSERT INTO index_items (store, item, record_id)"
            " SELECT r.store, j.value, r.id FROM records r, json_each(r.index_json) j"
            " WHERE r.id >= ?",
            (first,),
        )
