"""Storage backends of the reference server, behind one contract (:class:`Storage`)."""

from .base import (
    DEFAULT_RETENTION_SECONDS,
    ChangeListener,
    CompactionReport,
    FindPage,
    InvalidImport,
    Page,
    ResetRequired,
    SchemaTooNew,
    SnapshotPage,
    Storage,
    StorageBusy,
    StorageError,
    StorageFailure,
    StoreDropped,
    StoreExists,
    StoreInfo,
    StoreNotFound,
)
from .open import open_storage
from .sqlite import SqliteStorage

__all__ = [
    "DEFAULT_RETENTION_SECONDS",
    "ChangeListener",
    "CompactionReport",
    "FindPage",
    "InvalidImport",
    "Page",
    "ResetRequired",
    "SchemaTooNew",
    "SnapshotPage",
    "SqliteStorage",
    "Storage",
    "StorageBusy",
    "StorageError",
    "StorageFailure",
    "StoreDropped",
    "StoreExists",
    "StoreInfo",
    "StoreNotFound",
    "open_storage",
]
