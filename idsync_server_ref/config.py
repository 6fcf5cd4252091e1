"""Server settings, with their defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from idsync_client.protocol import Limits

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
#: Requests per second per token when users exist and no rate was given.
DEFAULT_RATE = 50.0


def default_database_path() -> Path:
    """Where the server keeps its SQLite file when not told: the per-user data
    folder of the platform (``$XDG_DATA_HOME/idsync`` or ``~/.local/share/idsync``
    on Linux, ``~/Library/Application Support/idsync`` on macOS,
    ``%LOCALAPPDATA%\\idsync`` on Windows), as platformdirs knows it."""
    return platformdirs.user_data_path("idsync", appauthor=False) / "server.sqlite3"


@dataclass(frozen=True)
class ServerConfig:
    """Everything the reference server can be told.

    ``threads``: the storage pool (database work runs there; waiting
    long-polls hold no thread). ``auth_token``: when set, every endpoint but
    health needs ``Authorization: Bearer <token>``. ``backoff_threshold``:
    when more requests than this are being worked on (long-polls waiting do
    not count), responses carry the back-off hint. ``max_connections``: open
    connections past it get ``503 server_busy``. ``header_timeout`` and
    ``body_timeout``: seconds a request's headers, then its body, may take
    to arrive before the connection is dropped. ``max_storage_queue``: when
    this many storage calls already wait for a storage thread, a new request
    that needs storage gets ``503 storage_busy`` at once. ``metrics``: serve
    ``/metrics`` (Prometheus text format). ``log_format``: ``text`` or
    ``json`` (one object per line). The access settings
    (``insecure_no_auth``, ``rate_limit``, ``rate_burst``) are described in
    ``docs/security.md``.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    database: str | Path = field(default_factory=default_database_path)
    limits: Limits = field(default_factory=Limits)
    threads: int = 8
    busy_timeout_ms: int = 5000
    auth_token: str | None = None
    backoff_threshold: int = 24
    backoff_seconds: int = 5
    max_connections: int = 10_000
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_storage_queue: int = 256
    metrics: bool = True
    log_format: str = "text"
    #: Listen beyond the loopback interface with no users and no token.
    insecure_no_auth: bool = False
    #: Requests per second per token (None: off for a single user, else
    #: ``DEFAULT_RATE``); before auth, the same per client address for refused tokens.
    rate_limit: float | None = None
    #: Requests a bucket holds (a burst allowed at once).
    rate_burst: int = 200
