"""The storage contract every server backend implements.

A backend keeps, per store, an append-only change log with strictly
increasing sequence numbers, the current state beside it (live records, their
index items, deleted keys), and what it applied per client for idempotent
uploads. Every log entry carries a random tag drawn when it is logged, and
every cursor a backend issues names the tag of the entry at its sequence, so
a cursor is only ever accepted on the history it was issued on. Driver
errors never leave a backend: they are wrapped once, as :class:`StorageBusy`
or :class:`StorageFailure`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from idsync_client.protocol import Change, Cursor, Outcome

if TYPE_CHECKING:
    from .accounts import AccountStore


class StorageError(Exception):
    """Root of the errors a storage backend raises."""


class StoreNotFound(StorageError):
    """The named store does not exist."""


class StoreDropped(StoreNotFound):
    """The named store was dropped; it stays dropped until re-created deliberately.

    ``epoch`` is the epoch it had when dropped. A subclass of
    :class:`StoreNotFound`: code that only cares whether a store is there
    need not tell them apart.
    """

    def __init__(self, name: str, epoch: str) -> None:
        super().__init__(name)
        self.epoch = epoch


class StoreExists(StorageError):
    """A store with that name exists already."""


class InvalidImport(StorageError, ValueError):
    """An export file is not valid; ``line`` is its 1-based line number (0: the whole file).

    Nothing was written.
    """

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


class ResetRequired(StorageError):
    """The cursor is not a point of the history the store holds now.

    It is from another epoch, behind the compaction horizon, past the head,
    or names another log entry than the one at its sequence (as after a
    restore from an older copy), or it names none (a cursor from before
    entry tags). The client reloads a snapshot.
    """


class StorageBusy(StorageError):
    """The database is locked by other work; retrying soon can succeed."""


class StorageFailure(StorageError):
    """The database failed; ``original`` is the driver's exception."""

    def __init__(self, message: str, original: BaseException | None = None) -> None:
        super().__init__(message)
        self.original = original


class SchemaTooNew(StorageFailure):
    """The database has a schema version newer than this code; it was left unchanged."""


@dataclass(frozen=True)
class StoreInfo:
    """A store's identity and figures at one instant."""

    name: str
    epoch: str
    head_seq: int
    horizon_seq: int
    live_records: int
    log_length: int
    created_at: float
    head_tag: str = ""
    #: The store's own retention in seconds; None: the server's default.
    retention_seconds: int | None = None
    #: An estimate of the space the store takes in the database, in bytes
    #: (its share of the tables, apportioned by log entries); None if unknown.
    bytes_on_disk: int | None = None

    @property
    def head_cursor(self) -> Cursor:
        """The cursor after the newest change (naming that change's log entry)."""
        return Cursor(self.epoch, self.head_seq, self.head_tag)

    def to_wire(self) -> dict[str, object]:
        """The JSON-ready form served by the stores endpoints."""
        return {
            "name": self.name,
            "epoch": self.epoch,
            "head_cursor": self.head_cursor.encode(),
            "head_seq": self.head_seq,
            "horizon_seq": self.horizon_seq,
            "live_records": self.live_records,
            "log_length": self.log_length,
            "created_at": self.created_at,
            "retention_seconds": self.retention_seconds,
            "bytes_on_disk": self.bytes_on_disk,
        }


@dataclass(frozen=True)
class CompactionReport:
    """What one :meth:`Storage.compact` did."""

    #: Stores looked at.
    stores: int
    #: Log entries removed (adds of records deleted since, and their deletes).
    entries_removed: int
    #: Each compacted store's horizon afterwards (stores with nothing to remove are absent).
    horizons: dict[str, int]
    #: Transactions it took (each one short).
    chunks: int
    #: Wall time, in seconds.
    duration: float


@dataclass(frozen=True)
class Page:
    """A page of JSON objects, already encoded, ready to splice into a response.

    ``cursor`` is where the next page starts (it names the log entry of the
    page's last change); ``more`` says whether one is ready now.
    """

    items_json: list[str]
    cursor: Cursor
    more: bool


@dataclass(frozen=True)
class SnapshotPage:
    """A page of live records as of ``at`` (a cursor), ordered by their sequence.

    Pass ``next_after`` back to get the next page; when ``more`` is false the
    snapshot is complete and the client continues pulling from ``at``.
    """

    records_json: list[str]
    at: Cursor
    next_after: int
    more: bool


@dataclass(frozen=True)
class FindPage:
    """A page of live records found by index item, as JSON text.

    Pass ``after`` back to get the next page; ``more`` says whether there is one.
    """

    records_json: list[str]
    after: int
    more: bool


#: Retention when neither the server nor the store sets one: seven days.
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600

#: Called with (store name, head seq) after a change to a store commits.
ChangeListener = Callable[[str, int], None]


class Storage(abc.ABC):
    """Contract of a server storage backend.

    Every method is safe to call from many threads at once. Every write is
    one database transaction: all of it is durable when the method returns,
    none of it when it raises.
    """

    @abc.abstractmethod
    def create_store(self, name: str, recreate: bool = False) -> StoreInfo:
        """Create an empty store with a fresh epoch; StoreExists if taken.

        A dropped name raises :class:`StoreDropped` unless ``recreate`` is
        true, which forgets the drop and starts the store afresh.
        """

    @abc.abstractmethod
    def list_stores(self) -> list[StoreInfo]:
        """All stores, by name."""

    @abc.abstractmethod
    def get_store(self, name: str) -> StoreInfo:
        """One store's figures; StoreNotFound if missing."""

    @abc.abstractmethod
    def drop_store(self, name: str) -> None:
        """Delete a store, its log and its state; StoreNotFound if missing.

        The name is remembered with its last epoch: every later call naming
        it raises :class:`StoreDropped` (not plain StoreNotFound) until it is
        created again with ``recreate=True`` or imported; that store gets a
        new epoch, so old cursors answer ResetRequired.
        """

    @abc.abstractmethod
    def set_retention(self, name: str, seconds: int | None) -> StoreInfo:
        """Set how long the store keeps deleted records' log entries (None: the default).

        ValueError for a negative number; StoreNotFound if missing.
        """

    @abc.abstractmethod
    def compact(
        self,
        name: str | None = None,
        now: float | None = None,
        default_retention: int = DEFAULT_RETENTION_SECONDS,
    ) -> CompactionReport:
        """Remove old log entries of deleted records from one store (every store if None).

        An entry goes when it belongs to a record whose delete was logged
        more than the store's retention (``default_retention`` for stores
        without their own) before ``now``: the add and the delete both go.
        The record's row stays (a re-add of its key is still
        ``key_deleted``) and so do the clients' idempotency rows (a replayed
        change number is answered as the first time). The horizon moves to
        the newest entry removed, in the same transaction as the removal,
        so every cursor that could miss a removed delete is behind it and
        gets ResetRequired; a cursor at the horizon itself stays valid.
        Works in chunks, each one short transaction, oldest first.
        """

    @abc.abstractmethod
    def vacuum(self) -> None:
        """Give the space freed by compaction back to the file system, where the backend can."""

    @abc.abstractmethod
    def export_store(self, name: str) -> Iterator[str]:
        """The store as NDJSON lines (see :mod:`.transfer`), read in one snapshot."""

    @abc.abstractmethod
    def import_store(self, name: str, lines: Iterable[str]) -> StoreInfo:
        """Create store ``name`` from exported lines, with a new epoch, in one transaction.

        :class:`InvalidImport` (writing nothing) for a bad line; StoreExists
        if the store exists. A dropped name may be imported (that is as
        deliberate as a re-create).
        """

    @abc.abstractmethod
    def push(self, name: str, client_id: str, changes: Sequence[Change]) -> list[Outcome]:
        """Apply a client's changes in order, in one transaction.

        Returns one outcome per change, in order. A change number this client
        sent before, with the same body, returns its first outcome and
        applies nothing; with another body it is rejected
        (``change_number_conflict``). An add of an existing key is
        ``duplicate`` only when its index items and value are equal as JSON,
        type-exact (see :mod:`.equality`). A rejection never stops the
        changes after it. Each applied change gets the next sequence number
        and a new random tag.
        """

    @abc.abstractmethod
    def pull(self, name: str, after: Cursor | None, limit: int, max_bytes: int) -> Page:
        """Changes after ``after`` (from the start when None), oldest first.

        At most ``limit`` changes and, past the first, about ``max_bytes`` of
        JSON. Raises ResetRequired when ``after`` is not a cursor this store
        issued on the history it holds now: from another epoch, behind the
        horizon, past the head, without a tag past seq 0, or with a tag that
        is not the one of the entry at its seq. No change is ever skipped: a
        reader that saw seq N later sees every seq > N. The check costs one
        indexed lookup (the entry at the cursor's seq).
        """

    @abc.abstractmethod
    def snapshot(
        self, name: str, at: Cursor | None, after: int, limit: int, max_bytes: int
    ) -> SnapshotPage:
        """Live records as of ``at`` (now when None), with sequence > ``after``.

        Pages of one snapshot are consistent with each other while writes go
        on. ResetRequired if ``at`` is not a cursor of the history the store
        holds now (the same checks as :meth:`pull`).
        """

    @abc.abstractmethod
    def get_record(self, name: str, key: str) -> str | None:
        """The live record with ``key`` as JSON text, or None."""

    @abc.abstractmethod
    def find(self, name: str, item: str, prefix: bool, after: int, limit: int) -> FindPage:
        """Live records with index item ``item`` (or starting with it).

        A prefix query is ``item <= x < protocol.prefix_upper_bound(item)``.
        Pass the page's ``after`` back to get the next page.
        """

    @abc.abstractmethod
    def listen(self, callback: ChangeListener) -> None:
        """Call ``callback(store_name, head_seq)`` after every committed change to a store.

        Called from any thread (a writer's, or the backend's own), after the
        transaction committed, never inside it, for every push that applied
        something and commits after ``listen`` returned; a push that applied
        nothing causes no call. A backend that serves several processes on
        one database also calls it for changes committed by the others.
        Calls may arrive late, and a backend that may have missed changes
        (a lost connection) calls it for every store rather than stay
        silent: a listener re-reads the store rather than trust
        ``head_seq`` as the latest. A callback that raises is logged and
        does not stop the others.
        """

    @abc.abstractmethod
    def accounts(self) -> AccountStore:
        """The users, tokens and store grants kept in the same database."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections. The backend is unusable afterwards."""
