"""Background sync: a push thread kicked by local writes, one live channel for all stores.

The live channel is one thread (``idsync-live``) that keeps a single
``POST /v1/wait`` open for every store of the client, with the cursors of
the local sync state, asking for pages: the answer carries each changed
store's first page of changes, which is applied at once, as a pulled page
would be; only a store whose page said ``more`` (or that came without a
page) is pulled (no wait). Then it waits again. A store without a cursor,
and a store opened after start, is pulled first. A store's error in the wait's answer
is handled as the same error from a pull would be (``reset_required``:
reload a snapshot; ``store_not_found``: create the store if allowed).

The wait request itself runs on a short-lived thread (``idsync-wait``) so
that the live thread can stop listening to it: when a store joins, the live
thread leaves the wait in flight to end by itself (its answer is dropped),
pulls the new store and opens a new wait that covers it. Until the old
request ends (at most the long-poll time) two are open; at rest, one.

Only the process holding the local file's sync lock runs the threads; the
others wait in ``standby`` and take over when the lock frees (for example
when the syncing process dies).

The threads survive every failure: it is logged, shown in the status as
``last_error``, and the round is tried again after a backoff. Requests in a
round are tried once (not through the retry policy's attempts): the loops'
own backoff (0.5 s doubling to ``max_offline_delay``, the server's
Retry-After as a floor) is the retry, so a failure shows in the status,
and reaches status listeners, as soon as it happens. After
:meth:`BackgroundSync.stop` a thread still finishing a request changes
nothing: no status, no page applied.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from .errors import (
    AuthError,
    IdsyncError,
    LocalStorageError,
    PermanentError,
    ResetRequired,
    StoreDropped,
    StoreNotFound,
    TemporaryError,
)
from .processlock import ProcessLock
from .status import StatusTracker
from .sync import SyncEngine, SyncReport
from .wire import WaitAnswer

log = logging.getLogger("idsync.client")


class BackgroundSync:
    """Runs a :class:`SyncEngine` in daemon threads until :meth:`stop`.

    ``long_poll``: seconds each wait for news holds on the server.
    ``aside_interval``: seconds a store whose pull or wait failed for good
    (a permanent error of its own) stays out of the wait before it is tried
    again, so one failing store does not hold the others' news back.
    ``outside_write_interval``: how often the idle push thread looks for
    changes another process wrote into the same file (they kick no thread
    here).
    """

    def __init__(
        self,
        engine: SyncEngine,
        status: StatusTracker,
        lock: ProcessLock,
        counts: Callable[[], tuple[int, int]],
        long_poll: float = 10.0,
        idle_interval: float = 30.0,
        standby_interval: float = 1.0,
        max_offline_delay: float = 5.0,
        aside_interval: float = 30.0,
        outside_write_interval: float = 1.0,
    ) -> None:
        self.engine = engine
        self.status = status
        self.lock = lock
        self.counts = counts
        self.long_poll = long_poll
        self.idle_interval = idle_interval
        self.standby_interval = standby_interval
        self.max_offline_delay = max_offline_delay
        self.aside_interval = aside_interval
        self.outside_write_interval = outside_write_interval
        self._stop = threading.Event()
        self._kick = threading.Event()
        # Wakes the live thread: a wait answered, a store joined, a kick, stop.
        self._wake_live = threading.Event()
        self._resume = threading.Event()
        self._resume.set()
        self._threads: list[threading.Thread] = []
        self._stores: set[str] = set()
        # Stores to pull before the next wait (new, changed, or after a failure).
        self._due: set[str] = set()
        # Stores kept out of the wait until a time (monotonic), after an error.
        self._aside: dict[str, float] = {}
        self._joined = False
        self._turn = 0
        self._retry_after = 0.0  # the last temporary failure's Retry-After
        self._wait_thread: threading.Thread | None = None  # the last wait sent
        # True while the live thread listens for a wait's answer (see kick).
        self._listening = False
        # Wait requests sent and maybe still in flight (see join_waits).
        self._waits: list[threading.Thread] = []
        self._guard = threading.Lock()

    # -- control ------------------------------------------------------------

    def start(self, stores: list[str]) -> None:
        """Start the push thread and the live channel for ``stores``."""
        with self._guard:
            self._stores.update(stores)
            self._due.update(stores)
        self._spawn("idsync-push", self._push_loop)
        self._spawn("idsync-live", self._live_loop)

    def add_store(self, store: str) -> None:
        """Sync ``store`` too (no-op if already synced): it is pulled at once and
        joins the live channel, whose wait in flight is left for a new one."""
        with self._guard:
            if store in self._stores or self._stop.is_set():
                return
            self._stores.add(store)
            self._due.add(store)
            self._joined = True
        self._wake_live.set()

    def pull_soon(self, store: str) -> None:
        """Pull ``store`` at the next round (a store re-created after a drop)."""
        with self._guard:
            if store not in self._stores or self._stop.is_set():
                return
            self._due.add(store)
            self._aside.pop(store, None)
            self._joined = True
        self._wake_live.set()

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def kick(self) -> None:
        """Push soon: a local write happened, or the network may be back."""
        self._kick.set()
        # The live thread needs waking only from a pause (a backoff after a
        # failure, no store to wait on). Listening for a wait's answer, it
        # would wake for nothing, just when the push needs the interpreter.
        if not self._listening:
            self._wake_live.set()

    def resume(self) -> None:
        """Leave the auth-error pause (new credentials were given)."""
        self._resume.set()
        self.kick()

    def stop(self, timeout: float = 0.5) -> None:
        """Stop the threads, waiting at most ``timeout`` seconds in all.

        A thread still in a request (a long-poll) is left to end by itself:
        from now on it changes nothing. Safe to call from one of the threads
        (a callback): that thread ends when the callback returns.
        """
        with self._guard:
            self._stop.set()
        self._resume.set()
        self._kick.set()
        self._wake_live.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        self.lock.release()

    def join_waits(self, deadline: float) -> None:
        """Wait (until ``deadline``, monotonic) for the wait requests still in
        flight to end; after the transport cut them, they end at once."""
        with self._guard:
            waits = list(self._waits)
        for thread in waits:
            if thread is not threading.current_thread():  # close() from a status callback
                thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def running(self) -> bool:
        """True until :meth:`stop`."""
        return not self._stop.is_set()

    # -- status -------------------------------------------------------------

    def _report(self, **changes: object) -> None:
        """Update the status, unless stopped (the guard orders it with stop())."""
        with self._guard:
            if not self._stop.is_set():
                self.status.update(**changes)

    def _with_counts(self, changes: dict[str, object]) -> dict[str, object]:
        # If the local file is failing too, keep the counts shown.
        with contextlib.suppress(IdsyncError):
            changes["pending"], changes["rejected"] = self.counts()
        return changes

    # -- loops --------------------------------------------------------------

    def _ready(self) -> bool:
        """Wait until this process may sync (lock held, not paused); False when stopping."""
        delay = 0.0
        while not self._stop.is_set():
            if not self._resume.is_set():
                self._resume.wait(self.standby_interval)
                continue
            try:
                if self.lock.acquire():
                    return True
            except LocalStorageError as exc:
                log.warning("background sync waits: %s", exc)
                with self.status.callbacks.held():
                    self._report(last_error=str(exc))
                delay = min(self.max_offline_delay, max(0.5, delay * 2))
                self._kick.wait(delay)
                self._kick.clear()
                continue
            with self.status.callbacks.held():
                # The syncing process uploads this one's writes: the counts
                # change without a round here.
                self._report(**self._with_counts({"state": "standby"}))
            self._stop.wait(self.standby_interval)
        return False

    def _push_loop(self) -> None:
        delay = 0.0
        while self._ready():
            self._kick.clear()
            newest = self._newest_change()
            if self._round(self._push_all):
                delay = 0.0
                self._idle(newest)
            else:
                delay = min(self.max_offline_delay, max(0.5, delay * 2))
                self._kick.wait(max(delay, self._retry_after))
        self._close_connection()

    def _newest_change(self) -> int | None:
        with contextlib.suppress(IdsyncError):
            return self.engine.db.newest_change_number()
        return None

    def _idle(self, newest: int | None) -> None:
        """Wait for a kick, at most ``idle_interval``. A change another process
        wrote into this file since ``newest`` was read (before the round)
        counts as one: it is looked for every ``outside_write_interval``."""
        deadline = time.monotonic() + self.idle_interval
        while (left := deadline - time.monotonic()) > 0:
            if self._kick.wait(min(left, self.outside_write_interval)):
                return
            if self._newest_change() != newest:
                return

    def _push_all(self) -> SyncReport:
        report = SyncReport()
        with self._guard:  # a store may join meanwhile
            stores = sorted(self._stores - self.engine.dropped_stores())
        refused: PermanentError | None = None
        for store in stores:
            try:
                self.engine.push(store, report)
            except AuthError:
                raise
            except PermanentError as exc:  # this store's refusal: push the others
                refused = refused or exc
        if refused is not None:
            raise refused
        return report

    def _live_loop(self) -> None:
        delay = 0.0
        while self._ready():
            if self._round(self._live_round):
                delay = 0.0
            else:
                delay = min(self.max_offline_delay, max(0.5, delay * 2))
                self._wake_live.wait(max(delay, self._retry_after))
                self._wake_live.clear()
        self._close_connection()

    def _live_round(self) -> SyncReport:
        """Pull the stores that are due, else hold one wait for all and note its news.

        Raises the first error of a store put aside (after handling the
        others), so that the status shows it.
        """
        report = SyncReport()
        now = time.monotonic()
        with self._guard:
            self._joined = False
            back = [s for s, until in self._aside.items() if until <= now]
            for store in back:
                del self._aside[store]
            self._due.update(back)
            self._due -= self.engine.dropped_stores()  # not synced until re-created
            due = sorted(self._due)
        failure: IdsyncError | None = None
        for store in due:
            if self._stop.is_set():
                return report
            try:
                self._pull(store, report)
            except (AuthError, TemporaryError, LocalStorageError):
                raise  # the link or the file, not this store: the whole round fails
            except PermanentError as exc:
                failure = failure or exc
                self._set_aside(store)
            with self._guard:
                self._due.discard(store)
        if failure is not None:
            raise failure
        if due:
            return report  # caught up: the next round waits
        held = self._hold_wait()
        if held is not None:
            self._take(*held, report)
        return report

    def _pull(self, store: str, report: SyncReport) -> None:
        self.engine.pull(store, report=report, cancelled=self._stop.is_set)
        if not self._stop.is_set() and self.engine.db.pending_count(store):
            self.kick()

    def _set_aside(self, store: str) -> None:
        with self._guard:
            self._aside[store] = time.monotonic() + self.aside_interval
            self._due.discard(store)

    def _hold_wait(self) -> tuple[dict[str, str | None], WaitAnswer] | None:
        """One ``POST /v1/wait`` for every store not put aside: the cursors it
        was asked with and its answer; None when left early.

        The request runs on its own thread; this one listens for its answer,
        and stops listening when a store joins or sync stops (the request is
        then left to end by itself and its answer dropped).
        """
        with self._guard:
            stores = sorted(self._stores - set(self._aside) - self.engine.dropped_stores())
        db, transport = self.engine.db, self.engine.transport
        if not stores:
            self._wake_live.wait(self.idle_interval)
            self._wake_live.clear()
            return None
        limits = transport.limits()
        seconds = min(self.long_poll, limits.max_wait_seconds)
        if len(stores) > limits.max_wait_stores:
            # More stores than one wait may name: wait on them in turns, for
            # shorter waits, so that each is asked about every long_poll or so.
            turns = -(-len(stores) // limits.max_wait_stores)
            start = self._turn % turns * limits.max_wait_stores
            self._turn += 1
            stores = stores[start : start + limits.max_wait_stores]
            seconds = max(1.0, seconds / turns)
        cursors = {store: db.cursor(store) for store in stores}
        answered: Future[WaitAnswer] = Future()
        pages = self.engine.wait_pages

        def send() -> None:
            try:
                answered.set_result(transport.wait(cursors, seconds, pages=pages))
            except PermanentError as exc:
                if pages and exc.code == "invalid_request":
                    # A server that predates pages in wait answers: ask without.
                    self.engine.wait_pages = False
                answered.set_exception(exc)
            except BaseException as exc:  # handed to the live thread
                answered.set_exception(exc)
            finally:
                self._wake_live.set()

        thread = threading.Thread(target=send, name="idsync-wait", daemon=True)
        with self._guard:
            self._waits = [t for t in self._waits if t.is_alive()]
            self._waits.append(thread)
        self._wait_thread = thread
        self._listening = True
        try:
            thread.start()
            # Bounded: the request's own read timeout ends it well before this.
            deadline = time.monotonic() + seconds + 60.0
            while time.monotonic() < deadline:
                self._wake_live.wait(max(0.0, deadline - time.monotonic()))
                self._wake_live.clear()
                if answered.done():
                    return cursors, answered.result()
                with self._guard:
                    if self._joined or self._stop.is_set():
                        return None
        finally:
            self._listening = False
        raise TemporaryError("the wait for changes did not end")

    def _take(
        self, cursors: dict[str, str | None], answer: WaitAnswer, report: SyncReport
    ) -> None:
        """Apply the changed stores' pages (a store without one, or with more to
        come, is due for a pull); handle each store's error as a pull would."""
        if self._stop.is_set():
            return
        failure: IdsyncError | None = None
        for store in answer.changed:
            if self._stop.is_set():
                return
            if store not in self._stores:
                continue
            page = answer.pages.get(store)
            try:
                caught_up = page is not None and self.engine.take_page(
                    store, cursors.get(store), page, report
                )
            except (AuthError, TemporaryError, LocalStorageError):
                raise
            except PermanentError as refused:
                failure = failure or refused
                self._set_aside(store)
                continue
            if not caught_up:
                with self._guard:
                    self._due.add(store)
            elif self.engine.db.pending_count(store):
                self.kick()
        for store, error in sorted(answer.errors.items()):
            if store not in self._stores:
                continue
            exc = self.engine.transport.error_for(store, error)
            try:
                self._recover(store, exc, report)
            except (AuthError, LocalStorageError):
                raise
            except IdsyncError as unrecovered:
                failure = failure or unrecovered
        if failure is not None:
            raise failure

    def _recover(self, store: str, exc: IdsyncError, report: SyncReport) -> None:
        """Act on one store's error from a wait; raise what cannot be acted on."""
        if isinstance(exc, StoreDropped):
            self.engine.note_dropped(store, exc)  # left out of every round from now on
            raise exc
        if isinstance(exc, ResetRequired):
            report.resent += self.engine.reset(store)
            report.resets += 1
        elif isinstance(exc, StoreNotFound) and self.engine.create_stores:
            try:
                self.engine.create_store(store)
            except PermanentError:  # may not create it (another user's name): set aside
                self._set_aside(store)
                raise
        elif isinstance(exc, TemporaryError):
            pass  # pulled next round, through the retry policy
        else:
            self._set_aside(store)
            raise exc
        with self._guard:
            self._due.add(store)

    def _close_connection(self) -> None:
        with contextlib.suppress(IdsyncError):
            self.engine.db.close()

    def _round(self, work: Callable[[], SyncReport]) -> bool:
        """Run one piece of sync work and report it in the status; True if it went well.

        Never raises: the thread must survive every failure. Callbacks (events,
        status) run after the work, outside the library's locks: a round that
        went well tells its events before it reads the counts for the status.
        """
        if self._stop.is_set():
            return False
        with self.status.callbacks.held():
            return self._guarded_round(work)

    def _unless_stopped(self, work: Callable[[], SyncReport]) -> SyncReport | None:
        """``work()``; None when it failed because sync is stopping (a request
        cut by close, the local file closed): nothing to log or show."""
        try:
            # Tried once: this thread's loop retries with its own backoff, and
            # a failure is shown (and heard by listeners) at once.
            with self.engine.one_attempt():
                return work()
        except Exception:
            # The client closes by cutting the engine first, then stopping
            # this thread: a round failing in between failed because of it.
            if self._stop.is_set() or self.engine.closing:
                return None
            raise

    def _guarded_round(self, work: Callable[[], SyncReport]) -> bool:
        transport = self.engine.transport
        token, contacts = transport.token, transport.contacts
        self._retry_after = 0.0
        try:
            report = self._unless_stopped(work)
            if report is None:
                return False
            # The round's work is done and no lock is held: its change events
            # reach the app now, before the counts are read and the status set.
            self.status.callbacks.flush()
        except AuthError as exc:
            # Pause only if the refused token is still the current one: a request
            # sent before set_token() may come back refused after it.
            if transport.token == token:
                self._resume.clear()
                self._report(state="auth_error", last_error=str(exc))
            return False
        except TemporaryError as exc:
            # The server's Retry-After (capped like the retry policy's) holds
            # back the next try of this thread's loop.
            hint = exc.retry_after or 0.0
            self._retry_after = min(hint, self.engine.policy.max_delay)
            self._report(**self._with_counts({"state": "offline", "last_error": str(exc)}))
            return False
        except Exception as exc:  # keep the thread alive; the app sees the error
            if isinstance(exc, IdsyncError):
                log.warning("background sync failed: %s", exc)
            else:
                log.exception("background sync failed")
            if isinstance(exc, LocalStorageError):
                self._close_connection()  # the next round starts on a fresh connection
            changes: dict[str, object] = {"last_error": str(exc)}
            if transport.contacts != contacts:
                changes["state"] = "online"  # the server answered; the failure is elsewhere
            self._report(**self._with_counts(changes))
            return False
        changes = self._with_counts({})
        if report.resets:
            resets = self.status.current.resets + report.resets
            changes.update(resets=resets, last_reset=time.time())
        if transport.contacts != contacts:
            changes.update(state="online", last_error=None, last_sync=time.time())
        self._report(**changes)
        return True
