"""Subscriptions: call the app back when local or remote changes land."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from .records import ChangeEvent, Record

log = logging.getLogger("idsync.client")

Callback = Callable[[ChangeEvent], None]


@dataclass(eq=False)
class Subscription:
    """A registered callback; :meth:`cancel` stops it."""

    store: str
    index_item: str | None
    callback: Callback
    _hub: SubscriptionHub | None = field(default=None, repr=False)

    def cancel(self) -> None:
        """Stop calling back. Safe to call twice."""
        if self._hub is not None:
            self._hub.remove(self)
            self._hub = None

    def _filter(self, event: ChangeEvent) -> ChangeEvent | None:
        if event.store != self.store:
            return None
        if self.index_item is None or event.reset:
            return event

        def keep(records: tuple[Record, ...]) -> tuple[Record, ...]:
            return tuple(r for r in records if self.index_item in r.index)

        narrowed = ChangeEvent(event.store, event.origin, keep(event.added), keep(event.deleted))
        return narrowed or None


class SubscriptionHub:
    """Delivers change events to subscriptions, after the change committed.

    Callbacks run on the thread that made the change (the app's thread for
    local writes, the sync thread for remote ones): a GUI should hand the
    event to its own event loop. A callback that raises is logged, not
    propagated.
    """

    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        self._lock = threading.Lock()

    def add(self, store: str, callback: Callback, index_item: str | None = None) -> Subscription:
        """Register ``callback`` for changes of ``store`` (or of one index item in it)."""
        if not callable(callback):
            raise TypeError("callback must be callable")
        sub = Subscription(store, index_item, callback, self)
        with self._lock:
            self._subs.append(sub)
        return sub

    def remove(self, sub: Subscription) -> None:
        """Unregister a subscription."""
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    def publish(self, event: ChangeEvent) -> None:
        """Tell every interested subscription about ``event``."""
        if not event:
            return
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            narrowed = sub._filter(event)
            if narrowed is None:
                continue
            try:
                sub.callback(narrowed)
            except Exception:
                log.exception("a subscription callback failed")
