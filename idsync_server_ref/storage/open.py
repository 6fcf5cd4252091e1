"""Choose a storage backend by URL: :func:`open_storage`."""

from __future__ import annotations

from pathlib import Path

from .base import Storage

_SQLITE = "sqlite:///"
_POSTGRESQL = ("postgresql://", "postgres://")


def open_storage(url: str | Path, busy_timeout_ms: int = 5000) -> Storage:
    """Open the backend ``url`` names, migrating its database to the current schema.

    - ``sqlite:///relative/file.sqlite3`` or ``sqlite:////absolute/file.sqlite3``
      (the path is what follows the third slash), or a bare path: SQLite.
    - ``postgresql://user:password@host:port/dbname`` (libpq's URI, query
      parameters included): PostgreSQL, which needs the ``postgresql`` extra.

    ``busy_timeout_ms`` is how long a write waits for a lock before it fails
    with :class:`StorageBusy`. Raises ValueError for another ``scheme://``
    or a PostgreSQL URL without the extra installed, and
    :class:`StorageError` when the database cannot be opened.
    """
    if isinstance(url, Path):
        return _sqlite(url, busy_timeout_ms)
    if url.startswith(_SQLITE):
        return _sqlite(Path(url[len(_SQLITE) :]), busy_timeout_ms)
    if url.startswith(_POSTGRESQL):
        try:
            from .postgresql import PostgresqlStorage  # psycopg is an optional extra
        except ImportError as exc:
            raise ValueError(
                "PostgreSQL needs the postgresql extra: pip install 'idsync[postgresql]'"
                f" ({exc})"
            ) from exc
        return PostgresqlStorage(url, busy_timeout_ms=busy_timeout_ms)
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise ValueError(
            f"unknown database URL scheme {scheme!r}: use sqlite:///path, a file path,"
            " or postgresql://user@host:port/dbname"
        )
    return _sqlite(Path(url), busy_timeout_ms)


def sqlite_file(url: str | Path) -> Path | None:
    """The file of a SQLite database URL or path (None for PostgreSQL)."""
    if isinstance(url, Path):
        return url
    if url.startswith(_SQLITE):
        return Path(url[len(_SQLITE) :])
    if url.startswith(_POSTGRESQL) or "://" in url:
        return None
    return Path(url)


def _sqlite(path: Path, busy_timeout_ms: int) -> Storage:
    from .sqlite import SqliteStorage

    return SqliteStorage(path, busy_timeout_ms=busy_timeout_ms)
