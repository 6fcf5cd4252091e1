"""One sync round for many stores, in few round trips.

The round pushes the stores with pending changes (a store with none sends
nothing), then asks one ``POST /v1/wait`` with ``wait: 0`` and ``pages:
true`` for every store that has a cursor (several requests past the
server's ``max_wait_stores``). A changed store's page in the answer is
applied as a pulled page would be; only a store whose page said ``more``,
that had no page, or that had an error of its own is pulled, and the pull
meets and handles that error as it always does (``reset_required``: reload;
``store_not_found``: create; ``store_dropped``: stop syncing it). Stores
without a cursor (a first sync: maybe a snapshot) run at the same time, in a
few threads, so that one store's download overlaps another's local writes.
Last, what the round produced locally (attribute clean-ups) is pushed.

Subscription, status and progress callbacks caused on those threads run on
the caller's thread, as those of the rest of the round do.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from .errors import AuthError, IdsyncError, PermanentError, ResetRequired
from .sync import SyncEngine, SyncReport

#: Threads that run first syncs of stores at the same time.
FIRST_SYNC_THREADS = 4

_T = TypeVar("_T")

#: A store's refusal in a round: its name and the error (the others still sync).
Refusals = dict[str, PermanentError]


def _merge(total: SyncReport, part: SyncReport) -> None:
    total.pushed += part.pushed
    total.pulled += part.pulled
    total.resets += part.resets
    total.resent += part.resent
    total.rejected += part.rejected


def _for_store(store: str, work: Callable[[], _T], refused: Refusals) -> _T | None:
    """``work()`` for one store; a refusal of that store alone is noted, not
    raised (the others still sync), and gives None."""
    try:
        return work()
    except (AuthError, ResetRequired):
        raise
    except PermanentError as exc:
        refused.setdefault(store, exc)
        return None


class _FirstSyncs:
    """First syncs of stores without a cursor, run in a few threads."""

    def __init__(self, engine: SyncEngine, stores: Sequence[str]) -> None:
        self.engine = engine
        self.pool = ThreadPoolExecutor(
            max_workers=max(1, min(FIRST_SYNC_THREADS, len(stores))),
            thread_name_prefix="idsync-first",
        )
        self._unstarted = len(stores)
        self._lock = threading.Lock()
        self.runs = [(store, self.pool.submit(self._run, store)) for store in stores]

    def _run(self, store: str) -> tuple[SyncReport, list[Callable[[], None]], BaseException | None]:
        with self._lock:
            self._unstarted -= 1
        report = SyncReport()
        error: BaseException | None = None
        with self.engine.hub.callbacks.collected() as calls:
            try:
                self.engine.pull(store, report=report)
            except BaseException as exc:  # handed to the caller's thread
                error = exc
            finally:
                with self._lock:
                    last = self._unstarted == 0
                if last:
                    # No store is left for this thread, which ends with the
                    # round: its connection and page cache would otherwise
                    # stay open until the client closes. (Closed after every
                    # store, each of 50 first syncs paid for a new one.)
                    with contextlib.suppress(IdsyncError):
                        self.engine.db.close()
        return report, calls, error

    def join(self, total: SyncReport, refused: Refusals) -> None:
        """Wait for every first sync; merge their reports, hand their callbacks
        to this thread, note each store's refusal and raise the first other error."""
        failure: BaseException | None = None
        try:
            for store, run in self.runs:
                report, calls, error = run.result()
                _merge(total, report)
                for call in calls:
                    self.engine.hub.callbacks.call(call)
                if error is None:
                    continue
                if isinstance(error, PermanentError) and not isinstance(
                    error, AuthError | ResetRequired
                ):
                    refused.setdefault(store, error)
                else:
                    failure = failure or error
        finally:
            self.pool.shutdown(wait=True)
        if failure is not None:
            raise failure


def _news(
    engine: SyncEngine, known: dict[str, str | None], report: SyncReport, refused: Refusals
) -> list[str]:
    """Ask the server which of the ``known`` stores (each with its cursor)
    changed, apply the pages it answers; the stores that still need a pull."""
    to_pull: list[str] = []
    stores = list(known)
    if not stores:
        return to_pull
    per_request = max(1, engine.transport.limits().max_wait_stores)
    for start in range(0, len(stores), per_request):
        chunk = stores[start : start + per_request]
        cursors = {store: known[store] for store in chunk}
        answer = engine.news(cursors)
        if answer is None:  # a server without pages: pull each, as before
            to_pull += chunk
            continue
        for store in chunk:
            if store in answer.errors:
                to_pull.append(store)  # the pull meets the error and handles it
                continue
            if store not in answer.changed:
                engine.unchanged(store)
                continue
            page = answer.pages.get(store)
            if page is None:
                to_pull.append(store)
                continue
            take = functools.partial(engine.take_page, store, cursors[store], page, report)
            if _for_store(store, take, refused) is False:
                to_pull.append(store)
    return to_pull


def sync_stores(engine: SyncEngine, stores: Sequence[str]) -> tuple[SyncReport, Refusals]:
    """One round for ``stores``: push, news of all in one request, pull where
    needed, push what the round produced.

    Returns the round's report and the stores refused on their own (403,
    missing, dropped, ...), which the other stores' sync does not wait for.
    Raises AuthError, ResetRequired, a TemporaryError that outlasted the
    retries, or a LocalStorageError for the round as a whole.
    """
    report = SyncReport()
    refused: Refusals = {}
    live = [s for s in stores if engine.dropped_error(s) is None]
    _push(engine, live, report, refused)
    live = [s for s in live if s not in refused]
    cursors = {s: engine.db.cursor(s) for s in live}
    fresh = [s for s in live if cursors[s] is None]
    known: dict[str, str | None] = {s: c for s, c in cursors.items() if c is not None}
    first = _FirstSyncs(engine, fresh) if fresh else None
    try:
        for store in _news(engine, known, report, refused):
            _for_store(store, functools.partial(engine.pull, store, report=report), refused)
    finally:
        if first is not None:
            first.join(report, refused)
    # What the round produced (attribute clean-ups).
    _push(engine, [s for s in live if s not in refused], report, refused)
    return report, refused


def _push(engine: SyncEngine, stores: Sequence[str], report: SyncReport, refused: Refusals) -> None:
    """Push the stores that have pending changes (one look when none has)."""
    if not engine.db.pending_count():
        return
    for store in stores:
        _for_store(store, functools.partial(engine.push, store, report), refused)
