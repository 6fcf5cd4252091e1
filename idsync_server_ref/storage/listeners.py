"""The change listeners of one backend instance (see :meth:`.Storage.listen`)."""

from __future__ import annotations

import logging
import threading

from .base import ChangeListener

log = logging.getLogger("idsync.server.storage")


class Listeners:
    """Callbacks registered with ``listen``; :meth:`fire` calls each, isolating failures."""

    def __init__(self) -> None:
        self._callbacks: list[ChangeListener] = []
        self._lock = threading.Lock()

    def add(self, callback: ChangeListener) -> None:
        """Register ``callback``; it is called for changes committed from now on."""
        with self._lock:
            self._callbacks.append(callback)

    def __bool__(self) -> bool:
        return bool(self._callbacks)

    def fire(self, store: str, head_seq: int) -> None:
        """Call every callback; one that raises is logged and the others still run."""
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(store, head_seq)
            except Exception:
                log.exception("change listener %r failed", callback)
