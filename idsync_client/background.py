"""Background sync: a push thread kicked by local writes, a long-poll thread per store.

Only the process holding the local file's sync lock runs them; the others
wait in ``standby`` and take over when the lock frees (for example when the
syncing process dies).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .errors import AuthError, IdsyncError, TemporaryError
from .processlock import ProcessLock
from .status import StatusTracker
from .sync import SyncEngine

log = logging.getLogger("idsync.client")


class BackgroundSync:
    """Runs a :class:`SyncEngine` in daemon threads until :meth:`stop`.

    ``long_poll``: seconds each pull waits on the server for news; it also
    bounds how long a stop can take to reach a pull thread.
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

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the threads. Pulls blocked in a long-poll end when it returns."""
        self._stop.set()
        self._resume.set()
        self._kick.set()
        self._wake_pulls.set()
        for thread in self._threads:
            thread.join(timeout if thread.name == "idsync-push" else 0.2)
        self.lock.release()

    # -- loops --------------------------------------------------------------

    def _ready(self) -> bool:
        """Wait until this process may sync (lock held, not paused); False when stopping."""
        while not self._stop.is_set():
            if not self._resume.is_set():
                self._resume.wait(self.standby_interval)
                continue
            if self.lock.acquire():
                return True
            self.status.update(state="standby")
            self._stop.wait(self.standby_interval)
        return False

    def _push_loop(self) -> None:
        delay = 0.0
        while self._ready():
            self._kick.clear()
            if self._round(lambda: [self.engine.push(s) for s in sorted(self._stores)]):
                delay = 0.0
                self._kick.wait(self.idle_interval)
            else:
                delay = min(self.max_offline_delay, max(0.5, delay * 2))
                self._kick.wait(delay)
        self.engine.db.close()

    def _pull_loop(self, store: str) -> None:
        delay = 0.0
        while self._ready():
            ok = self._round(
                lambda: self.engine.pull(store, wait=self.long_poll, cancelled=self._stop.is_set),
                stop_check=True,
            )
            if ok:
                delay = 0.0
                if self.engine.db.pending_count(store):
                    self.kick()
            else:
                delay = min(self.max_offline_delay, max(0.5, delay * 2))
                self._wake_pulls.wait(delay)
                self._wake_pulls.clear()
        self.engine.db.close()

    def _round(self, work: Callable[[], object], stop_check: bool = False) -> bool:
        """Run one piece of sync work and report it in the status; True if it went well."""
        if stop_check and self._stop.is_set():
            return False
        token = self.engine.transport.token
        try:
            work()
        except AuthError as exc:
            # Pause only if the refused token is still the current one: a request
            # sent before set_token() may come back refused after it.
            if self.engine.transport.token == token:
                self._resume.clear()
                self.status.update(state="auth_error", last_error=str(exc))
            return False
        except TemporaryError as exc:
            pending, rejected = self.counts()
            self.status.update(
                state="offline", last_error=str(exc), pending=pending, rejected=rejected
            )
            return False
        except IdsyncError as exc:
            self.status.update(last_error=str(exc))
            return False
        except Exception as exc:  # keep the thread alive; the app sees the error
            log.exception("sync failed")
            self.status.update(last_error=f"internal error: {exc}")
            return False
        pending, rejected = self.counts()
        self.status.succeeded(pending, rejected)
        return True
