"""The sync engine: push the outbox (:mod:`.pushing`), pull by cursor, reload on reset.

It runs one step at a time on the caller's thread; :mod:`.background` runs it
in threads. Every network call goes through the one retry policy.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from . import gcpause
from .errors import (
    AuthError,
    IdsyncError,
    PermanentError,
    ResetRequired,
    StoreDropped,
    StoreNotFound,
)
from .localdb import LocalDB
from .progress import ProgressReporter
from .pushing import Pushing
from .records import ChangeEvent, RejectedChange
from .retry import RetryPolicy
from .subscriptions import SubscriptionHub
from .wire import PullAnswer, SnapshotAnswer, WaitAnswer

if TYPE_CHECKING:
    from .transport import StoreFigures, Transport

log = logging.getLogger("idsync.client")

#: Runs after each pulled page is applied and published: ``hook(store, event)``
#: (features that keep derived state, like attribute records, register one).
PageHook = Callable[[str, ChangeEvent], None]

#: A first sync loads a snapshot instead of replaying the log when the log is
#: longer than ``SNAPSHOT_FACTOR * live_records + SNAPSHOT_SLACK`` entries:
#: replaying would download mostly superseded changes.
SNAPSHOT_FACTOR = 2
SNAPSHOT_SLACK = 1000

#: Seconds the figures asked for by a first sync serve its progress report too.
FIGURES_KEPT = 5.0

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _stops_when_dropped(
    method: Callable[Concatenate[SyncEngine, str, _P], _R],
) -> Callable[Concatenate[SyncEngine, str, _P], _R]:
    """Refuse a store known to be dropped (no request is sent), and note a
    store the server answers ``store_dropped`` for."""

    @functools.wraps(method)
    def run(self: SyncEngine, store: str, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        known = self.dropped_error(store)
        if known is not None:
            raise known
        try:
            return method(self, store, *args, **kwargs)
        except StoreDropped as exc:
            self.note_dropped(store, exc)
            raise

    return run



@dataclass
class SyncReport:
    """What one sync round did."""

    pushed: int = 0
    pulled: int = 0
    rejected: list[RejectedChange] = field(default_factory=list)
    resets: int = 0
    #: This client's own acknowledged changes that a reset found missing on
    #: the server (restored from an older copy, store re-created) and queued
    #: to be sent again.
    resent: int = 0


class SyncEngine(Pushing):
    """Moves changes between a :class:`LocalDB` and a server.

    ``create_stores``: create a store on the server when it does not exist
    (otherwise sync of that store fails with StoreNotFound).
    """

    def __init__(
        self,
        db: LocalDB,
        transport: Transport,
        policy: RetryPolicy,
        hub: SubscriptionHub,
        batch_size: int = 500,
        create_stores: bool = True,
        on_rejected: Callable[[RejectedChange], None] | None = None,
        page_size: int | None = 5000,
    ) -> None:
        self.db = db
        self.transport = transport
        self.policy = policy
        self.hub = hub
        self.batch_size = batch_size
        self.create_stores = create_stores
        self.on_rejected = on_rejected
        # Large pages mean fewer round trips and commits on a first sync.
        self.page_size: int | None = page_size
        # Pushes from two threads would only send the same changes twice
        # (harmless, the server is idempotent); the lock saves the traffic.
        self._push_lock = threading.Lock()
        # One page ahead per pull; several pulls (first syncs of many stores)
        # may run at once. Threads start only when needed.
        self._prefetcher = ThreadPoolExecutor(max_workers=4, thread_name_prefix="idsync-fetch")
        #: Whether waits ask for pages (off once the server refuses the field).
        self.wait_pages = True
        # A reload stages the snapshot in one table per store: two reloads of
        # one store at once (the pull thread told to reset, the push thread
        # seeing a changed history) would clear and install each other's
        # half-staged pages. Reloads of different stores may overlap.
        self._reset_locks: dict[str, threading.Lock] = {}
        self._reset_locks_guard = threading.Lock()
        self._renewals = 0
        self.page_hooks: list[PageHook] = []
        # Stores the page hooks heard of since this engine started.
        self._hooked: set[str] = set()
        self._figures: dict[str, tuple[float, StoreFigures]] = {}
        #: Told of each applied page of a pull or a reload (progress of long downloads).
        self.progress: ProgressReporter | None = None
        # Set by close(): retries stop, and their waits end at once.
        self._closing = threading.Event()
        self._thread = threading.local()
        # Stores the server said were dropped (see note_dropped), read by
        # several threads.
        self._dropped: dict[str, StoreDropped] = {}
        self._dropped_lock = threading.Lock()
        #: Called with a store's name when it is found dropped.
        self.on_dropped: Callable[[str], None] | None = None

    def _call(self, fn: Callable[[], Any]) -> Any:
        once = getattr(self._thread, "once", False)
        return self.policy.call(fn, interrupt=self._closing, max_attempts=1 if once else None)

    @contextlib.contextmanager
    def one_attempt(self) -> Iterator[None]:
        """Requests made on this thread inside are tried once, not retried.

        For a caller with its own retry loop (background sync): the failure
        reaches it, and the status, at once, instead of after the retries.
        """
        self._thread.once = True
        try:
            yield
        finally:
            self._thread.once = False

    def _ensure_store(self, store: str, exc: StoreNotFound) -> None:
        if not self.create_stores:
            raise exc
        self.create_store(store)

    def create_store(self, store: str) -> None:
        """Create ``store`` on the server (a store that exists is fine), with retries.

        Never re-creates a dropped store: StoreDropped (see :meth:`recreate_store`).
        """
        self._call(lambda: self.transport.create_store(store))

    # -- dropped stores -----------------------------------------------------

    def note_dropped(self, store: str, exc: StoreDropped) -> None:
        """Stop syncing ``store``: the server dropped it. Its pending changes
        stay in the local file; push, pull and reset of it raise ``exc``
        without asking the server, until :meth:`recreate_store`."""
        with self._dropped_lock:
            if store in self._dropped:
                return
            self._dropped[store] = exc
        log.warning("store %s was dropped on the server: it is no longer synced", store)
        if self.on_dropped is not None:
            self.on_dropped(store)

    def dropped_stores(self) -> frozenset[str]:
        """The stores found dropped on the server (not synced)."""
        with self._dropped_lock:
            return frozenset(self._dropped)

    def dropped_error(self, store: str) -> StoreDropped | None:
        """The error that said ``store`` was dropped; None if it was not."""
        with self._dropped_lock:
            return self._dropped.get(store)

    def recreate_store(self, store: str) -> SyncReport:
        """Create ``store`` again on the server (``"recreate": true``, a new
        epoch), reload it, and send this client's pending changes and its own
        acknowledged changes the new store lacks. Also fine for a store that
        exists (then it is only synced)."""
        self._call(lambda: self.transport.create_store(store, recreate=True))
        with self._dropped_lock:
            self._dropped.pop(store, None)
        report = SyncReport()
        self._reload(store, report)
        self.push(store, report)
        return report

    # -- first sync ---------------------------------------------------------

    def _ask_figures(self, store: str) -> StoreFigures | None:
        """The store's figures, asked once (not retried: they only save work);
        None when the server cannot say. A dropped store or refused
        credentials raise."""
        # A transport written before store_figures existed cannot say.
        ask = getattr(self.transport, "store_figures", None)
        if ask is None:
            return None
        try:
            figures: StoreFigures = ask(store)
        except (StoreDropped, AuthError):
            raise
        except IdsyncError:  # missing (created by the pull), an older server, no answer
            return None
        return figures

    def store_figures(self, store: str) -> StoreFigures | None:
        """The store's figures: those a first sync just asked for (within
        :data:`FIGURES_KEPT` seconds), else asked now; None when unknown."""
        kept = self._figures.pop(store, None)
        if kept is not None and time.monotonic() - kept[0] < FIGURES_KEPT:
            return kept[1]
        return self._ask_figures(store)

    def _snapshot_is_cheaper(self, store: str) -> bool:
        """True when the store's log is much longer than its live set (the rule
        at SNAPSHOT_FACTOR). False when the server cannot say."""
        figures = self._ask_figures(store)
        if figures is None:
            return False
        # Kept for a moment: the progress of the download that follows needs
        # the same figures, and need not ask again.
        self._figures[store] = (time.monotonic(), figures)
        cheaper: bool = figures.log_length > SNAPSHOT_FACTOR * figures.live_records + SNAPSHOT_SLACK
        return cheaper

    def _reload(self, store: str, report: SyncReport) -> None:
        """A reset the server asked for (or a changed history): counted as one."""
        report.resent += self.reset(store)
        report.resets += 1

    def _first_sync_from_snapshot(
        self, store: str, cursor: str | None, page: PullAnswer, report: SyncReport
    ) -> bool:
        """On the first page of a first sync that does not hold the whole log:
        load a snapshot instead (the page is dropped) when that is cheaper
        than replaying the log. Pending local changes are kept. True if it did."""
        if cursor is not None or not page.more or not self._snapshot_is_cheaper(store):
            return False
        log.info("store %s: first sync from a snapshot", store)
        report.resent += self.reset(store)
        return True

    # -- push ---------------------------------------------------------------

    @_stops_when_dropped
    def push(self, store: str, report: SyncReport | None = None) -> SyncReport:
        """Upload every pending change of ``store``, oldest first, in batches.

        A batch holds at most the server's ``max_batch`` changes and fits its
        ``max_body_bytes`` (the limits ``GET /v1/health`` advertises). A change
        too large to fit any body moves to the rejected list
        (``body_too_large``); it never holds back the changes behind it.
        """
        report = report or SyncReport()
        self._push_outbox(store, report)
        return report

    # -- pull ---------------------------------------------------------------

    def _fetch(self, store: str, cursor: str | None, wait: float) -> PullAnswer:
        """One page after ``cursor``, through the retry policy."""
        page: PullAnswer = self._call(
            lambda: self.transport.pull(store, cursor, wait, self.page_size)
        )
        return page

    def _fetch_ahead(self, once: bool, store: str, cursor: str) -> PullAnswer:
        """:meth:`_fetch` on the prefetch thread, tried once if the caller's are."""
        self._thread.once = once
        try:
            return self._fetch(store, cursor, 0.0)
        finally:
            self._thread.once = False

    @_stops_when_dropped
    def pull(
        self,
        store: str,
        wait: float = 0.0,
        report: SyncReport | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> SyncReport:
        """Pull and apply pages until caught up; the first request may long-poll.

        While a page is applied, the next one is already being fetched (one
        page ahead at most), so the network and the server's work overlap
        the local inserts. When ``cancelled()`` turns true (the client is
        closing), a page that arrives is not applied.
        """
        return self._pull_pages(store, wait, report or SyncReport(), cancelled)

    def _pull_pages(
        self,
        store: str,
        wait: float,
        report: SyncReport,
        cancelled: Callable[[], bool] | None,
    ) -> SyncReport:
        ahead: tuple[str, Future[PullAnswer]] | None = None
        while True:
            cursor = self.db.cursor(store)
            try:
                if ahead is not None and ahead[0] == cursor:
                    page = ahead[1].result()
                else:
                    page = self._fetch(store, cursor, wait)
            except ResetRequired:
                self._reload(store, report)
                continue
            except StoreNotFound as exc:
                self._ensure_store(store, exc)
                continue
            except PermanentError as exc:
                if exc.code != "invalid_request" or self.page_size is None:
                    raise
                self.page_size = None  # a server with a smaller max_page: use its default
                continue
            finally:
                ahead = None
            wait = 0.0
            if cancelled is not None and cancelled():
                return report
            if self._first_sync_from_snapshot(store, cursor, page, report):
                continue
            if page.more:
                once = getattr(self._thread, "once", False)  # as on this thread
                fetch = self._prefetcher.submit(self._fetch_ahead, once, store, page.cursor)
                ahead = (page.cursor, fetch)
            try:
                applied = self._apply(store, cursor, page, report)
            except ResetRequired:  # the page contradicts what this file saw: a new history
                if ahead is not None:
                    ahead[1].cancel()
                    ahead = None
                self._reload(store, report)
                continue
            if not applied:
                continue  # another thread applied this page first
            if not page.more:
                return report

    def _apply(
        self, store: str, pulled_from: str | None, page: PullAnswer, report: SyncReport
    ) -> bool:
        """Apply ``page`` (asked after ``pulled_from``) and advance the cursor in
        one transaction, then tell subscribers, page hooks and progress. False
        when the cursor moved meanwhile (another thread applied it): nothing
        was done. ResetRequired when the page contradicts what this file saw."""
        with gcpause.paused():
            event = self.db.apply_pulled(store, page.changes, page.cursor, pulled_from)
        if event is None:
            return False
        report.pulled += len(page.changes)
        self.hub.publish(event)
        self._hooked.add(store)
        for hook in self.page_hooks:
            hook(store, event)
        if self.progress is not None:
            self.progress.page(store, "pull", len(page.changes), page.more, pulled_from)
        return True

    def unchanged(self, store: str) -> None:
        """``store`` is caught up (a wait said so; no page was pulled). The page
        hooks hear of it once, with an empty event, if no page did yet: a
        first look at the store (attribute clean-ups left by an earlier run)."""
        if store in self._hooked:
            return
        event = ChangeEvent(store, "remote")
        self._hooked.add(store)
        for hook in self.page_hooks:
            hook(store, event)

    @_stops_when_dropped
    def take_page(
        self, store: str, asked_after: str | None, page: PullAnswer, report: SyncReport
    ) -> bool:
        """Apply a page of changes a wait answered for ``store`` (asked after
        ``asked_after``), as a pulled page is applied. True when the store is
        caught up; False when it must be pulled: the page said ``more``, the
        cursor moved meanwhile (nothing applied), or the page contradicted
        this file's history (the store was reloaded from a snapshot)."""
        try:
            applied = self._apply(store, asked_after, page, report)
        except ResetRequired:
            self._reload(store, report)
            return False
        return applied and not page.more

    def news(self, cursors: dict[str, str | None]) -> WaitAnswer | None:
        """Which of these stores changed, with their first pages, in one
        ``POST /v1/wait`` answered at once (through the retry policy). None
        when the server does not give pages (an older server): pull instead."""
        if not self.wait_pages:
            return None
        try:
            answer: WaitAnswer = self._call(
                lambda: self.transport.wait(cursors, 0.0, pages=True)
            )
        except PermanentError as exc:
            if exc.code != "invalid_request":
                raise
            log.info("the server gives no pages in wait answers: %s", exc)
            self.wait_pages = False
            return None
        return answer

    @_stops_when_dropped
    def reset(self, store: str) -> int:
        """Reload the store from a snapshot, keeping every pending local change.

        This client's own acknowledged changes that the snapshot lacks are
        queued to be sent again (the next push sends them); returns how many.
        """
        with self._reset_locks_guard:
            lock = self._reset_locks.setdefault(store, threading.Lock())
        with lock:
            return self._reset(store)

    def _reset(self, store: str) -> int:
        log.info("store %s: reloading from a snapshot", store)
        return self._reload_pages(store)

    def _reload_pages(self, store: str) -> int:
        self.db.stage_clear(store)
        at: str | None = None
        after = 0
        while True:
            page: SnapshotAnswer = self._call(
                lambda: self.transport.snapshot(store, at, after)  # noqa: B023
            )
            with gcpause.paused():
                self.db.stage_page(store, page.records)
            at, after = page.at, page.after
            if not page.more:
                break
            if self.progress is not None:
                self.progress.page(store, "snapshot", len(page.records), True, None)
        assert at is not None
        event, resent = self.db.stage_install(store, at)
        self._hooked.discard(store)  # the hooks look at the reloaded store afresh
        if resent:
            log.warning(
                "store %s: %d changes of this client were missing on the server", store, resent
            )
        self.hub.publish(event)
        if self.progress is not None:  # done once the records are installed
            self.progress.page(store, "snapshot", len(page.records), False, None)
        return resent

    @property
    def closing(self) -> bool:
        """Whether :meth:`close` was called: work failing now fails because of it."""
        return self._closing.is_set()

    def close(self) -> None:
        """Stop retrying (a wait between attempts ends now) and stop the
        prefetch thread (a fetch under way is abandoned)."""
        self._closing.set()
        self._prefetcher.shutdown(wait=False, cancel_futures=True)

    # -- a whole round ------------------------------------------------------

    def sync(self, store: str) -> SyncReport:
        """One round for ``store``: push, pull, and push what the pull produced."""
        report = SyncReport()
        self.push(store, report)
        self.pull(store, report=report)
        self.push(store, report)  # what the pull produced (attribute clean-ups); none: no request
        return report
