"""Background sync: a push thread kicked by local writes, a long-poll thread per store.

Only the process holding the local file's sync lock runs them; the others
wait in ``standby`` and take over when the lock frees (for example when the
syncing process dies).

The threads survive every failure: it is logged, shown in the status as
``last_error``, and the round is tried again after a backoff. After
:meth:`BackgroundSync.stop` a thread still finishing a request changes
nothing: no status, no page applied.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from .errors import AuthError, IdsyncError, LocalStorageError, TemporaryError
from .processlock import ProcessLock
from .status import StatusTracker
from .sync import SyncEngine, SyncReport

log = logging.getLogger("idsync.client")


class BackgroundSync:
    """Runs a :class:`SyncEngine` in daemon threads until :meth:`stop`.

    ``long_poll``: seconds each pull waits on the server for news.
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
    ) -> None:
        self.engine = engine
        self.status = status
        self.lock = lock
        self.counts = counts
        self.long_poll = long_poll
        self.idle_interval = idle_interval
        self.standby_interval = standby_interval
        self.max_offline_delay = max_offline_delay
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._wake_pulls = threading.Event()
        self._resume = threading.Event()
        self._resume.set()
        self._threads: list[threading.Thread] = []
        self._stores: set[str] = set()
        self._guard = threading.Lock()

    # -- control ------------------------------------------------------------

    def start(self, stores: list[str]) -> None:
        """Start the push thread and one pull thread per store."""
        self._spawn("idsync-push", self._push_loop)
        for store in stores:
            self.add_store(store)

    def add_store(self, store: str) -> None:
        """Begin pulling ``store`` too (no-op if already pulled)."""
        with self._guard:
            if store in self._stores or self._stop.is_set():
                return
            self._stores.add(store)
        self._spawn(f"idsync-pull-{store}", lambda: self._pull_loop(store))

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def kick(self) -> None:
        """Push soon: a local write happened, or the network may be back."""
        self._kick.set()
        self._wake_pulls.set()

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
        self._wake_pulls.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        self.lock.release()

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
                self._report(state="standby")
            self._stop.wait(self.standby_interval)
        return False

    def _push_loop(self) -> None:
        delay = 0.0
        while self._ready():
            self._kick.clear()
            if self._round(self._push_all):
                delay = 0.0
                self._kick.wait(self.idle_interval)
            else:
                delay = min(self.max_offline_delay, max(0.5, delay * 2))
                self._kick.wait(delay)
        self._close_connection()

    def _push_all(self) -> SyncReport:
        report = SyncReport()
        for store in sorted(self._stores):
            self.engine.push(store, report)
        return report

    def _pull(self, store: str, wait: float) -> SyncReport:
        report = self.engine.pull(store, wait=wait, cancelled=self._stop.is_set)
        if not self._stop.is_set() and self.engine.db.pending_count(store):
            self.kick()
        return report

    def _pull_loop(self, store: str) -> None:
        delay = 0.0
        wait = 0.0  # the first pull, and the first after a failure, answer at once
        while self._ready():
            if self._round(lambda: self._pull(store, wait)):  # noqa: B023
                delay = 0.0
                wait = self.long_poll
            else:
                wait = 0.0
                delay = min(self.max_offline_delay, max(0.5, delay * 2))
                self._wake_pulls.wait(delay)
                self._wake_pulls.clear()
        self._close_connection()

    def _close_connection(self) -> None:
        with contextlib.suppress(IdsyncError):
            self.engine.db.close()

    def _round(self, work: Callable[[], SyncReport]) -> bool:
        """Run one piece of sync work and report it in the status; True if it went well.

        Never raises: the thread must survive every failure. Callbacks (events,
        status) run after the work, outside the library's locks.
        """
        if self._stop.is_set():
            return False
        with self.status.callbacks.held():
            return self._guarded_round(work)

    def _guarded_round(self, work: Callable[[], SyncReport]) -> bool:
        transport = self.engine.transport
        token, contacts = transport.token, transport.contacts
        try:
            report = work()
        except AuthError as exc:
            # Pause only if the refused token is still the current one: a request
            # sent before set_token() may come back refused after it.
            if transport.token == token:
                self._resume.clear()
                self._report(state="auth_error", last_error=str(exc))
            return False
        except TemporaryError as exc:
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
