"""Storage backends of the reference server, behind one contract (:class:`Storage`)."""

from .base import (
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
from .sqlite import SqliteStorage

__all__ = [
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
]
