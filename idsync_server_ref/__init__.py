"""The idsync reference server: an append-only change log per store over HTTP.

Run it with ``idsync-server``; embed it with :class:`ServerApp` over a
:class:`~idsync_server_ref.storage.Storage` backend.

The names below are imported on first use, so that the light modules
(``config``, ``process``) work where the server's extra is not installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import ServerApp
    from .config import ServerConfig
    from .storage import SqliteStorage, Storage

__all__ = ["ServerApp", "ServerConfig", "SqliteStorage", "Storage"]
__version__ = "0.1.0"

_HOMES = {
    "ServerApp": ".api",
    "ServerConfig": ".config",
    "SqliteStorage": ".storage",
    "Storage": ".storage",
}


def __getattr__(name: str) -> Any:
    """Each public name, imported from its module when first asked for."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value
