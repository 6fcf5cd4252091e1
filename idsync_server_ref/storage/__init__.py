"""Storage backends of the reference server, behind one contract (:class:`Storage`)."""

from .base import (
    CursorAhead,
    Page,
    ResetRequired,
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
    "CursorAhead",
    "Page",
    "ResetRequired",
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
