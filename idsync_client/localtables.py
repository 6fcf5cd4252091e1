"""What the parts of the local database share: the SQL access they need, and
how a record row is read.

:class:`~.localdb.LocalDB` provides it; :mod:`.settling`, :mod:`.snapshotload`
and :mod:`.pulledpages` add their methods to it and are typed against this
protocol, so each part only sees the access it uses.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from . import jsoncodec
from .records import Record

#: The columns :func:`record_from_row` reads, in order.
RECORD_COLUMNS = "key, index_json, value_json, seq"
#: The keys of a store's pending deletes (one parameter: the store).
PENDING_DELETES = "SELECT key FROM outbox WHERE store = ? AND op = 'delete'"


def record_from_row(row: Sequence[Any]) -> Record:
    """A :class:`Record` from a row of :data:`RECORD_COLUMNS`."""
    key, index_json, value_json, seq = row
    return Record(key, tuple(jsoncodec.loads(index_json)), value_json, seq)


class LocalTables(Protocol):
    """The SQL access of one local database file (see :class:`~.localdb.LocalDB`)."""

    def transaction(self, durable: bool = True) -> contextlib.AbstractContextManager[None]:
        """One write transaction; nested ones are savepoints."""

    def _sql(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor: ...

    def _many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...

    def _remove(self, store: str, record_id: int, index: Sequence[str]) -> None: ...

    def _remove_index(self, store: str, record_id: int, index: Sequence[str]) -> None: ...

    def _has(self, table: str, store: str) -> bool: ...

    def _index_from(self, first: int) -> None: ...

    def _insert_records(self, store: str, records: Sequence[Record]) -> int: ...

    def _index_new_records(self, store: str, where: str, params: Sequence[Any]) -> None: ...

    def _set_cursor(self, store: str, cursor: str) -> None: ...

    def cursor(self, store: str) -> str | None:
        """The cursor after the last pulled change of ``store``, if any."""
