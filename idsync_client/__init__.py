"""idsync client: offline-first sync for Python desktop apps.

>>> from idsync_client import Client
>>> with Client("notes.db", server="http://127.0.0.1:8765") as client:  # doctest: +SKIP
...     notes = client.store("notes")
...     key = notes.add({"title": "Hello"}, index=["tag:work"])
...     client.sync()

The names below are imported on first use: importing the package, or its
protocol layer (``idsync_client.protocol``, ``jsoncodec``, ``wire``) as the
server does, loads no HTTP library and starts nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import Client
    from .errors import (
        AuthError,
        ClientClosed,
        IdsyncError,
        LocalStorageError,
        PermanentError,
        ResetRequired,
        StoreDropped,
        StoreNotFound,
        SyncLocked,
        TemporaryError,
    )
    from .progress import SyncProgress
    from .protocol import Limits, ProtocolViolation
    from .records import ChangeEvent, ConflictEvent, KeyInUse, Record, RejectedChange
    from .retry import RetryBudget, RetryPolicy
    from .status import SyncStatus
    from .store import Store
    from .subscriptions import Subscription
    from .sync import SyncReport
    from .wire import MalformedAnswer

#: Where each public name lives, for the lazy import below.
_HOMES: dict[str, str] = {
    "AuthError": "errors",
    "ChangeEvent": "records",
    "Client": "client",
    "ClientClosed": "errors",
    "ConflictEvent": "records",
    "IdsyncError": "errors",
    "KeyInUse": "records",
    "Limits": "protocol",
    "LocalStorageError": "errors",
    "MalformedAnswer": "wire",
    "PermanentError": "errors",
    "ProtocolViolation": "protocol",
    "Record": "records",
    "RejectedChange": "records",
    "ResetRequired": "errors",
    "RetryBudget": "retry",
    "RetryPolicy": "retry",
    "Store": "store",
    "StoreDropped": "errors",
    "StoreNotFound": "errors",
    "Subscription": "subscriptions",
    "SyncLocked": "errors",
    "SyncProgress": "progress",
    "SyncReport": "sync",
    "SyncStatus": "status",
    "TemporaryError": "errors",
}

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
    "MalformedAnswer",
    "PermanentError",
    "ProtocolViolation",
    "Record",
    "RejectedChange",
    "ResetRequired",
    "RetryBudget",
    "RetryPolicy",
    "Store",
    "StoreDropped",
    "StoreNotFound",
    "Subscription",
    "SyncLocked",
    "SyncProgress",
    "SyncReport",
    "SyncStatus",
    "TemporaryError",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
