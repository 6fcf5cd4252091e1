"""The idsync reference server: an append-only change log per store over HTTP.

Run it with ``idsync-server``; embed it with :class:`ServerApp` over a
:class:`~idsync_server_ref.storage.Storage` backend.
"""

from .api import ServerApp
from .config import ServerConfig
from .storage import SqliteStorage, Storage

__all__ = ["ServerApp", "ServerConfig", "SqliteStorage", "Storage"]
__version__ = "0.1.0"
