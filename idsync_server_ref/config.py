"""Server settings, with their defaults."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from idsync_client.protocol import Limits

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def default_database_path() -> Path:
    """Where the server keeps its SQLite file when not told: a per-user data folder."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "idsync" / "server.sqlite3"


@dataclass(frozen=True)
class ServerConfig:
    """Everything the reference server can be told.

    ``auth_token``: when set, every endpoint but health needs
    ``Authorization: Bearer <token>``. ``backoff_threshold``: when more
    requests than this are in flight, responses carry the back-off hint.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    database: str | Path = field(default_factory=default_database_path)
    limits: Limits = field(default_factory=Limits)
    threads: int = 32
    busy_timeout_ms: int = 5000
    auth_token: str | None = None
    backoff_threshold: int = 24
    backoff_seconds: int = 5
