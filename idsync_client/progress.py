"""Progress of a long download (a first sync, a reload): per store, per page.

The sync engine calls :meth:`ProgressReporter.page` after each page it has
applied; the reporter turns that into :class:`SyncProgress` values for the
app. Only downloads of more than one page are reported: a one-page pull (the
usual live update) says nothing. The total comes from the server's store
description (``GET /v1/stores/{store}``), asked once per download and only
when someone listens.

Listeners run on one delivery thread of their own, in the order the pages
were applied, never on a thread that holds the library's locks: a sync round
holds its callbacks back until it ends (see :class:`.subscriptions.CallbackQueue`),
and progress heard only at the end would be no progress at all.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from .errors import IdsyncError
from .listeners import Listeners, require_callable
from .protocol import Cursor, ProtocolViolation

if TYPE_CHECKING:
    from .transport import StoreFigures

log = logging.getLogger("idsync.client")

Phase = Literal["snapshot", "pull"]

#: ``(store, phase, start cursor) -> total or None``: how many records
#: (snapshot) or changes (pull) the download should bring.
TotalOf = Callable[[str, Phase, "str | None"], "int | None"]


@dataclass(frozen=True)
class SyncProgress:
    """Where a download of one store stands.

    ``phase``: ``snapshot`` (loading the live records) or ``pull`` (changes
    after a cursor). ``received``: records or changes applied so far.
    ``total``: what the download should bring in all, when the server said
    (never below ``received``; equal to it once ``done``). ``done``: the last
    page is applied.
    """

    store: str
    phase: Phase
    received: int
    total: int | None
    done: bool = False

    @property
    def fraction(self) -> float | None:
        """``received / total`` between 0 and 1, None while the total is unknown."""
        if self.total is None:
            return None
        if self.total <= 0:
            return 1.0
        return min(1.0, self.received / self.total)


def store_totals(figures_of: Callable[[str], StoreFigures | None]) -> TotalOf:
    """A :data:`TotalOf` from the store's figures (``figures_of(store)``).

    A pull's total is ``head_seq`` minus the start cursor's sequence (at
    most ``log_length``: entries dropped below the horizon or superseded
    leave fewer entries than sequence numbers); a snapshot's is
    ``live_records``. Unknown (None) when the figures are.
    """

    def total_of(store: str, phase: Phase, start: str | None) -> int | None:
        try:
            figures = figures_of(store)
        except IdsyncError as exc:
            log.info("store %s: no total for the progress: %s", store, exc)
            return None
        if figures is None:
            return None
        if phase == "snapshot":
            return max(0, figures.live_records)
        if figures.head_seq is None:
            return None
        value = figures.head_seq
        if start:
            try:
                value -= Cursor.decode(start).seq
            except ProtocolViolation:
                return None
        return max(0, min(value, figures.log_length))

    return total_of


@dataclass
class _Run:
    phase: Phase
    received: int
    total: int | None


_STOP = object()


class ProgressReporter:
    """Collects page counts from the sync engine and tells listeners.

    Safe to use from several threads; :meth:`close` ends delivery.
    """

    def __init__(self, total_of: TotalOf | None = None) -> None:
        self._total_of = total_of
        self._lock = threading.Lock()
        self._listeners: Listeners[Callable[[SyncProgress], None]] = Listeners()
        self._runs: dict[str, _Run] = {}
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    def listen(self, callback: Callable[[SyncProgress], None]) -> Callable[[], None]:
        """Call ``callback(progress)`` after each page of a long download;
        returns a function that stops it. TypeError if not callable."""
        require_callable(callback)
        return self._listeners.add(callback)

    def page(self, store: str, phase: Phase, count: int, more: bool, start: str | None) -> None:
        """The engine applied a page of ``count`` items; ``more`` when others follow.

        ``start``: the cursor the download started from (pull), for the total.
        Never raises: progress must not break sync.
        """
        try:
            self._page(store, phase, count, more, start)
        except Exception:
            log.exception("progress report failed")

    def _page(self, store: str, phase: Phase, count: int, more: bool, start: str | None) -> None:
        with self._lock:
            if not self._listeners or self._closed:
                self._runs.pop(store, None)
                return
            run = self._runs.get(store)
            if run is not None and run.phase != phase:
                run = None  # a reload cut a pull short (or the other way round)
            if run is None and not more:
                self._runs.pop(store, None)
                return  # a one-page download: nothing worth a progress bar
            fresh = run is None
        if fresh:
            # Asked outside the lock: it is a request to the server.
            total = self._total_of(store, phase, start) if self._total_of else None
            run = _Run(phase, 0, total)
        assert run is not None
        with self._lock:
            run.received += count
            if run.total is not None:
                run.total = max(run.total, run.received)
            if more:
                self._runs[store] = run
            else:
                self._runs.pop(store, None)
                run.total = run.received
            self._send(SyncProgress(store, phase, run.received, run.total, done=not more))

    def _send(self, progress: SyncProgress) -> None:
        # Under self._lock: starting the thread once, queueing in page order.
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._deliver, name="idsync-progress", daemon=True
            )
            self._thread.start()
        self._queue.put(progress)

    def _deliver(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            assert isinstance(item, SyncProgress)
            for listener in self._listeners.current():
                try:
                    listener(item)
                except Exception:
                    log.exception("a progress callback failed")

    def close(self, timeout: float = 0.5) -> None:
        """Stop delivering; reports queued before are delivered first (for at
        most ``timeout`` seconds). Safe to call twice, and from a listener."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
        self._queue.put(_STOP)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
