"""The LISTEN thread of the PostgreSQL backend: wakes listeners for changes of any process."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg

from .listeners import Listeners

log = logging.getLogger("idsync.server.storage")

#: The notification channel; the payload is ``"<store> <head_seq>"``.
CHANNEL = "idsync_changes"


class ListenerThread(threading.Thread):
    """One LISTEN connection; calls the listeners for each notification, reconnecting on failure."""

    #: Seconds between reconnection attempts, doubling up to the last.
    RETRY_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)

    def __init__(
        self, url: str, listeners: Listeners, heads: Callable[[], list[tuple[str, int]]]
    ) -> None:
        super().__init__(name="idsync-pg-listen", daemon=True)
        self.url = url
        self.listeners = listeners
        self.heads = heads
        self.ready = threading.Event()
        self._stopping = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None

    def stop(self) -> None:
        """Stop listening and wait (briefly) for the thread to end."""
        self._stopping.set()
        self.join(timeout=5)

    def run(self) -> None:
        failures = 0
        connected_before = False
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    failures = 0
                    if connected_before:
                        # Notifications sent while disconnected are lost:
                        # tell the listeners about every store.
                        for name, head in self.heads():
                            self.listeners.fire(name, head)
                    connected_before = True
                    self.ready.set()
                    while not self._stopping.is_set():
                        for notify in conn.notifies(timeout=0.2):
                            self._deliver(notify.payload)
            except Exception as exc:  # any failure: reconnect after a pause
                if self._stopping.is_set():
                    return
                delay = self.RETRY_DELAYS[min(failures, len(self.RETRY_DELAYS) - 1)]
                failures += 1
                log.warning("LISTEN connection failed (%s); reconnecting in %.1fs", exc, delay)
                self._stopping.wait(delay)

    def _deliver(self, payload: str) -> None:
        name, _, head = payload.rpartition(" ")
        if name and head.isdigit():
            self.listeners.fire(name, int(head))
