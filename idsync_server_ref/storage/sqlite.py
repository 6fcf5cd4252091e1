"""SQLite storage backend (the default): one file, WAL, ``synchronous=FULL``.

SQLite allows one writer at a time, so sequence numbers are handed out inside
a write transaction (``BEGIN IMMEDIATE``) and a reader can never see seq N+1
before seq N: the change log has no gaps to skip. Opening a file migrates it
to the current schema (:mod:`.sqlite_migrations`).
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from peewee import OperationalError, PeeweeException

from idsync_client import jsoncodec, killpoint
from idsync_client.protocol import Change, Cursor, Outcome, prefix_upper_bound
from idsync_client.sqlitedb import open_database, root_failure

from . import client_runs, sqlite_history, sqlite_migrations
from .accounts import AccountStore
from .accounts_sql import SqlAccounts
from .base import (
    DEFAULT_RETENTION_SECONDS,
    ChangeListener,
    CompactionReport,
    FindPage,
    Page,
    SnapshotPage,
    Storage,
    StorageBusy,
    StorageFailure,
    StoreDropped,
    StoreExists,
    StoreInfo,
    StoreNotFound,
)
from .json_text import fill_page, record_json, tag_text
from .listeners import Listeners
from .migrations import migrate
from .push_rules import KnownRecord, PushBatch
from .sqlite_history import CHUNK, CONTENT
from .store_rows import check_cursor, store_info

_CHANGE_JSON = (
    'CASE op WHEN \'add\' THEN \'{"seq":\' || seq || \',"op":"add","key":\' || json_quote(key)'
    " || ',\"index\":' || index_json || ',\"value\":' || value_json || '}'"
    ' ELSE \'{"seq":\' || seq || \',"op":"delete","key":\' || json_quote(key) || \'}\' END'
)
# A store's figures and the tag of the entry at its head (kept in the store's
# row when compaction removed that entry).
_STORE_INFO = (
    "SELECT s.name, s.epoch, s.head_seq, s.horizon_seq, s.live_records, s.log_length,"
    " s.created_at, coalesce(h.tag, CASE WHEN s.head_seq = s.horizon_seq THEN s.horizon_tag END),"
    " s.retention_seconds FROM stores s"
    " LEFT JOIN changes h ON h.store_id = s.id AND h.seq = s.head_seq"
)

# Per connection. A push batch inserts at random places in the key index and
# the index items (keys and items are not ordered by arrival): at 100,000
# records one batch of 1,000 changes dirties about 1,600 pages. With SQLite's
# default checkpoint at 1,000 WAL pages every such commit was followed by a
# checkpoint writing the same hot pages back into the file; at 10,000 pages
# (40 MB of WAL) they are copied back once per several batches. Durability
# is unchanged: each commit still syncs the WAL. The page cache (16 MiB
# instead of 2) holds those indexes' pages between batches.
_TUNING = [("wal_autocheckpoint", 10_000), ("cache_size", -16 * 1024)]


class SqliteStorage(Storage):
    """The SQLite backend. ``path`` is created if missing (with its folder).

    ``busy_timeout_ms`` is how long a write waits for the lock before the
    request is answered 503 ``storage_busy``.
    """

    def __init__(self, path: str | Path, busy_timeout_ms: int = 5000) -> None:
        self.path = Path(path)
        self._write_lock = threading.Lock()
        # Every thread's connection, so that close() closes them all; a
        # thread that is gone no longer holds its entry.
        self._connections: weakref.WeakKeyDictionary[threading.Thread, Any] = (
            weakref.WeakKeyDictionary()
        )
        self._connections_lock = threading.Lock()
        self._listeners = Listeners()
        with self._guard():
            sqlite_migrations.check_before_opening(self.path, sqlite_migrations.STEPS)
            self.db = open_database(self.path, "FULL", busy_timeout_ms)
            # Space freed by compaction goes back to the file system on
            # vacuum(); the mode must be set before WAL and the first table.
            pragmas = [("auto_vacuum", "incremental"), *self.db._pragmas, *_TUNING]  # type: ignore[attr-defined]
            self.db._pragmas = pragmas  # type: ignore[attr-defined]
            # Each connection serves its own thread only; close() may close
            # them from another.
            self.db.connect_params["check_same_thread"] = False
            with self.db.connection_context():
                # Looked up at open time: tests replace the steps to crash one.
                steps = sqlite_migrations.STEPS
                migrate(sqlite_migrations.SqliteSchemaTarget(self.db), steps, str(self.path))
                sqlite_migrations.switch_to_incremental_vacuum(self.db)

    # -- plumbing -----------------------------------------------------------

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Wrap driver errors once, at the storage boundary."""
        try:
            yield
        except (OperationalError, sqlite3.OperationalError) as exc:
            # A disk full or an I/O error hides behind the failed rollback after it.
            root = root_failure(exc)
            if "locked" in str(root) or "busy" in str(root):
                raise StorageBusy(str(root)) from root
            raise StorageFailure(str(root), original=root) from root
        except (PeeweeException, sqlite3.Error, OSError) as exc:
            # OSError: the file's folder cannot be made or reached.
            root = root_failure(exc)
            raise StorageFailure(str(root), original=root) from root

    # Each server thread keeps its own connection open (peewee's connections
    # are per thread): opening one per request costs more than the request.

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        # Writers of this process queue on a lock rather than in SQLite's busy
        # handler, whose growing sleeps would add latency; other processes
        # holding the file still meet the busy timeout.
        with self._guard(), self._write_lock:
            self._connect()
            with self.db.atomic("IMMEDIATE"):
                yield

    @contextlib.contextmanager
    def _read(self) -> Iterator[None]:
        # A deferred transaction: every statement inside sees one snapshot.
        with self._guard():
            self._connect()
            with self.db.atomic():
                yield

    def accounts(self) -> AccountStore:
        """The account tables of this file."""
        return SqlAccounts(self._read, self._write, self._sql, "?")

    def _connect(self) -> None:
        """Open this thread's connection unless it is open."""
        if self.db.is_closed():
            self.db.connect()
            with self._connections_lock:
                self._connections[threading.current_thread()] = self.db.connection()

    def _sql(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        cursor: sqlite3.Cursor = self.db.execute_sql(sql, params)
        return cursor

    def _missing(self, name: str) -> StoreNotFound:
        """The error for a store that is not there: dropped, or never created."""
        row = self._sql("SELECT epoch FROM dropped_stores WHERE name = ?", (name,)).fetchone()
        return StoreNotFound(name) if row is None else StoreDropped(name, row[0])

    def _store_row(self, name: str) -> tuple[int, str, int, int]:
        row = self._sql(
            "SELECT id, epoch, head_seq, horizon_seq FROM stores WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise self._missing(name)
        store_id, epoch, head, horizon = row
        return store_id, epoch, head, horizon

    def _store_at(self, name: str, seq: int | None) -> tuple[int, str, int, int, str]:
        """The store's id, epoch, head and horizon, and the tag of its entry at ``seq``.

        ``seq`` None means the head. One statement: the entry is found by its
        primary key, so checking a cursor costs one indexed lookup.
        """
        # The entry at the horizon may have been compacted away: its tag is
        # kept in the store's row.
        row = self._sql(
            "SELECT s.id, s.epoch, s.head_seq, s.horizon_seq, coalesce(c.tag, CASE WHEN"
            " coalesce(?, s.head_seq) = s.horizon_seq THEN s.horizon_tag END) FROM stores s"
            " LEFT JOIN changes c ON c.store_id = s.id AND c.seq = coalesce(?, s.head_seq)"
            " WHERE s.name = ?",
            (seq, seq, name),
        ).fetchone()
        if row is None:
            raise self._missing(name)
        store_id, epoch, head, horizon, tag = row
        return store_id, epoch, head, horizon, tag_text(tag)

    def _info(self, name: str) -> StoreInfo:
        row = self._sql(f"{_STORE_INFO} WHERE s.name = ?", (name,)).fetchone()
        if row is None:
            raise self._missing(name)
        return store_info(row, int(self._bytes_per_entry() * row[5]))

    def _bytes_per_entry(self) -> float:
        """The database's used bytes over its log entries: a store's share is per entry."""
        page_size = self._sql("PRAGMA page_size").fetchone()[0]
        pages = self._sql("PRAGMA page_count").fetchone()[0]
        free = self._sql("PRAGMA freelist_count").fetchone()[0]
        entries = self._sql("SELECT coalesce(sum(log_length), 0) FROM stores").fetchone()[0]
        return (pages - free) * page_size / entries if entries else 0.0

    # -- stores -------------------------------------------------------------

    def create_store(self, name: str, recreate: bool = False) -> StoreInfo:
        with self._write():
            exists = self._sql("SELECT 1 FROM stores WHERE name = ?", (name,)).fetchone()
            if exists:
                raise StoreExists(name)
            missing = self._missing(name)
            if isinstance(missing, StoreDropped) and not recreate:
                raise missing
            self._sql("DELETE FROM dropped_stores WHERE name = ?", (name,))
            self._sql(
                "INSERT INTO stores (name, epoch, head_seq, horizon_seq, live_records,"
                " log_length, created_at) VALUES (?, ?, 0, 0, 0, 0, ?)",
                (name, secrets.token_hex(8), time.time()),
            )
            return self._info(name)

    def list_stores(self) -> list[StoreInfo]:
        with self._read():
            rows = self._sql(f"{_STORE_INFO} ORDER BY s.name").fetchall()
            per_entry = self._bytes_per_entry()
        return [store_info(row, int(per_entry * row[5])) for row in rows]

    def get_store(self, name: str) -> StoreInfo:
        with self._read():
            return self._info(name)

    def drop_store(self, name: str) -> None:
        with self._write():
            store_id, epoch, _head, _horizon = self._store_row(name)
            for table in ("changes", "records", "index_items", "client_batches"):
                self._sql(f"DELETE FROM {table} WHERE store_id = ?", (store_id,))
            self._sql("DELETE FROM stores WHERE id = ?", (store_id,))
            self._sql(
                "INSERT OR REPLACE INTO dropped_stores (name, epoch, dropped_at) VALUES (?, ?, ?)",
                (name, epoch, time.time()),
            )

    def set_retention(self, name: str, seconds: int | None) -> StoreInfo:
        if seconds is not None and seconds < 0:
            raise ValueError("retention must be zero or more seconds")
        with self._write():
            store_id = self._store_row(name)[0]
            self._sql("UPDATE stores SET retention_seconds = ? WHERE id = ?", (seconds, store_id))
            return self._info(name)

    # -- history (sqlite_history) ------------------------------------------------

    def compact(
        self,
        name: str | None = None,
        now: float | None = None,
        default_retention: int = DEFAULT_RETENTION_SECONDS,
    ) -> CompactionReport:
        return sqlite_history.compact(self, name, now, default_retention)

    def vacuum(self) -> None:
        sqlite_history.vacuum(self)

    def export_store(self, name: str) -> Iterator[str]:
        return sqlite_history.export_store(self, name)

    def import_store(self, name: str, lines: Iterable[str]) -> StoreInfo:
        return sqlite_history.import_store(self, name, lines)

    # -- writes -------------------------------------------------------------

    def push(self, name: str, client_id: str, changes: Sequence[Change]) -> list[Outcome]:
        with self._write():
            store_id, _epoch, head, _horizon = self._store_row(name)
            batch = PushBatch(store_id, head, self._next_record_id())
            batch.prior = self._prior_outcomes(store_id, client_id, [c.n for c in changes])
            batch.known = self._known_records(store_id, [c.key for c in changes])
            outcomes = [batch.apply(change) for change in changes]
            self._write_batch(store_id, client_id, batch)
            killpoint.reached("server.push.before_commit")
        killpoint.reached("server.push.committed")
        # Committed: only now may a listener read the change.
        if batch.log:
            self._listeners.fire(name, batch.head)
        return outcomes

    def listen(self, callback: ChangeListener) -> None:
        """Call ``callback`` after each push through this instance commits a change.

        SQLite serves one process: changes made by another process on the
        same file are not reported.
        """
        self._listeners.add(callback)

    def _next_record_id(self) -> int:
        # Ids are handed out here, under the write lock, so one executemany can
        # insert records and their index items together.
        return int(self._sql("SELECT coalesce(max(id), 0) + 1 FROM records").fetchone()[0])

    def _chunked(self, sql: str, fixed: tuple[Any, ...], values: list[Any]) -> list[Any]:
        """Run ``sql`` once per chunk of ``values`` (spliced at ``{marks}``); all rows."""
        rows: list[Any] = []
        for start in range(0, len(values), CHUNK):
            chunk = values[start : start + CHUNK]
            marks = ",".join("?" * len(chunk))
            rows += self._sql(sql.format(marks=marks), (*fixed, *chunk)).fetchall()
        return rows

    def _prior_outcomes(
        self, store_id: int, client_id: str, numbers: list[int]
    ) -> dict[int, tuple[Any, ...]]:
        # A client counting up sends numbers past its last row: one lookup
        # that finds nothing.
        texts: list[str] = []
        for low, high, bound in client_runs.lookup_ranges(numbers):
            texts += [
                row[0]
                for row in self._sql(
                    "SELECT outcomes FROM client_batches WHERE store_id = ? AND client_id = ?"
                    " AND last_n >= ? AND last_n <= ? AND first_n <= ?",
                    (store_id, client_id, low, bound, high),
                )
            ]
        return client_runs.unpack(texts, set(numbers))

    def _known_records(self, store_id: int, keys: list[str]) -> dict[str, KnownRecord]:
        # A deleted record's entries may be compacted away: its row alone says
        # the key was used (LEFT JOIN), and its content is no longer compared.
        rows = self._chunked(
            "SELECT r.key, r.id, coalesce(c.index_json, '[]'), coalesce(c.value_json, 'null'),"
            f" r.added_seq, r.deleted_seq FROM records r LEFT {CONTENT}"
            " WHERE r.store_id = ? AND r.key IN ({marks})",
            (store_id,),
            sorted(set(keys)),
        )
        return {row[0]: KnownRecord(*row[1:]) for row in rows}

    def _write_batch(self, store_id: int, client_id: str, batch: PushBatch) -> None:
        conn = self.db.connection()
        now = time.time()
        conn.executemany(
            "INSERT INTO changes (store_id, seq, op, key, index_json, value_json, tag, logged_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(store_id, *row, now) for row in batch.log],
        )
        new = [(key, rec) for key, rec in batch.known.items() if rec.new]
        conn.executemany(
            "INSERT INTO records (id, store_id, key, added_seq, deleted_seq)"
            " VALUES (?, ?, ?, ?, ?)",
            [(r.id, store_id, key, r.added_seq, r.deleted_seq) for key, r in new],
        )
        conn.executemany(
            "INSERT INTO index_items (store_id, item, record_id) VALUES (?, ?, ?)",
            [(store_id, item, r.id) for _, r in new if r.deleted_seq is None for item in r.index],
        )
        gone = [rec for rec in batch.known.values() if rec.deleted_now and not rec.new]
        conn.executemany(
            "UPDATE records SET deleted_seq = ? WHERE id = ?", [(r.deleted_seq, r.id) for r in gone]
        )
        # By the index table's own key (store, item, record): no scan.
        conn.executemany(
            "DELETE FROM index_items WHERE store_id = ? AND item = ? AND record_id = ?",
            [(store_id, item, r.id) for r in gone for item in jsoncodec.loads(r.index_json)],
        )
        conn.executemany(
            "INSERT INTO client_batches (store_id, client_id, last_n, first_n, outcomes)"
            " VALUES (?, ?, ?, ?, ?)",
            [(store_id, client_id, *run) for run in client_runs.pack(batch.client_rows)],
        )
        if batch.log:
            self._sql(
                "UPDATE stores SET head_seq = ?, log_length = log_length + ?,"
                " live_records = live_records + ? WHERE id = ?",
                (batch.head, len(batch.log), batch.live_delta, store_id),
            )

    # -- reads --------------------------------------------------------------

    def pull(self, name: str, after: Cursor | None, limit: int, max_bytes: int) -> Page:
        with self._read():
            store_id, epoch, head, horizon, tag = self._store_at(name, after.seq if after else 0)
            after = after or Cursor(epoch, 0)
            check_cursor(after, epoch, head, horizon, tag)
            # SQLite writes each change's JSON itself: the stored JSON text is
            # spliced, never decoded and re-encoded.
            rows = self._sql(
                f"SELECT seq, tag, {_CHANGE_JSON} FROM changes"
                " WHERE store_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (store_id, after.seq, limit),
            ).fetchall()
        items = fill_page((row[2] for row in rows), max_bytes)
        # The page's cursor names the entry of its last change.
        last = rows[len(items) - 1] if items else None
        cursor = after if last is None else Cursor(epoch, last[0], tag_text(last[1]))
        return Page(items, cursor, more=cursor.seq < head)

    def snapshot(
        self, name: str, at: Cursor | None, after: int, limit: int, max_bytes: int
    ) -> SnapshotPage:
        with self._read():
            store_id, epoch, head, horizon, tag = self._store_at(name, at.seq if at else None)
            at = at or Cursor(epoch, head, tag)
            check_cursor(at, epoch, head, horizon, tag)
            rows = self._sql(
                f"SELECT r.key, c.index_json, c.value_json, r.added_seq FROM records r {CONTENT}"
                " WHERE r.store_id = ? AND r.added_seq > ? AND r.added_seq <= ?"
                " AND (r.deleted_seq IS NULL OR r.deleted_seq > ?)"
                " ORDER BY r.added_seq LIMIT ?",
                (store_id, after, at.seq, at.seq, limit + 1),
            ).fetchall()
        items = fill_page((record_json(*row) for row in rows[:limit]), max_bytes)
        last = rows[len(items) - 1][3] if items else after
        return SnapshotPage(items, at, last, len(items) < len(rows))

    def get_record(self, name: str, key: str) -> str | None:
        with self._read():
            store_id = self._store_row(name)[0]
            row = self._sql(
                f"SELECT r.key, c.index_json, c.value_json, r.added_seq FROM records r {CONTENT}"
                " WHERE r.store_id = ? AND r.key = ? AND r.deleted_seq IS NULL",
                (store_id, key),
            ).fetchone()
        return None if row is None else record_json(*row)

    def find(self, name: str, item: str, prefix: bool, after: int, limit: int) -> FindPage:
        if prefix:
            upper = prefix_upper_bound(item)
            where, params = "item >= ?", [item]
            if upper is not None:
                where += " AND item < ?"
                params.append(upper)
        else:
            where, params = "item = ?", [item]
        with self._read():
            store_id = self._store_row(name)[0]
            rows = self._sql(
                f"SELECT r.id, r.key, c.index_json, c.value_json, r.added_seq FROM records r {CONTENT}"
                " WHERE r.id IN (SELECT DISTINCT record_id FROM index_items"
                f"   WHERE store_id = ? AND {where} AND record_id > ?)"
                " ORDER BY r.id LIMIT ?",
                (store_id, *params, after, limit + 1),
            ).fetchall()
        page = rows[:limit]
        items = [record_json(*row[1:]) for row in page]
        next_after = page[-1][0] if page else after
        return FindPage(items, next_after, len(rows) > limit)

    def close(self) -> None:
        """Close every thread's connection (the storage is not to be used afterwards)."""
        with self._connections_lock:
            connections = list(self._connections.values())
            self._connections.clear()
        with contextlib.suppress(Exception):
            self.db.close()
        for connection in connections:
            with contextlib.suppress(Exception):
                connection.close()
