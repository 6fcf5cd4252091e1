"""Opening an idsync SQLite file the one way both client and server do it."""

from __future__ import annotations

import re
from pathlib import Path

from peewee import SqliteDatabase

SYNCHRONOUS_LEVELS = ("FULL", "NORMAL", "EXTRA")


def open_database(
    path: str | Path, synchronous: str = "FULL", busy_timeout_ms: int = 5000
) -> SqliteDatabase:
    """A peewee database on ``path`` (its folder created): WAL, the given durability,
    a busy timeout. Connections open lazily, one per thread."""
    level = synchronous.upper()
    if level not in SYNCHRONOUS_LEVELS:
        raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS_LEVELS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return SqliteDatabase(
        str(path),
        pragmas={
            "journal_mode": "wal",
            "synchronous": level,
            "busy_timeout": busy_timeout_ms,
            "foreign_keys": 0,
        },
        timeout=busy_timeout_ms / 1000,
    )


_ROLLBACK_GONE = re.compile("cannot rollback|no such savepoint")


def root_failure(exc: BaseException) -> BaseException:
    """The error that started it: when SQLite already rolled back a transaction
    (disk full, I/O error), the rollback that follows fails ("cannot rollback -
    no transaction is active", or "no such savepoint" for a rollback to a
    savepoint) and hides the real failure in ``__context__``."""
    seen: BaseException = exc
    while _ROLLBACK_GONE.search(str(seen)) and seen.__context__ is not None:
        seen = seen.__context__
    return seen
