"""Compaction, vacuum, export and import on the SQLite backend.

:class:`.sqlite.SqliteStorage` delegates them here; they run on its
plumbing (its write lock, transactions and statements), kept apart so that
each module has one job.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from idsync_client import jsoncodec

from . import transfer
from .base import DEFAULT_RETENTION_SECONDS, CompactionReport, StoreExists, StoreInfo
from .compaction_rules import COMPACT_CHUNK, compact_stores, deletes_to_remove
from .json_text import record_json
from .push_rules import new_tag

if TYPE_CHECKING:
    from .sqlite import SqliteStorage

# A record's content lives once, in the log entry that added it.
CONTENT = "JOIN changes c ON c.store_id = r.store_id AND c.seq = r.added_seq"
# SQLite's bound on host parameters is 999 in old builds: look keys up in chunks.
CHUNK = 500


def compact(
    storage: SqliteStorage,
    name: str | None = None,
    now: float | None = None,
    default_retention: int = DEFAULT_RETENTION_SECONDS,
) -> CompactionReport:
    """Storage.compact: each store in chunks, each chunk one short write transaction."""
    names = [name] if name is not None else [s.name for s in storage.list_stores()]

    def step(store: str, at: float, retention: int) -> tuple[int, int]:
        return _compact_chunk(storage, store, at, retention)

    return compact_stores(names, storage._write, step, now, default_retention)


def _compact_chunk(
    storage: SqliteStorage, name: str, now: float, default_retention: int
) -> tuple[int, int]:
    """Remove the entries of the oldest deleted records past retention; (removed, horizon)."""
    row = storage._sql(
        "SELECT id, horizon_seq, retention_seconds FROM stores WHERE name = ?", (name,)
    ).fetchone()
    if row is None:
        raise storage._missing(name)
    store_id, horizon, retention = row
    rows = storage._sql(
        "SELECT seq, key, tag, logged_at FROM changes WHERE store_id = ? AND seq > ?"
        " AND op = 'delete' ORDER BY seq LIMIT ?",
        (store_id, horizon, COMPACT_CHUNK),
    ).fetchall()
    deletes = deletes_to_remove(rows, now, retention, default_retention)
    if not deletes:
        return 0, horizon
    adds = storage._chunked(
        "SELECT added_seq FROM records WHERE store_id = ? AND key IN ({marks})",
        (store_id,),
        [key for _, key, _ in deletes],
    )
    seqs = [seq for (seq,) in adds] + [seq for seq, _, _ in deletes]
    removed = 0
    for start in range(0, len(seqs), CHUNK):
        chunk = seqs[start : start + CHUNK]
        marks = ",".join("?" * len(chunk))
        removed += storage._sql(
            f"DELETE FROM changes WHERE store_id = ? AND seq IN ({marks})", (store_id, *chunk)
        ).rowcount
    # Every cursor that could miss a removed delete is now behind the
    # horizon; the one at the horizon keeps its tag.
    new_horizon, _, tag = deletes[-1]
    storage._sql(
        "UPDATE stores SET horizon_seq = ?, horizon_tag = ?, log_length = log_length - ?"
        " WHERE id = ?",
        (new_horizon, tag, removed, store_id),
    )
    return removed, new_horizon


def vacuum(storage: SqliteStorage) -> None:
    """Return free pages to the file system (incremental vacuum), then truncate the WAL."""
    with storage._guard(), storage._write_lock:
        storage._connect()
        # executescript steps the pragma to its end; execute() would free one page.
        storage.db.connection().executescript("PRAGMA incremental_vacuum")
        # The main file shrinks when the WAL is copied back into it.
        storage._sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def export_store(storage: SqliteStorage, name: str) -> Iterator[str]:
    """Storage.export_store: the header, live records and deleted keys, read in one snapshot."""
    with storage._read():
        store_id, epoch, head, _horizon = storage._store_row(name)
        records = storage._sql(
            f"SELECT r.key, c.index_json, c.value_json, r.added_seq FROM records r {CONTENT}"
            " WHERE r.store_id = ? AND r.deleted_seq IS NULL ORDER BY r.added_seq",
            (store_id,),
        ).fetchall()
        deleted = storage._sql(
            "SELECT key, deleted_seq FROM records WHERE store_id = ?"
            " AND deleted_seq IS NOT NULL ORDER BY deleted_seq",
            (store_id,),
        ).fetchall()
    yield transfer.header_line(name, epoch, head)
    for row in records:
        yield record_json(*row)
    for key, seq in deleted:
        yield transfer.deleted_line(key, seq)


def import_store(storage: SqliteStorage, name: str, lines: Iterable[str]) -> StoreInfo:
    """Storage.import_store: checks every line first, then writes the store in one transaction."""
    data = transfer.read_export(lines)  # every line checked before anything is written
    now = time.time()
    with storage._write():
        if storage._sql("SELECT 1 FROM stores WHERE name = ?", (name,)).fetchone():
            raise StoreExists(name)
        storage._sql("DELETE FROM dropped_stores WHERE name = ?", (name,))
        # The log before the head is not carried over: the horizon is the
        # head, so every client reloads a snapshot (new epoch anyway).
        head = data.head_seq
        store_id = storage._sql(
            "INSERT INTO stores (name, epoch, head_seq, horizon_seq, horizon_tag,"
            " live_records, log_length, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                name,
                secrets.token_hex(8),
                head,
                head,
                new_tag() if head else None,
                len(data.records),
                len(data.records),
                now,
            ),
        ).lastrowid
        first_id = storage._next_record_id()
        conn = storage.db.connection()
        conn.executemany(
            "INSERT INTO changes (store_id, seq, op, key, index_json, value_json, tag,"
            " logged_at) VALUES (?, ?, 'add', ?, ?, ?, ?, ?)",
            [(store_id, seq, key, ij, vj, new_tag(), now) for key, ij, vj, seq in data.records],
        )
        conn.executemany(
            "INSERT INTO records (id, store_id, key, added_seq, deleted_seq)"
            " VALUES (?, ?, ?, ?, ?)",
            [
                (first_id + i, store_id, key, seq, None)
                for i, (key, _, _, seq) in enumerate(data.records)
            ]
            + [(None, store_id, key, seq, seq) for key, seq in data.deleted],
        )
        conn.executemany(
            "INSERT INTO index_items (store_id, item, record_id) VALUES (?, ?, ?)",
            [
                (store_id, item, first_id + i)
                for i, (_, index_json, _, _) in enumerate(data.records)
                for item in jsoncodec.loads(index_json)
            ],
        )
        return storage._info(name)
