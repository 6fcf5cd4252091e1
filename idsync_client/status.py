"""Sync status for the app's UI: online/offline, pending count, last error."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Literal

from .listeners import Listeners, require_callable
from .subscriptions import CallbackQueue

log = logging.getLogger("idsync.client")

State = Literal[
    "local",
    "idle",
    "connecting",
    "syncing",
    "online",
    "offline",
    "auth_error",
    "standby",
    "closed",
]


#: States a failed request turns to ``offline`` (see StatusTracker.link_down).
_LINK_STATES = frozenset({"connecting", "syncing", "online"})


@dataclass(frozen=True)
class SyncStatus:
    """A snapshot of the sync state.

    ``state``: ``local`` (no server configured), ``idle`` (background sync
    not started), ``connecting`` (background sync started, no answer from
    the server yet), ``syncing`` (a ``sync()`` call is under way),
    ``online`` (the server answered the last request), ``offline`` (the
    server cannot be reached; retrying), ``auth_error`` (paused until new
    credentials), ``standby`` (another process syncs this file), ``closed``.

    ``last_error`` is the last failure (server or local file), cleared by
    the next round that succeeds. ``resets`` counts the times the server
    asked this client to reload a store (its history changed, e.g. restored
    from a backup, or a cursor older than the server's retention);
    ``last_reset`` is when the last one happened (epoch seconds): pending
    local changes were kept and sent again.

    ``dropped`` names the stores the server dropped: they are no longer
    synced (their pending changes stay in the local file) until
    ``client.recreate_store(name)``.
    """

    state: State = "idle"
    pending: int = 0
    rejected: int = 0
    last_error: str | None = None
    last_sync: float | None = None
    resets: int = 0
    last_reset: float | None = None
    dropped: tuple[str, ...] = ()

    @property
    def online(self) -> bool:
        """True when the server answered the last request."""
        return self.state == "online"


def _notify(listener: Callable[[SyncStatus], None], status: SyncStatus) -> None:
    # Called inside the callback queue's guard: whatever the listener does
    # wrong is logged there, never raised to the caller whose data committed.
    listener(status)


class StatusTracker:
    """Holds the current :class:`SyncStatus` and calls listeners when it changes."""

    def __init__(self, initial: SyncStatus, callbacks: CallbackQueue | None = None) -> None:
        self._status = initial
        self._lock = threading.Lock()
        self._listeners: Listeners[Callable[[SyncStatus], None]] = Listeners()
        self.callbacks = callbacks or CallbackQueue()

    @property
    def current(self) -> SyncStatus:
        """The status now."""
        return self._status

    def listen(self, callback: Callable[[SyncStatus], None]) -> Callable[[], None]:
        """Call ``callback(status)`` on each change; returns a function that stops it.

        TypeError if ``callback`` is not callable (refused here: a bad
        listener found only at the next change would fail that change's caller).
        """
        require_callable(callback)
        return self._listeners.add(callback)

    def update(self, **changes: object) -> SyncStatus:
        """Change some fields; listeners hear of it if anything differs.

        Listeners run through the callback queue: after the library's locks
        are released, in order.
        """
        return self._change(changes)

    def add_pending(self, count: int) -> SyncStatus:
        """``count`` more changes wait for upload: a local write just queued
        them (counted here, not by counting the outbox after every write; the
        next sync round sets the count from the file again)."""
        if not count:
            return self._status
        with self._lock:
            new = replace(self._status, pending=self._status.pending + count)
            self._status = new
        self._tell(new)
        return new

    def _change(
        self, changes: dict[str, object], only_from: frozenset[str] | None = None
    ) -> SyncStatus:
        with self._lock:
            if only_from is not None and self._status.state not in only_from:
                return self._status
            new = replace(self._status, **changes)  # type: ignore[arg-type]
            if new == self._status:
                return new
            self._status = new
        self._tell(new)
        return new

    def _tell(self, new: SyncStatus) -> None:
        listeners = self._listeners.current()
        with self.callbacks.held():  # every listener hears of it before what it causes
            for listener in listeners:
                self.callbacks.call(partial(_notify, listener, new))

    def link_down(self, message: str) -> None:
        """A request found no server: the state says ``offline`` at once, while
        retries go on. Only from a state that claims a live link or an attempt
        (``connecting``, ``syncing``, ``online``): an idle, stopped or closed
        client is not changed by a request that was still finishing."""
        self._change({"state": "offline", "last_error": message}, _LINK_STATES)

    def reset_seen(self, count: int) -> None:
        """The server made this client reload ``count`` stores just now."""
        if count:
            with self._lock:
                total = self._status.resets + count
            self.update(resets=total, last_reset=time.time())

    def succeeded(self, pending: int, rejected: int) -> None:
        """A sync round finished well."""
        self.update(
            state="online",
            pending=pending,
            rejected=rejected,
            last_error=None,
            last_sync=time.time(),
        )
