"""Subscriptions: call the app back when local or remote changes land."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

from .listeners import require_callable
from .records import ChangeEvent, Record

log = logging.getLogger("idsync.client")

Callback = Callable[[ChangeEvent], None]


class CallbackQueue:
    """Runs the app's callbacks where they may do anything.

    Inside :meth:`held` (a section that holds the library's locks) a call is
    queued; it runs when the outermost held section of that thread ends,
    after the locks are released. Calls run in the order they were made,
    on the thread that made them. A callback that raises is logged; the
    others still run.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def _queue(self) -> deque[Callable[[], None]]:
        queue: deque[Callable[[], None]] | None = getattr(self._local, "queue", None)
        if queue is None:
            queue = self._local.queue = deque()
            self._local.depth = 0
            self._local.draining = False
        return queue

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """A section whose callbacks wait until it (and any enclosing one) ends."""
        self._queue()
        self._local.depth += 1
        try:
            yield
        finally:
            self._local.depth -= 1
            if self._local.depth == 0 and not self._local.draining:
                self._drain()

    @contextlib.contextmanager
    def collected(self) -> Iterator[list[Callable[[], None]]]:
        """A held section whose calls do not run at its end: they are handed
        over in the list it yields, for another thread to :meth:`call`. For
        a worker thread of a round whose callbacks run on the round's thread."""
        queue = self._queue()
        self._local.depth += 1
        taken: list[Callable[[], None]] = []
        try:
            yield taken
        finally:
            self._local.depth -= 1
            taken.extend(queue)
            queue.clear()

    def flush(self) -> None:
        """Run the calls queued on this thread so far, now, even inside a held
        section: for a point of it where the thread holds none of the
        library's locks, so that the app hears of a change without waiting
        for the rest of the section's work. Inside a callback, a no-op: the
        queue is being run already."""
        self._queue()
        if not self._local.draining:
            self._drain()

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` now, or after the current held section of this thread."""
        queue = self._queue()
        queue.append(fn)
        if self._local.depth == 0 and not self._local.draining:
            self._drain()

    def _drain(self) -> None:
        # Callbacks that cause more callbacks (a write, a sync) append to the
        # same queue: they run after the ones before them, in order.
        queue = self._queue()
        self._local.draining = True
        try:
            while queue:
                fn = queue.popleft()
                try:
                    fn()
                except Exception:
                    log.exception("a callback failed")
        finally:
            self._local.draining = False


def _deliver(callback: Callback, event: ChangeEvent) -> None:
    # Called inside the callback queue's guard (see _notify in .status).
    callback(event)


@dataclass(eq=False)
class Subscription:
    """A registered callback; :meth:`cancel` stops it."""

    store: str
    index_item: str | None
    callback: Callback
    _hub: SubscriptionHub | None = field(default=None, repr=False)
    #: Told of reloads only (``reset`` events), not of changes.
    resets_only: bool = False

    def cancel(self) -> None:
        """Stop calling back. Safe to call twice."""
        if self._hub is not None:
            self._hub.remove(self)
            self._hub = None

    def _filter(self, event: ChangeEvent) -> ChangeEvent | None:
        if event.store != self.store or (self.resets_only and not event.reset):
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
    local writes, the sync thread for remote ones), after the library's
    locks are released (see :class:`CallbackQueue`): a GUI should hand the
    event to its own event loop. A callback that raises is logged, not
    propagated.
    """

    def __init__(self, callbacks: CallbackQueue | None = None) -> None:
        self._subs: list[Subscription] = []
        self._lock = threading.Lock()
        self.callbacks = callbacks or CallbackQueue()

    def add(
        self,
        store: str,
        callback: Callback,
        index_item: str | None = None,
        *,
        resets_only: bool = False,
    ) -> Subscription:
        """Register ``callback`` for changes of ``store`` (or of one index item
        in it); with ``resets_only``, for its reloads from a snapshot only."""
        require_callable(callback)
        sub = Subscription(store, index_item, callback, self, resets_only)
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
        with self.callbacks.held():  # every subscriber hears of it before what it causes
            for sub in subs:
                narrowed = sub._filter(event)
                if narrowed is not None:
                    self.callbacks.call(partial(_deliver, sub.callback, narrowed))
