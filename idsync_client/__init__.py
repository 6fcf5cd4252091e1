"""idsync client: offline-first sync for Python desktop apps.

>>> from idsync_client import Client
>>> with Client("notes.db", server="http://127.0.0.1:8765") as client:  # doctest: +SKIP
...     notes = client.store("notes")
...     key = notes.add({"title": "Hello"}, index=["tag:work"])
...     client.sync()
"""

from .client import Client
from .errors import (
    AuthError,
    ClientClosed,
    IdsyncError,
    LocalStorageError,
    PermanentError,
    ResetRequired,
    StoreNotFound,
    SyncLocked,
    TemporaryError,
)
from .protocol import Limits, ProtocolViolation
from .records import ChangeEvent, ConflictEvent, KeyInUse, Record, RejectedChange
from .retry import RetryBudget, RetryPolicy
from .status import SyncStatus
from .store import Store
from .subscriptions import Subscription
from .sync import SyncReport

__all__ = [
    "AuthError",
    "ChangeEvent",
    "Client",
    "ClientClosed",
    "ConflictEvent",
    "IdsyncError",
    "KeyInUse",
    "Limits",
    "LocalStorageError",
    "PermanentError",
    "ProtocolViolation",
    "Record",
    "RejectedChange",
    "ResetRequired",
    "RetryBudget",
    "RetryPolicy",
    "Store",
    "StoreNotFound",
    "Subscription",
    "SyncLocked",
    "SyncReport",
    "SyncStatus",
    "TemporaryError",
]
__version__ = "0.1.0"
