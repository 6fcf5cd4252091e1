"""Storage backends of the reference server, behind one contract (:class:`Storage`)."""

from .base import (
    ChangeListener,
    FindPage,
    Page,
    ResetRequired,
    SchemaTooNew,
    SnapshotPage,
    Storage,
    StorageBusy,
    StorageError,
    StorageFailure,
    StoreExists,
    StoreInfo,
    StoreNotFound,
)
from .open import open_storage
from .sqlite import SqliteStorage

__all__ = [
    "ChangeListener",
    "FindPage",
    "Page",
    "ResetRequired",
    "SchemaTooNew",
    "SnapshotPage",
    "SqliteStorage",
    "Storage",
    "StorageBusy",
    "StorageError",
    "StorageFailure",
    "StoreExists",
    "StoreInfo",
    "StoreNotFound",
    "open_storage",
]
