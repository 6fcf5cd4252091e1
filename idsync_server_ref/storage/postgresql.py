"""PostgreSQL storage backend: several stateless server processes on one database.

Install the ``postgresql`` extra (psycopg 3). Open it with
``open_storage("postgresql://user:password@host:port/dbname")``; opening
migrates the database to the current schema (:mod:`.postgresql_schema`).

**No change is ever skipped.** On PostgreSQL, values taken from a sequence
become visible at commit, and commits happen in any order: a writer that took
seq 7 can commit after one that took seq 8, and a reader that saw 8 would
pass 7 for good. So log appends are serialised per store: every push first
takes the store's row lock (``SELECT ... FROM stores WHERE name = %s FOR
UPDATE``) and numbers its changes from ``stores.head_seq``. The next writer
of that store waits for the commit, so sequence numbers commit in order and
a reader that sees seq N already sees every seq below it. The cost: pushes
to one store run one at a time (each holds the lock for its transaction,
a few round trips); pushes to different stores still run in parallel.
Fencing reads by transaction visibility (``pg_snapshot_xmin``) would let
writers of one store overlap, at the price of every reader's query and of
changes showing up late; one store's push rate has not needed it.

**Change notification.** A push that applied something sends ``NOTIFY
idsync_changes, '<store> <head_seq>'`` inside its transaction, so it is
delivered at commit, to every process. Each instance that has listeners
keeps one ``LISTEN`` connection in a daemon thread, which calls them; it
reconnects when the connection is lost and then calls them once for every
store, since notifications sent meanwhile are gone.

**Connections** come from peewee's pool (``PooledPostgresqlDatabase``): a
request checks one out and returns it when done, so idle threads (long-polls
waiting on a notification) hold none, the number per process is bounded, and
a connection that died (server restart, network) is discarded at check-out
or check-in: the call that met the failure gets :class:`StorageFailure`, the
next one a fresh connection.

Driver errors are wrapped once: lock timeouts, serialization failures and
deadlocks as :class:`StorageBusy`, the rest as :class:`StorageFailure`.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import psycopg
from peewee import PeeweeException
from playhouse.pool import MaxConnectionsExceeded, PooledPostgresqlDatabase

from idsync_client import jsoncodec, killpoint
from idsync_client.protocol import Change, Cursor, Outcome, prefix_upper_bound

from . import postgresql_history, postgresql_schema
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
from .postgresql_history import CONTENT
from .postgresql_listen import CHANNEL, ListenerThread
from .push_rules import KnownRecord, PushBatch
from .store_rows import check_cursor, store_info

# SQLSTATEs after which retrying soon can succeed: lock_not_available,
# serialization_failure, deadlock_detected.
_BUSY_STATES = {"55P03", "40001", "40P01"}

# The tag at the head is kept in the store's row when compaction removed its entry.
_STORE_INFO = (
    "SELECT s.name, s.epoch, s.head_seq, s.horizon_seq, s.live_records, s.log_length,"
    " s.created_at, coalesce(h.tag, CASE WHEN s.head_seq = s.horizon_seq THEN s.horizon_tag END),"
    " s.retention_seconds FROM stores s"
    " LEFT JOIN changes h ON h.store_id = s.id AND h.seq = s.head_seq"
)
_TABLES = ("stores", "changes", "records", "index_items", "client_changes")

# A log entry as pull serves it (json_text.change_json): to_json escapes a
# key as orjson does (keys hold no control characters).
_CHANGE_JSON = (
    'CASE op WHEN \'add\' THEN \'{"seq":\' || seq || \',"op":"add","key":\' || to_json(key)'
    " || ',\"index\":' || index_json || ',\"value\":' || value_json || '}'"
    ' ELSE \'{"seq":\' || seq || \',"op":"delete","key":\' || to_json(key) || \'}\' END'
)
# A live record as a snapshot serves it (json_text.record_json).
_RECORD_JSON = (
    "'{\"key\":' || to_json(r.key) || ',\"index\":' || c.index_json"
    " || ',\"value\":' || c.value_json || ',\"seq\":' || r.added_seq || '}'"
)
# A push's reads: the client's prior outcomes for the batch's change numbers,
# and the rows of the keys it touches (a deleted record's entries may be
# compacted away: its row alone says the key was used). The numbers and keys
# come as JSON arrays and each is looked up by its own index probe (the
# primary key, the (store, key) index): OFFSET 0 keeps the planner from
# turning the probes into a scan of the store filtered by the whole list,
# which it picks when its statistics are behind and which grows as the
# store times the batch. Both answers go back as JSON arrays of rows.
_BATCH_ROWS = (
    "SELECT (SELECT coalesce(json_agg(json_build_array(p.n, p.body_hash, p.status, p.seq,"
    " p.code, p.message)), '[]')::text"
    " FROM jsonb_array_elements_text(%(numbers)s::jsonb) AS w(n) CROSS JOIN LATERAL"
    " (SELECT n, body_hash, status, seq, code, message FROM client_changes"
    " WHERE store_id = %(store)s AND client_id = %(client)s AND n = w.n::bigint OFFSET 0) p),"
    " (SELECT coalesce(json_agg(json_build_array(r.key, r.id, coalesce(c.index_json, '[]'),"
    " coalesce(c.value_json, 'null'), r.added_seq, r.deleted_seq)), '[]')::text"
    " FROM jsonb_array_elements_text(%(keys)s::jsonb) AS w(key) CROSS JOIN LATERAL"
    " (SELECT store_id, key, id, added_seq, deleted_seq FROM records"
    " WHERE store_id = %(store)s AND key = w.key OFFSET 0) r"
    " LEFT JOIN changes c ON c.store_id = r.store_id AND c.seq = r.added_seq)"
)
# A push's writes, each table's rows a JSON array: log entries, new records
# (numbered once from the table's sequence, each with its index items),
# deletions and their index items, and the outcomes to replay.
_WRITE_BATCH = (
    "WITH logged AS (INSERT INTO changes (store_id, seq, op, key, index_json, value_json, tag,"
    " logged_at) SELECT %(store)s, (r->>0)::bigint, r->>1, r->>2, r->>3, r->>4,"
    " (r->>5)::bigint, %(now)s FROM jsonb_array_elements(%(log)s::jsonb) r),"
    " numbered AS (SELECT r, nextval(pg_get_serial_sequence('records', 'id')) AS id"
    " FROM jsonb_array_elements(%(new)s::jsonb) r),"
    " added AS (INSERT INTO records (id, store_id, key, added_seq, deleted_seq)"
    " SELECT id, %(store)s, r->>0, (r->>1)::bigint, (r->>2)::bigint FROM numbered),"
    " indexed AS (INSERT INTO index_items (store_id, item, record_id)"
    " SELECT %(store)s, jsonb_array_elements_text(r->3), id FROM numbered),"
    " deleted AS (UPDATE records SET deleted_seq = (r->>1)::bigint"
    " FROM jsonb_array_elements(%(gone)s::jsonb) r WHERE records.id = (r->>0)::bigint),"
    # By the index table's own key (store, item, record): no scan.
    " unindexed AS (DELETE FROM index_items i USING jsonb_array_elements(%(unindex)s::jsonb) r"
    " WHERE i.store_id = %(store)s AND i.item = r->>0 AND i.record_id = (r->>1)::bigint),"
    " answered AS (INSERT INTO client_changes (store_id, client_id, n, body_hash, status, seq,"
    " code, message) SELECT %(store)s, %(client)s, (r->>0)::bigint, r->>1, r->>2,"
    " (r->>3)::bigint, r->>4, r->>5 FROM jsonb_array_elements(%(outcomes)s::jsonb) r) "
)
_MOVE_HEAD = (
    "UPDATE stores SET head_seq = %(head)s, log_length = log_length + %(logged)s,"
    " live_records = live_records + %(live)s WHERE id = %(store)s"
    " RETURNING pg_notify(%(channel)s, %(payload)s)"
)
_NOTHING_LOGGED = "SELECT 1"


def _sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of the driver error under ``exc`` (peewee wraps psycopg's)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        state = getattr(current, "sqlstate", None)
        if state:
            return str(state)
        todo += [current.__cause__, current.__context__]
        todo += [arg for arg in current.args if isinstance(arg, BaseException)]
    return None


class PostgresqlStorage(Storage):
    """The PostgreSQL backend on the database ``url`` names (libpq URI).

    ``busy_timeout_ms`` bounds how long a push waits for its store's lock
    before :class:`StorageBusy`; ``max_connections`` bounds this instance's
    pool (a request waits up to the same timeout for a free connection).
    """

    def __init__(self, url: str, busy_timeout_ms: int = 5000, max_connections: int = 32) -> None:
        self.url = url
        self.busy_timeout_ms = busy_timeout_ms
        self._listeners = Listeners()
        self._listener: ListenerThread | None = None
        self._listen_lock = threading.Lock()
        self.db = PooledPostgresqlDatabase(
            url,
            max_connections=max_connections,
            timeout=max(busy_timeout_ms / 1000, 0.001),
            stale_timeout=600,
            prefer_psycopg3=True,
        )
        with self._guard(), self.db.connection_context():
            migrate(
                postgresql_schema.PostgresqlSchemaTarget(self.db),
                postgresql_schema.STEPS,
                "the PostgreSQL database",
                base=postgresql_schema.BASE_VERSION,
            )

    # -- plumbing -----------------------------------------------------------

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Wrap driver errors once, at the storage boundary."""
        try:
            yield
        except MaxConnectionsExceeded as exc:
            raise StorageBusy(f"no free database connection: {exc}") from exc
        except (PeeweeException, psycopg.Error) as exc:
            if _sqlstate(exc) in _BUSY_STATES:
                raise StorageBusy(str(exc)) from exc
            raise StorageFailure(str(exc), original=exc) from exc

    @contextlib.contextmanager
    def _write(self) -> Iterator[None]:
        # READ COMMITTED: the store's row lock orders writers, and a writer
        # that waited for it reads the row as its predecessor committed it.
        with self._guard(), self.db.connection_context(), self.db.atomic():
            self._sql("SELECT set_config('lock_timeout', %s, true)", (f"{self.busy_timeout_ms}ms",))
            yield

    @contextlib.contextmanager
    def _read(self) -> Iterator[None]:
        # One snapshot for every statement of the read (the store row and the
        # log agree); a read-only transaction never fails to serialise.
        with (
            self._guard(),
            self.db.connection_context(),
            self.db.atomic(isolation_level="REPEATABLE READ"),
        ):
            yield

    def accounts(self) -> AccountStore:
        """The account tables of this database."""
        return SqlAccounts(self._read, self._write, self._sql, "%s")

    def _sql(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> Any:
        return self.db.execute_sql(sql, params)

    def _locked_store(self, name: str) -> tuple[int, int]:
        """Lock the store's row until the commit; its id and head. Taken first in every push."""
        row = self._sql(
            "SELECT id, head_seq FROM stores WHERE name = %s FOR UPDATE", (name,)
        ).fetchone()
        if row is None:
            raise self._missing(name)
        return int(row[0]), int(row[1])

    def _missing(self, name: str) -> StoreNotFound:
        """The error for a store that is not there: dropped, or never created."""
        row = self._sql("SELECT epoch FROM dropped_stores WHERE name = %s", (name,)).fetchone()
        return StoreNotFound(name) if row is None else StoreDropped(name, row[0])

    def _store_at(self, name: str, seq: int | None) -> tuple[int, str, int, int, str]:
        """The store's id, epoch, head and horizon, and the tag of its entry at ``seq``."""
        # The entry at the horizon may have been compacted away: its tag is
        # kept in the store's row.
        row = self._sql(
            "SELECT s.id, s.epoch, s.head_seq, s.horizon_seq, coalesce(c.tag, CASE WHEN"
            " coalesce(%s::bigint, s.head_seq) = s.horizon_seq THEN s.horizon_tag END)"
            " FROM stores s LEFT JOIN changes c ON c.store_id = s.id"
            " AND c.seq = coalesce(%s::bigint, s.head_seq) WHERE s.name = %s",
            (seq, seq, name),
        ).fetchone()
        if row is None:
            raise self._missing(name)
        store_id, epoch, head, horizon, tag = row
        return store_id, epoch, head, horizon, tag_text(tag)

    def _store_id(self, name: str) -> int:
        row = self._sql("SELECT id FROM stores WHERE name = %s", (name,)).fetchone()
        if row is None:
            raise self._missing(name)
        return int(row[0])

    def _info(self, name: str) -> StoreInfo:
        row = self._sql(f"{_STORE_INFO} WHERE s.name = %s", (name,)).fetchone()
        if row is None:
            raise self._missing(name)
        return store_info(row, int(self._bytes_per_entry() * row[5]))

    def _bytes_per_entry(self) -> float:
        """The server tables' size (with indexes and TOAST) over their log entries."""
        sizes = " + ".join(f"pg_total_relation_size('{table}')" for table in _TABLES)
        total, entries = self._sql(
            f"SELECT {sizes}, (SELECT coalesce(sum(log_length), 0) FROM stores)"
        ).fetchone()
        return float(total) / float(entries) if entries else 0.0

    # -- stores -------------------------------------------------------------

    def create_store(self, name: str, recreate: bool = False) -> StoreInfo:
        with self._write():
            missing = self._missing(name)
            if isinstance(missing, StoreDropped):
                if not recreate:
                    raise missing
                self._sql("DELETE FROM dropped_stores WHERE name = %s", (name,))
            row = self._sql(
                "INSERT INTO stores (name, epoch, created_at) VALUES (%s, %s, %s)"
                " ON CONFLICT (name) DO NOTHING RETURNING id",
                (name, secrets.token_hex(8), time.time()),
            ).fetchone()
            if row is None:
                raise StoreExists(name)
            return self._info(name)

    def list_stores(self) -> list[StoreInfo]:
        with self._read():
            rows = self._sql(f'{_STORE_INFO} ORDER BY s.name COLLATE "C"').fetchall()
            per_entry = self._bytes_per_entry()
        return [store_info(row, int(per_entry * row[5])) for row in rows]

    def get_store(self, name: str) -> StoreInfo:
        with self._read():
            return self._info(name)

    def drop_store(self, name: str) -> None:
        with self._write():
            store_id = self._locked_store(name)[0]
            for table in ("changes", "records", "index_items", "client_changes"):
                self._sql(f"DELETE FROM {table} WHERE store_id = %s", (store_id,))
            epoch = self._sql(
                "DELETE FROM stores WHERE id = %s RETURNING epoch", (store_id,)
            ).fetchone()[0]
            self._sql(
                "INSERT INTO dropped_stores (name, epoch, dropped_at) VALUES (%s, %s, %s)"
                " ON CONFLICT (name) DO UPDATE SET epoch = EXCLUDED.epoch,"
                " dropped_at = EXCLUDED.dropped_at",
                (name, epoch, time.time()),
            )

    def set_retention(self, name: str, seconds: int | None) -> StoreInfo:
        if seconds is not None and seconds < 0:
            raise ValueError("retention must be zero or more seconds")
        with self._write():
            store_id = self._locked_store(name)[0]
            self._sql("UPDATE stores SET retention_seconds = %s WHERE id = %s", (seconds, store_id))
            return self._info(name)

    # -- history (postgresql_history) ------------------------------------------------

    def compact(
        self,
        name: str | None = None,
        now: float | None = None,
        default_retention: int = DEFAULT_RETENTION_SECONDS,
    ) -> CompactionReport:
        return postgresql_history.compact(self, name, now, default_retention)

    def vacuum(self) -> None:
        postgresql_history.vacuum(self)

    def export_store(self, name: str) -> Iterator[str]:
        return postgresql_history.export_store(self, name)

    def import_store(self, name: str, lines: Iterable[str]) -> StoreInfo:
        return postgresql_history.import_store(self, name, lines)

    # -- writes -------------------------------------------------------------

    def push(self, name: str, client_id: str, changes: Sequence[Change]) -> list[Outcome]:
        with self._write():
            store_id, head = self._locked_store(name)
            batch = PushBatch(store_id, head, 0)
            batch.prior, batch.known = self._batch_rows(store_id, client_id, changes)
            outcomes = [batch.apply(change) for change in changes]
            self._write_batch(name, store_id, client_id, batch)
            killpoint.reached("server.push.before_commit")
        killpoint.reached("server.push.committed")
        return outcomes

    def _batch_rows(
        self, store_id: int, client_id: str, changes: Sequence[Change]
    ) -> tuple[dict[int, tuple[Any, ...]], dict[str, KnownRecord]]:
        """The client's prior outcomes for the batch's numbers and the rows of its keys.

        One statement (after the store's lock: it sees every earlier push), both
        answers as JSON text: orjson reads them faster than rows are fetched.
        """
        numbers = jsoncodec.dumps([c.n for c in changes])
        keys = jsoncodec.dumps(sorted({c.key for c in changes}))
        params = {"store": store_id, "client": client_id, "numbers": numbers, "keys": keys}
        prior_json, known_json = self._sql(_BATCH_ROWS, params).fetchone()
        prior = {row[0]: tuple(row[1:]) for row in jsoncodec.loads(prior_json)}
        known = {row[0]: KnownRecord(*row[1:]) for row in jsoncodec.loads(known_json)}
        return prior, known

    def _write_batch(self, name: str, store_id: int, client_id: str, batch: PushBatch) -> None:
        """Write what the batch collected in one statement: one round trip, whatever its size.

        The rows travel as JSON documents (encoded by orjson, read by
        PostgreSQL), not as arrays the driver would adapt value by value. New
        records get their ids from the table's sequence in the statement.
        """
        new = [(key, rec) for key, rec in batch.known.items() if rec.new]
        gone = [rec for rec in batch.known.values() if rec.deleted_now and not rec.new]
        params: dict[str, Any] = {
            "store": store_id,
            "client": client_id,
            "now": time.time(),
            "log": jsoncodec.dumps(batch.log),
            # A record deleted by the same batch is logged, never indexed.
            "new": jsoncodec.dumps(
                [
                    (key, r.added_seq, r.deleted_seq, r.index if r.deleted_seq is None else ())
                    for key, r in new
                ]
            ),
            "gone": jsoncodec.dumps([(r.id, r.deleted_seq) for r in gone]),
            "unindex": jsoncodec.dumps(
                [(item, r.id) for r in gone for item in jsoncodec.loads(r.index_json)]
            ),
            "outcomes": jsoncodec.dumps(batch.client_rows),
        }
        if not batch.log:
            self._sql(_WRITE_BATCH + _NOTHING_LOGGED, params)
            return
        # The notification is delivered at commit, to every listening process;
        # never if the transaction rolls back.
        params.update(
            head=batch.head,
            logged=len(batch.log),
            live=batch.live_delta,
            channel=CHANNEL,
            payload=f"{name} {batch.head}",
        )
        self._sql(_WRITE_BATCH + _MOVE_HEAD, params)

    def _rows(
        self,
        sql: str,
        before: tuple[Any, ...],
        rows: Sequence[Sequence[Any]],
        after: tuple[Any, ...] = (),
    ) -> None:
        """Run ``sql`` once with ``rows`` passed column by column as arrays; nothing if none."""
        if rows:
            columns = [list(column) for column in zip(*rows, strict=True)]
            self._sql(sql, (*before, *columns, *after))

    # -- reads --------------------------------------------------------------

    def pull(self, name: str, after: Cursor | None, limit: int, max_bytes: int) -> Page:
        with self._read():
            store_id, epoch, head, horizon, tag = self._store_at(name, after.seq if after else 0)
            after = after or Cursor(epoch, 0)
            check_cursor(after, epoch, head, horizon, tag)
            # PostgreSQL writes each change's JSON itself (as SQLite does): the
            # stored JSON text is spliced, and no Python code runs per column.
            rows = self._sql(
                f"SELECT seq, tag, {_CHANGE_JSON} FROM changes"
                " WHERE store_id = %s AND seq > %s ORDER BY seq LIMIT %s",
                (store_id, after.seq, limit),
            ).fetchall()
        items = fill_page((row[2] for row in rows), max_bytes)
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
                f"SELECT {_RECORD_JSON}, r.added_seq FROM records r {CONTENT}"
                " WHERE r.store_id = %s AND r.added_seq > %s AND r.added_seq <= %s"
                " AND (r.deleted_seq IS NULL OR r.deleted_seq > %s)"
                " ORDER BY r.added_seq LIMIT %s",
                (store_id, after, at.seq, at.seq, limit + 1),
            ).fetchall()
        items = fill_page((row[0] for row in rows[:limit]), max_bytes)
        last = rows[len(items) - 1][1] if items else after
        return SnapshotPage(items, at, last, len(items) < len(rows))

    def get_record(self, name: str, key: str) -> str | None:
        with self._read():
            store_id = self._store_id(name)
            row = self._sql(
                f"SELECT r.key, c.index_json, c.value_json, r.added_seq FROM records r {CONTENT}"
                " WHERE r.store_id = %s AND r.key = %s AND r.deleted_seq IS NULL",
                (store_id, key),
            ).fetchone()
        return None if row is None else record_json(*row)

    def find(self, name: str, item: str, prefix: bool, after: int, limit: int) -> FindPage:
        if prefix:
            upper = prefix_upper_bound(item)
            where, params = "item >= %s", [item]
            if upper is not None:
                where += " AND item < %s"
                params.append(upper)
        else:
            where, params = "item = %s", [item]
        with self._read():
            store_id = self._store_id(name)
            rows = self._sql(
                f"SELECT r.id, r.key, c.index_json, c.value_json, r.added_seq FROM records r {CONTENT}"
                " WHERE r.id IN (SELECT record_id FROM index_items"
                f"   WHERE store_id = %s AND {where} AND record_id > %s)"
                " ORDER BY r.id LIMIT %s",
                (store_id, *params, after, limit + 1),
            ).fetchall()
        page = rows[:limit]
        items = [record_json(*row[1:]) for row in page]
        next_after = page[-1][0] if page else after
        return FindPage(items, next_after, len(rows) > limit)

    # -- notification and shutdown ------------------------------------------

    def listen(self, callback: ChangeListener) -> None:
        """Call ``callback`` after each change committed by any process on this database.

        The first call starts this instance's LISTEN thread and returns once
        it listens (or after ``busy_timeout_ms`` if the database cannot be
        reached: the thread keeps trying).
        """
        self._listeners.add(callback)
        with self._listen_lock:
            if self._listener is None:
                self._listener = ListenerThread(self.url, self._listeners, self._heads)
                self._listener.start()
                self._listener.ready.wait(max(self.busy_timeout_ms / 1000, 0.1))

    def _heads(self) -> list[tuple[str, int]]:
        """Every store's name and head, for listeners after notifications may have been lost."""
        with self._read():
            rows = self._sql("SELECT name, head_seq FROM stores").fetchall()
        return [(str(name), int(head)) for name, head in rows]

    def close(self) -> None:
        """Stop the LISTEN thread and close every pooled connection."""
        with self._listen_lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()
        with contextlib.suppress(Exception):
            self.db.close_all()
