"""SQLite storage backend (the default): one file, WAL, ``synchronous=FULL``.

SQLite allows one writer at a time, so sequence numbers are handed out inside
a write transaction (``BEGIN IMMEDIATE``) and a reader can never see seq N+1
before seq N: the change log has no gaps to skip.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from peewee import OperationalError, PeeweeException, SqliteDatabase

from idsync_client import jsoncodec
from idsync_client.protocol import Change, Cursor, Outcome

from .base import (
    CursorAhead,
    Page,
    ResetRequired,
    SnapshotPage,
    Storage,
    StorageBusy,
    StorageFailure,
    StoreExists,
    StoreInfo,
    StoreNotFound,
)
from .sqlite_schema import ALL_MODELS, SCHEMA_VERSION, MetaRow

_STORE_COLUMNS = "name, epoch, head_seq, horizon_seq, live_records, log_length, created_at"


def _change_hash(change: Change) -> str:
    body = f"{change.op}\0{change.key}\0{','.join(change.index)}\0{change.value_json}"
    return hashlib.blake2b(body.encode("utf-8"), digest_size=16).hexdigest()


def _prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with ``prefix``."""
    while prefix:
        code = ord(prefix[-1]) + 1
        if 0xD800 <= code <= 0xDFFF:
            code = 0xE000
        if code <= 0x10FFFF:
            return prefix[:-1] + chr(code)
        prefix = prefix[:-1]
    return None


def _record_json(key: str, index_json: str, value_json: str, seq: int) -> str:
    return f'{{"key":{jsoncodec.dumps(key)},"index":{index_json},"value":{value_json},"seq":{seq}}}'


class SqliteStorage(Storage):
    """The SQLite backend. ``path`` is created if missing (with its folder).

    ``busy_timeout_ms`` is how long a write waits for the lock before the
    request is answered 503 ``storage_busy``.
    """

    def __init__(self, path: str | Path, busy_timeout_ms: int = 5000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = SqliteDatabase(
            str(self.path),
            pragmas={
                "journal_mode": "wal",
                "synchronous": "full",
                "busy_timeout": busy_timeout_ms,
                "foreign_keys": 0,
                "cache_size": -32_000,
            },
            timeout=busy_timeout_ms / 1000,
        )
        with self._guard():
            self._check_schema()

    # -- plumbing -----------------------------------------------------------

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Wrap driver errors once, at the storage boundary."""
        try:
            yield
        except (OperationalError, sqlite3.OperationalError) as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StorageBusy(str(exc)) from exc
            raise StorageFailure(str(exc), original=exc) from exc
        except (PeeweeException, sqlite3.Error) as exc:
            raise StorageFailure(str(exc), original=exc) from exc

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        with self._guard(), self.db.connection_context(), self.db.atomic("IMMEDIATE"):
            yield

    @contextlib.contextmanager
    def _read(self) -> Iterator[None]:
        # A deferred transaction: every statement inside sees one snapshot.
        with self._guard(), self.db.connection_context(), self.db.atomic():
            yield

    def _sql(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self.db.execute_sql(sql, params)

    def _check_schema(self) -> None:
        with self.db.connection_context(), self.db.atomic("IMMEDIATE"):
            self.db.bind(ALL_MODELS)
            self.db.create_tables(ALL_MODELS, safe=True)
            row = MetaRow.get_or_none(MetaRow.key == "schema_version")
            if row is None:
                MetaRow.create(key="schema_version", value=str(SCHEMA_VERSION))
            elif row.value != str(SCHEMA_VERSION):
                raise StorageFailure(
                    f"{self.path} has schema version {row.value}; "
                    f"this server knows version {SCHEMA_VERSION}"
                )

    def _store_row(self, name: str) -> tuple[int, str, int, int]:
        row = self._sql(
            "SELECT id, epoch, head_seq, horizon_seq FROM stores WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise StoreNotFound(name)
        return row

    def _info(self, name: str) -> StoreInfo:
        row = self._sql(f"SELECT {_STORE_COLUMNS} FROM stores WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise StoreNotFound(name)
        return StoreInfo(*row)

    @staticmethod
    def _check_cursor(cursor: Cursor, epoch: str, head: int, horizon: int) -> None:
        if cursor.epoch != epoch or cursor.seq < horizon:
            raise ResetRequired(
                "the cursor is from another epoch"
                if cursor.epoch != epoch
                else "the cursor is behind the compaction horizon"
            )
        if cursor.seq > head:
            raise CursorAhead(f"cursor seq {cursor.seq} is past the head {head}")

    # -- stores -------------------------------------------------------------

    def create_store(self, name: str) -> StoreInfo:
        with self._write():
            exists = self._sql("SELECT 1 FROM stores WHERE name = ?", (name,)).fetchone()
            if exists:
                raise StoreExists(name)
            self._sql(
                "INSERT INTO stores (name, epoch, head_seq, horizon_seq, live_records,"
                " log_length, created_at) VALUES (?, ?, 0, 0, 0, 0, ?)",
                (name, secrets.token_hex(8), time.time()),
            )
            return self._info(name)

    def list_stores(self) -> list[StoreInfo]:
        with self._read():
            rows = self._sql(f"SELECT {_STORE_COLUMNS} FROM stores ORDER BY name").fetchall()
        return [StoreInfo(*row) for row in rows]

    def get_store(self, name: str) -> StoreInfo:
        with self._read():
            return self._info(name)

    def drop_store(self, name: str) -> None:
        with self._write():
            store_id = self._store_row(name)[0]
            for table in ("changes", "records", "index_items", "client_changes"):
                self._sql(f"DELETE FROM {table} WHERE store_id = ?", (store_id,))
            self._sql("DELETE FROM stores WHERE id = ?", (store_id,))

    def head(self, name: str) -> int:
        with self._read():
            return self._store_row(name)[2]

    # -- writes -------------------------------------------------------------

    def push(self, name: str, client_id: str, changes: Sequence[Change]) -> list[Outcome]:
        with self._write():
            store_id, _epoch, head, _horizon = self._store_row(name)
            outcomes: list[Outcome] = []
            applied_before = head
            live_delta = 0
            for change in changes:
                body_hash = _change_hash(change)
                prior = self._sql(
                    "SELECT body_hash, status, seq, code, message FROM client_changes"
                    " WHERE store_id = ? AND client_id = ? AND n = ?",
                    (store_id, client_id, change.n),
                ).fetchone()
                if prior is not None:
                    outcomes.append(self._replayed(change.n, body_hash, prior))
                    continue
                outcome = self._apply(store_id, head + 1, change)
                if outcome.status == "applied":
                    head += 1
                    live_delta += 1 if change.op == "add" else -1
                self._sql(
                    "INSERT INTO client_changes (store_id, client_id, n, body_hash, status,"
                    " seq, code, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        store_id,
                        client_id,
                        change.n,
                        body_hash,
                        outcome.status,
                        outcome.seq,
                        outcome.code,
                        outcome.message,
                    ),
                )
                outcomes.append(outcome)
            if head != applied_before:
                self._sql(
                    "UPDATE stores SET head_seq = ?, log_length = log_length + ?,"
                    " live_records = live_records + ? WHERE id = ?",
                    (head, head - applied_before, live_delta, store_id),
                )
            return outcomes

    @staticmethod
    def _replayed(n: int, body_hash: str, prior: tuple[Any, ...]) -> Outcome:
        stored_hash, status, seq, code, message = prior
        if stored_hash != body_hash:
            return Outcome(
                n,
                "rejected",
                code="change_number_conflict",
                message=f"change number {n} was sent before with another body",
            )
        return Outcome(n, status, seq=seq, code=code, message=message)

    def _apply(self, store_id: int, seq: int, change: Change) -> Outcome:
        row = self._sql(
            "SELECT id, index_json, value_json, added_seq, deleted_seq FROM records"
            " WHERE store_id = ? AND key = ?",
            (store_id, change.key),
        ).fetchone()
        if change.op == "add":
            return self._apply_add(store_id, seq, change, row)
        return self._apply_delete(store_id, seq, change, row)

    def _apply_add(self, store_id: int, seq: int, change: Change, row: Any) -> Outcome:
        index_json = jsoncodec.dumps(list(change.index))
        if row is not None:
            _id, old_index, old_value, added_seq, deleted_seq = row
            if deleted_seq is not None:
                return Outcome(
                    change.n,
                    "rejected",
                    code="key_deleted",
                    message=f"key {change.key!r} was deleted; keys are never reused",
                )
            if old_index == index_json and (
                old_value == change.value_json
                or jsoncodec.loads(old_value) == jsoncodec.loads(change.value_json)
            ):
                return Outcome(change.n, "duplicate", seq=added_seq)
            return Outcome(
                change.n,
                "rejected",
                code="key_exists",
                message=f"key {change.key!r} exists with other content",
            )
        self._sql(
            "INSERT INTO changes (store_id, seq, op, key, index_json, value_json)"
            " VALUES (?, ?, 'add', ?, ?, ?)",
            (store_id, seq, change.key, index_json, change.value_json),
        )
        record_id = self._sql(
            "INSERT INTO records (store_id, key, index_json, value_json, added_seq)"
            " VALUES (?, ?, ?, ?, ?)",
            (store_id, change.key, index_json, change.value_json, seq),
        ).lastrowid
        if change.index:
            self.db.connection().executemany(
                "INSERT INTO index_items (store_id, item, record_id) VALUES (?, ?, ?)",
                [(store_id, item, record_id) for item in change.index],
            )
        return Outcome(change.n, "applied", seq=seq)

    def _apply_delete(self, store_id: int, seq: int, change: Change, row: Any) -> Outcome:
        if row is None:
            return Outcome(
                change.n,
                "rejected",
                code="key_not_found",
                message=f"no record with key {change.key!r} was ever added",
            )
        record_id, _index, _value, _added, deleted_seq = row
        if deleted_seq is not None:
            return Outcome(change.n, "duplicate", seq=deleted_seq)
        self._sql(
            "INSERT INTO changes (store_id, seq, op, key) VALUES (?, ?, 'delete', ?)",
            (store_id, seq, change.key),
        )
        self._sql("UPDATE records SET deleted_seq = ? WHERE id = ?", (seq, record_id))
        self._sql(
            "DELETE FROM index_items WHERE store_id = ? AND record_id = ?", (store_id, record_id)
        )
        return Outcome(change.n, "applied", seq=seq)

    # -- reads --------------------------------------------------------------

    def pull(self, name: str, after: Cursor | None, limit: int, max_bytes: int) -> Page:
        with self._read():
            store_id, epoch, head, horizon = self._store_row(name)
            after = after or Cursor(epoch, 0)
            self._check_cursor(after, epoch, head, horizon)
            rows = self._sql(
                "SELECT seq, op, key, index_json, value_json FROM changes"
                " WHERE store_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (store_id, after.seq, limit),
            )
            items: list[str] = []
            size = 0
            last = after.seq
            dumps = jsoncodec.dumps
            for seq, op, key, index_json, value_json in rows:
                if op == "add":
                    item = (
                        f'{{"seq":{seq},"op":"add","key":{dumps(key)},'
                        f'"index":{index_json},"value":{value_json}}}'
                    )
                else:
                    item = f'{{"seq":{seq},"op":"delete","key":{dumps(key)}}}'
                size += len(item)
                if items and size > max_bytes:
                    break
                items.append(item)
                last = seq
        return Page(items, Cursor(epoch, last), more=last < head)

    def snapshot(
        self, name: str, at: Cursor | None, after: int, limit: int, max_bytes: int
    ) -> SnapshotPage:
        with self._read():
            store_id, epoch, head, horizon = self._store_row(name)
            at = at or Cursor(epoch, head)
            self._check_cursor(at, epoch, head, horizon)
            rows = self._sql(
                "SELECT key, index_json, value_json, added_seq FROM records"
                " WHERE store_id = ? AND added_seq > ? AND added_seq <= ?"
                " AND (deleted_seq IS NULL OR deleted_seq > ?)"
                " ORDER BY added_seq LIMIT ?",
                (store_id, after, at.seq, at.seq, limit + 1),
            ).fetchall()
        items: list[str] = []
        size = 0
        last = after
        for key, index_json, value_json, added_seq in rows[:limit]:
            item = _record_json(key, index_json, value_json, added_seq)
            size += len(item)
            if items and size > max_bytes:
                break
            items.append(item)
            last = added_seq
        more = len(items) < len(rows)
        return SnapshotPage(items, at, last, more)

    def get_record(self, name: str, key: str) -> str | None:
        with self._read():
            store_id = self._store_row(name)[0]
            row = self._sql(
                "SELECT key, index_json, value_json, added_seq FROM records"
                " WHERE store_id = ? AND key = ? AND deleted_seq IS NULL",
                (store_id, key),
            ).fetchone()
        return None if row is None else _record_json(*row)

    def find(
        self, name: str, item: str, prefix: bool, after: int, limit: int
    ) -> tuple[list[str], int, bool]:
        if prefix:
            upper = _prefix_upper_bound(item)
            where, params = "item >= ?", [item]
            if upper is not None:
                where += " AND item < ?"
                params.append(upper)
        else:
            where, params = "item = ?", [item]
        with self._read():
            store_id = self._store_row(name)[0]
            rows = self._sql(
                "SELECT r.id, r.key, r.index_json, r.value_json, r.added_seq FROM records r"
                " WHERE r.id IN (SELECT DISTINCT record_id FROM index_items"
                f"   WHERE store_id = ? AND {where} AND record_id > ?)"
                " ORDER BY r.id LIMIT ?",
                (store_id, *params, after, limit + 1),
            ).fetchall()
        page = rows[:limit]
        items = [_record_json(*row[1:]) for row in page]
        next_after = page[-1][0] if page else after
        return items, next_after, len(rows) > limit

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.db.close()
