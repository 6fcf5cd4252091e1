"""Sync status for the app's UI: online/offline, pending count, last error."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

log = logging.getLogger("idsync.client")

State = Literal["local", "idle", "syncing", "online", "offline", "auth_error", "standby", "closed"]


@dataclass(frozen=True)
class SyncStatus:
    """A snapshot of the sync state.

    ``state``: ``local`` (no server configured), ``idle`` (background sync
    not started), ``syncing``, ``online`` (last round succeeded),
    ``offline`` (the server cannot be reached; retrying), ``auth_error``
    (paused until new credentials), ``standby`` (another process syncs this
    file), ``closed``.
    """

    state: State = "idle"
    pending: int = 0
    rejected: int = 0
    last_error: str | None = None
    last_sync: float | None = None

    @property
    def online(self) -> bool:
        """True when the last contact with the server succeeded."""
        return self.state in ("online", "syncing")


class StatusTracker:
    """Holds the current :class:`SyncStatus` and calls listeners when it changes."""

    def __init__(self, initial: SyncStatus) -> None:
        self._status = initial
        self._lock = threading.Lock()
        self._listeners: list[Callable[[SyncStatus], None]] = []

    @property
    def current(self) -> SyncStatus:
        """The status now."""
        return self._status

    def listen(self, callback: Callable[[SyncStatus], None]) -> Callable[[], None]:
        """Call ``callback(status)`` on each change; returns a function that stops it."""
        with self._lock:
            self._listeners.append(callback)

        def stop() -> None:
            with self._lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return stop

    def update(self, **changes: object) -> SyncStatus:
        """Change some fields; listeners hear of it if anything differs."""
        with self._lock:
            new = replace(self._status, **changes)  # type: ignore[arg-type]
            if new == self._status:
                return new
            self._status = new
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(new)
            except Exception:
                log.exception("a status listener failed")
        return new

    def succeeded(self, pending: int, rejected: int) -> None:
        """A sync round finished well."""
        self.update(
            state="online",
            pending=pending,
            rejected=rejected,
            last_error=None,
            last_sync=time.time(),
        )
