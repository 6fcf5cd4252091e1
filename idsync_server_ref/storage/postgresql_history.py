"""Compaction, vacuum, export and import on the PostgreSQL backend.

:class:`.postgresql.PostgresqlStorage` delegates them here; they run on its
plumbing (its pool, transactions and the store row lock), kept apart here so
that each module has one job.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from . import transfer
from .base import DEFAULT_RETENTION_SECONDS, CompactionReport, StoreExists, StoreInfo
from .compaction_rules import COMPACT_CHUNK, compact_stores, deletes_to_remove
from .json_text import record_json
from .push_rules import new_tag

if TYPE_CHECKING:
    from .postgresql import PostgresqlStorage

# A record's content lives once, in the log entry that added it.
CONTENT = "JOIN changes c ON c.store_id = r.store_id AND c.seq = r.added_seq"


def compact(
    storage: PostgresqlStorage,
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
    storage: PostgresqlStorage, name: str, now: float, default_retention: int
) -> tuple[int, int]:
    """Remove the entries of the oldest deleted records past retention; (removed, horizon)."""
    store_id = storage._locked_store(name)[0]
    horizon, retention = storage._sql(
        "SELECT horizon_seq, retention_seconds FROM stores WHERE id = %s", (store_id,)
    ).fetchone()
    rows = storage._sql(
        "SELECT seq, key, tag, logged_at FROM changes WHERE store_id = %s AND seq > %s"
        " AND op = 'delete' ORDER BY seq LIMIT %s",
        (store_id, horizon, COMPACT_CHUNK),
    ).fetchall()
    deletes = deletes_to_remove(rows, now, retention, default_retention)
    if not deletes:
        return 0, int(horizon)
    removed = storage._sql(
        "DELETE FROM changes WHERE store_id = %s AND seq IN ("
        " SELECT unnest(%s::bigint[]) UNION ALL"
        " SELECT added_seq FROM records WHERE store_id = %s AND key = ANY(%s))",
        (store_id, [seq for seq, _, _ in deletes], store_id, [k for _, k, _ in deletes]),
    ).rowcount
    # Every cursor that could miss a removed delete is now behind the
    # horizon; the one at the horizon keeps its tag.
    new_horizon, _, tag = deletes[-1]
    storage._sql(
        "UPDATE stores SET horizon_seq = %s, horizon_tag = %s, log_length = log_length - %s"
        " WHERE id = %s",
        (new_horizon, tag, removed, store_id),
    )
    return int(removed), int(new_horizon)


def vacuum(storage: PostgresqlStorage) -> None:
    """Nothing to do: PostgreSQL's autovacuum reuses the space compaction freed.

    The tables' files do not shrink (a ``VACUUM FULL`` would lock them);
    their free space serves new rows.
    """


def export_store(storage: PostgresqlStorage, name: str) -> Iterator[str]:
    """Storage.export_store: the header, live records and deleted keys, read in one snapshot."""
    with storage._read():
        store_id = storage._store_id(name)
        epoch, head = storage._sql(
            "SELECT epoch, head_seq FROM stores WHERE id = %s", (store_id,)
        ).fetchone()
        records = storage._sql(
            f"SELECT r.key, c.index_json, c.value_json, r.added_seq FROM records r {CONTENT}"
            " WHERE r.store_id = %s AND r.deleted_seq IS NULL ORDER BY r.added_seq",
            (store_id,),
        ).fetchall()
        deleted = storage._sql(
            "SELECT key, deleted_seq FROM records WHERE store_id = %s"
            " AND deleted_seq IS NOT NULL ORDER BY deleted_seq",
            (store_id,),
        ).fetchall()
    yield transfer.header_line(name, epoch, int(head))
    for row in records:
        yield record_json(*row)
    for key, seq in deleted:
        yield transfer.deleted_line(key, int(seq))


def import_store(storage: PostgresqlStorage, name: str, lines: Iterable[str]) -> StoreInfo:
    """Storage.import_store: checks every line first, then writes the store in one transaction."""
    data = transfer.read_export(lines)  # every line checked before anything is written
    now = time.time()
    head = data.head_seq
    with storage._write():
        storage._sql("DELETE FROM dropped_stores WHERE name = %s", (name,))
        # The log before the head is not carried over: the horizon is the
        # head, so every client reloads a snapshot (new epoch anyway).
        row = storage._sql(
            "INSERT INTO stores (name, epoch, head_seq, horizon_seq, horizon_tag,"
            " live_records, log_length, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (name) DO NOTHING RETURNING id",
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
        ).fetchone()
        if row is None:
            raise StoreExists(name)
        store_id = int(row[0])
        storage._rows(
            "INSERT INTO changes (store_id, seq, op, key, index_json, value_json, tag,"
            " logged_at) SELECT %s, u.seq, 'add', u.key, u.ij, u.vj, u.tag, %s"
            " FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::bigint[])"
            " AS u(seq, key, ij, vj, tag)",
            (store_id, now),
            [(seq, key, ij, vj, new_tag()) for key, ij, vj, seq in data.records],
        )
        every: list[tuple[str, int, int | None]] = [(k, s, None) for k, _, _, s in data.records]
        every += [(key, seq, seq) for key, seq in data.deleted]
        storage._rows(
            "INSERT INTO records (store_id, key, added_seq, deleted_seq)"
            " SELECT %s, * FROM unnest(%s::text[], %s::bigint[], %s::bigint[])",
            (store_id,),
            every,
        )
        storage._sql(
            "INSERT INTO index_items (store_id, item, record_id)"
            " SELECT r.store_id, jsonb_array_elements_text(c.index_json::jsonb), r.id"
            f" FROM records r {CONTENT} WHERE r.store_id = %s AND r.deleted_seq IS NULL"
            " ON CONFLICT DO NOTHING",
            (store_id,),
        )
        return storage._info(name)
