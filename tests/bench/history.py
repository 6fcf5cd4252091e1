"""A long-lived store: many edits of few live records, before and after compaction.

A store of ``live`` records is edited ``edits`` times, each edit the way an
attribute changes (delete the record, add its successor), straight through
the storage (seeding is not what is measured). Measured: the log length, the
database file's size and a new device's first sync (a fresh client, real
server process), then the same after compaction (every entry past a 7-day
retention, as if eight days had passed) and vacuum. Figures only.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from idsync_client import Client
from idsync_client.protocol import Change
from idsync_server_ref.process import ServerProcess
from idsync_server_ref.storage import SqliteStorage

STORE = "history"
_BATCH = 1000


def _file_mb(path: Path) -> float:
    with sqlite3.connect(path) as conn:  # fold the WAL in, so the size is the file's
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return path.stat().st_size / 1e6


def _seed(path: Path, live: int, edits: int) -> None:
    storage = SqliteStorage(path)
    try:
        storage.create_store(STORE)
        value = '{"title":"' + "x" * 150 + '","n":%d}'
        changes: list[Change] = []
        n = 0

        def add(key: str, i: int) -> None:
            nonlocal n
            n += 1
            changes.append(Change(n, "add", key, (f"entity:{i}",), value % n))

        for i in range(live):
            add(f"r{i}-0", i)
        for edit in range(edits):
            i, gen = edit % live, edit // live
            n += 1
            changes.append(Change(n, "delete", f"r{i}-{gen}"))
            add(f"r{i}-{gen + 1}", i)
        for start in range(0, len(changes), _BATCH):
            storage.push(STORE, "seed", changes[start : start + _BATCH])
    finally:
        storage.close()


def _new_device(work: Path, server_db: Path, name: str, live: int) -> float:
    """Seconds a fresh client takes to sync the store; checks it holds ``live`` records."""
    with ServerProcess(server_db) as server, Client(work / f"{name}.sqlite3", server.url) as c:
        store = c.store(STORE)
        started = time.perf_counter()
        c.sync()
        elapsed = time.perf_counter() - started
        assert len(store) == live, (len(store), live)
    return elapsed


def long_lived_store(work: Path, live: int, edits: int) -> dict[str, float]:
    """The figures described in the module docstring."""
    db = work / "history-server.sqlite3"
    _seed(db, live, edits)
    storage = SqliteStorage(db)
    log_before = storage.get_store(STORE).log_length
    storage.close()
    size_before = _file_mb(db)
    sync_before = _new_device(work, db, "device-before", live)
    storage = SqliteStorage(db)
    try:
        started = time.perf_counter()
        report = storage.compact(STORE, now=time.time() + 8 * 86400)
        compact_s = time.perf_counter() - started
        storage.vacuum()
        log_after = storage.get_store(STORE).log_length
    finally:
        storage.close()
    size_after = _file_mb(db)
    sync_after = _new_device(work, db, "device-after", live)
    return {
        "log_before": log_before,
        "log_after": log_after,
        "removed": report.entries_removed,
        "compact_ms": compact_s * 1000,
        "size_before_mb": size_before,
        "size_after_mb": size_after,
        "sync_before_ms": sync_before * 1000,
        "sync_after_ms": sync_after * 1000,
    }
