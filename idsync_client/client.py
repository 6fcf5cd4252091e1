"""The Client: a local database, optionally synced with a server."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from . import arguments
from .attributes import AttributeCleanUp
from .background import BackgroundSync
from .errors import (
    AuthError,
    ClientClosed,
    IdsyncError,
    LocalStorageError,
    SyncLocked,
    TemporaryError,
)
from .localdb import LocalDB
from .multisync import sync_stores
from .processlock import ProcessLock
from .progress import ProgressReporter, SyncProgress, store_totals
from .protocol import Limits, validate_store_name
from .records import ChangeEvent, RejectedChange
from .retry import RetryPolicy
from .status import StatusTracker, SyncStatus
from .store import Store
from .subscriptions import CallbackQueue, SubscriptionHub
from .sync import SyncEngine, SyncReport
from .transport import CONNECT_TIMEOUT, READ_TIMEOUT, HttpTransport

if TYPE_CHECKING:
    import requests

log = logging.getLogger("idsync.client")


class Client:
    """An offline-first client on one local SQLite file.

    ``server`` is the server's base URL (``http://127.0.0.1:8765``); without
    it the client is purely local. ``token`` is sent as a bearer token; it
    may be a callable that supplies one, called again once after a 401
    before sync pauses (``auth_error``).
    ``synchronous`` is the local durability (``FULL`` by default, see
    docs/client.md). ``retry`` replaces the retry policy (tests inject one
    with a fake sleep). ``long_poll`` is how long background sync's wait
    for news (one request for all stores) holds on the server.
    ``session``: a :class:`requests.Session` to send requests with (its
    adapters, headers, proxies and certificates are used as they are);
    without one, proxies and CA bundle are read from the environment once
    (``HTTPS_PROXY``, ``NO_PROXY``, ``REQUESTS_CA_BUNDLE``, ...).
    ``timeouts``: ``(connect, read)`` seconds for each request (a long-poll
    waits its wait plus a margin).

    Use it as a context manager, or call :meth:`close`.

    Callbacks (subscriptions, status listeners) run after the library's
    locks are released, in order, on the thread that caused them; they may
    call any public method, ``sync()`` and ``close()`` included.
    """

    def __init__(
        self,
        path: str | Path,
        server: str | None = None,
        *,
        token: str | Callable[[], str | None] | None = None,
        synchronous: str = "FULL",
        create_stores: bool = True,
        retry: RetryPolicy | None = None,
        long_poll: float = 10.0,
        batch_size: int = 1000,
        limits: Limits | None = None,
        session: requests.Session | None = None,
        timeouts: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT),
    ) -> None:
        # Every argument is checked before anything touches the disk.
        arguments.check_client(
            path,
            synchronous=synchronous,
            create_stores=create_stores,
            retry=retry,
            long_poll=long_poll,
            batch_size=batch_size,
            limits=limits,
        )
        server = arguments.server_url(server)
        arguments.token_or_supplier(token)
        self.path = Path(path)
        self.limits = limits or Limits()
        # Checks its arguments before the local file is opened.
        self.transport = (
            None
            if server is None
            else HttpTransport(server, token, session=session, timeouts=timeouts)
        )
        self.db = LocalDB(self.path, synchronous=synchronous)
        self._callbacks = CallbackQueue()
        self._hub = SubscriptionHub(self._callbacks)
        self._stores: dict[str, Store] = {}
        self._closed = False
        self._lock = ProcessLock(self.path.with_name(self.path.name + ".sync-lock"))
        if self.transport is not None:
            self.transport.on_unreachable = self._unreachable
        self._flushes: list[threading.Thread] = []
        self._status = StatusTracker(
            SyncStatus(
                state="idle" if server else "local",
                pending=self.db.pending_count(),
                rejected=len(self.db.rejected()),
            ),
            self._callbacks,
        )
        self._engine = (
            None
            if self.transport is None
            else SyncEngine(
                self.db,
                self.transport,
                retry or RetryPolicy(),
                self._hub,
                batch_size=batch_size,
                create_stores=create_stores,
            )
        )
        self._attributes = AttributeCleanUp(self.db, self._hub)
        self._progress = ProgressReporter(
            None if self._engine is None else store_totals(self._engine.store_figures)
        )
        if self._engine is not None:
            self._engine.progress = self._progress
        if self._engine is not None:
            self._engine.page_hooks.append(self._attributes)
            self._engine.on_dropped = self._dropped
        for name in self.db.known_stores():
            self._stores[name] = Store(self, name)
        self._long_poll = long_poll
        self._background: BackgroundSync | None = None
        self._sync_lock = threading.Lock()

    @property
    def client_id(self) -> str:
        """This local database's stable id, which the server keys idempotency on."""
        return self.db.client_id

    # -- stores -------------------------------------------------------------

    def store(self, name: str) -> Store:
        """The store called ``name`` (created locally on first use).

        Sync covers every store opened this way, and every store the local
        file has synced before.
        """
        self._check_open()
        validate_store_name(arguments.text("a store name", name))
        if name not in self._stores:
            self._stores[name] = Store(self, name)
            if self._background is not None:
                self._background.add_store(name)
        return self._stores[name]

    @property
    def stores(self) -> list[str]:
        """The names of the stores sync covers (opened here or synced before), sorted."""
        return sorted(self._stores)

    @property
    def syncing_in_background(self) -> bool:
        """Whether background sync is on (between :meth:`start` and :meth:`stop`)."""
        return self._background is not None

    def _local(self) -> LocalDB:
        self._check_open()
        return self.db

    def _check_open(self) -> None:
        if self._closed:
            raise ClientClosed("the client is closed")

    def _changed(self, event: ChangeEvent) -> None:
        """A local write committed: tell subscribers, update the count, push soon."""
        self._hub.publish(event)
        # Each record a local write added or deleted queued one outbox entry.
        self._status.add_pending(len(event.added) + len(event.deleted))
        background = self._background
        if background is not None:
            background.kick()

    def _unreachable(self, message: str) -> None:
        """A request found no server: show it now, not after the retries."""
        if not self._closed:
            self._status.link_down(message)

    def _dropped(self, store: str) -> None:
        engine = self._require_engine()
        self._status.update(dropped=tuple(sorted(engine.dropped_stores())))

    def _counts(self) -> tuple[int, int]:
        return self.db.pending_count(), len(self.db.rejected())

    def _counted(self) -> dict[str, int]:
        """The pending and rejected counts after a round that failed part way
        (some batches may have gone); none when the file cannot say."""
        try:
            pending, rejected = self._counts()
        except IdsyncError:
            return {}
        return {"pending": pending, "rejected": rejected}

    # -- sync ---------------------------------------------------------------

    def _require_engine(self) -> SyncEngine:
        self._check_open()
        if self._engine is None:
            raise IdsyncError("this client has no server configured")
        return self._engine

    def sync(self) -> SyncReport:
        """One sync round for every store opened on this client, now.

        Raises the last TemporaryError when the server stays unreachable
        through the retries, AuthError when credentials are refused,
        SyncLocked when another process is syncing this file, and
        LocalStorageError when the local file fails (disk full, ...).
        Subscription and status callbacks caused by the round run before it
        returns, after its locks are released.
        """
        engine = self._require_engine()
        with self._callbacks.held(), self._sync_lock:
            try:
                if not self._lock.acquire():
                    raise SyncLocked(f"another process is syncing {self.path}")
            except LocalStorageError as exc:
                self._status.update(last_error=str(exc))
                raise
            try:
                return self._sync_round(engine)
            finally:
                if self._background is None:
                    self._lock.release()

    def _sync_round(self, engine: SyncEngine) -> SyncReport:
        before = self._status.current.state
        contacts = engine.transport.contacts
        total = SyncReport()
        self._status.update(state="syncing")
        try:
            # One request for the news of every store (see multisync);
            # a store's refusal (403, missing) does not stop the others.
            total, refusals = sync_stores(engine, sorted(self._stores.keys()))
            if refusals:
                raise refusals[min(refusals)]
        except AuthError as exc:
            self._status.update(state="auth_error", last_error=str(exc), **self._counted())
            raise
        except TemporaryError as exc:
            self._status.update(state="offline", last_error=str(exc), **self._counted())
            raise
        except BaseException as exc:
            # The server may have answered (a permanent error) or not been
            # asked at all (the local file failed): say which, never "syncing".
            answered = engine.transport.contacts != contacts
            state = "online" if answered else before
            self._status.update(state=state, last_error=str(exc), **self._counted())
            raise
        finally:
            self._status.reset_seen(total.resets)
        pending, rejected = self._counts()
        if engine.transport.contacts != contacts:
            self._status.succeeded(pending, rejected)
        else:  # nothing was asked of the server: no news about the link
            self._status.update(state=before, pending=pending, rejected=rejected)
        return total

    def flush(self, timeout: float = 5.0) -> bool:
        """Push pending changes now, waiting at most ``timeout`` seconds.

        Returns True if nothing is left to upload. For an app about to exit:
        ``client.flush(5.0)`` then ``client.close()`` (or
        ``close(flush_timeout=5.0)``). A push still under way at the deadline
        is abandoned; what it did not upload stays in the outbox for next time.
        """
        timeout = arguments.seconds("timeout", timeout)
        engine = self._require_engine()
        done = threading.Event()

        def push_all() -> None:
            try:
                with self._callbacks.held(), self._sync_lock:
                    if self._lock.acquire():
                        report = SyncReport()
                        try:
                            for name in sorted(self._stores.keys() - engine.dropped_stores()):
                                engine.push(name, report)
                        finally:
                            if self._background is None:
                                self._lock.release()
                            # A push can find a restored server too (reload, re-send).
                            self._status.reset_seen(report.resets)
            except Exception as exc:
                if not self._closed:  # else: cut by close(), nothing to tell
                    log.warning("flush failed: %s", exc)
                    self._status.update(last_error=str(exc))
            finally:
                done.set()
                with contextlib.suppress(IdsyncError):
                    self.db.close()  # this thread's connection

        thread = threading.Thread(target=push_all, name="idsync-flush", daemon=True)
        self._flushes = [t for t in self._flushes if t.is_alive()]
        self._flushes.append(thread)
        thread.start()
        done.wait(timeout)
        try:
            pending = self.db.pending_count()
        except IdsyncError:
            return False
        self._status.update(pending=pending)
        return pending == 0

    def vacuum(self) -> int:
        """Give the local file's free space back to the file system; returns
        the bytes freed. Safe while syncing (writes wait meanwhile); the first
        call on a file made by an older release rebuilds it once (a full
        ``VACUUM``, which needs free disk space about the file's size)."""
        self._check_open()
        return self.db.vacuum()

    def recreate_store(self, name: str) -> SyncReport:
        """Create the dropped store ``name`` again on the server and sync it.

        The server starts it afresh (a new epoch); this client reloads it and
        sends its pending changes and its own earlier changes, so the store
        comes back with this client's records (other devices' records are
        gone with the drop). Also fine for a store that was not dropped.
        Raises what a sync raises (TemporaryError, AuthError, SyncLocked, ...).
        """
        engine = self._require_engine()
        store = self.store(name).name
        with self._callbacks.held(), self._sync_lock:
            if not self._lock.acquire():
                raise SyncLocked(f"another process is syncing {self.path}")
            try:
                report = engine.recreate_store(store)
            finally:
                if self._background is None:
                    self._lock.release()
                self._status.update(dropped=tuple(sorted(engine.dropped_stores())))
            pending, rejected = self._counts()
            self._status.update(pending=pending, rejected=rejected)
        if self._background is not None:
            self._background.pull_soon(store)
        return report

    def start(self) -> None:
        """Start syncing in the background (threads); returns at once.

        The state is ``connecting`` until the server first answers.
        """
        engine = self._require_engine()
        if self._background is not None and self._background.running:
            return
        self._background = BackgroundSync(
            engine, self._status, self._lock, self._counts, long_poll=self._long_poll
        )
        self._status.update(state="connecting")
        self._background.start(sorted(self._stores))

    def stop(self) -> None:
        """Stop background sync (pending changes stay in the outbox).

        Returns within about half a second; a long-poll still under way is
        abandoned and changes nothing (state and data) when it returns.
        """
        background, self._background = self._background, None
        if background is not None:
            background.stop()
            changes: dict[str, object] = {"state": "idle"}
            with contextlib.suppress(IdsyncError):
                changes["pending"], changes["rejected"] = self._counts()
            self._status.update(**changes)

    def kick(self) -> None:
        """Ask background sync to try the server now (after the network came back)."""
        background = self._background
        if background is not None:
            background.kick()

    def set_token(self, token: str | None) -> None:
        """Replace the bearer token; resumes a sync paused by an auth error."""
        token = arguments.token(token)
        engine = self._require_engine()
        engine.transport.token = token
        background = self._background
        if background is not None:
            background.resume()

    # -- status and rejected changes ----------------------------------------

    @property
    def status(self) -> SyncStatus:
        """The sync status now (state, pending and rejected counts, last error/sync)."""
        return self._status.current

    def on_status(self, callback: Callable[[SyncStatus], None]) -> Callable[[], None]:
        """Call ``callback(status)`` whenever the status changes; returns an unsubscribe.

        TypeError if ``callback`` is not callable. A listener that raises is
        logged; the call that changed the status is not affected.
        """
        self._check_open()
        return self._status.listen(callback)

    def on_progress(self, callback: Callable[[SyncProgress], None]) -> Callable[[], None]:
        """Call ``callback(progress)`` after each page of a long download (a first
        sync, a reload from a snapshot); returns an unsubscribe.

        Each :class:`SyncProgress` names the store, the phase, what was received
        and the total when known; the last one of a download has ``done``.
        Callbacks run on a delivery thread of their own, in order, never under
        the library's locks (while the round goes on, not after it). TypeError
        if ``callback`` is not callable; a callback that raises is logged.
        """
        self._check_open()
        return self._progress.listen(callback)

    def rejected(self) -> list[RejectedChange]:
        """Changes the server refused for good, oldest first, until dismissed."""
        return self._local().rejected()

    def dismiss(self, rejected_id: int) -> bool:
        """Forget a rejected change; False if there is none with that id."""
        found = self._local().dismiss(rejected_id)
        self._status.update(rejected=len(self.db.rejected()))
        return found

    # -- lifetime -----------------------------------------------------------

    def close(self, flush_timeout: float | None = None) -> None:
        """Stop syncing and close the local database. Safe to call twice.

        Returns promptly (about half a second at most): requests still under
        way are cut, and every sync thread ends; none touches the local file
        afterwards. Every thread's connection to the local file is closed.
        With ``flush_timeout``, first push pending changes for at most that
        long (see :meth:`flush`). Safe to call from a callback.
        """
        if flush_timeout is not None:
            flush_timeout = arguments.seconds("flush_timeout", flush_timeout)
        if self._closed:
            return
        if flush_timeout is not None and self._engine is not None:
            self.flush(flush_timeout)
        self._closed = True
        # Cut what is in flight first, so that the threads end soon: retries
        # stop, their waits end, requests fail at once.
        if self._engine is not None:
            self._engine.close()
        if self.transport is not None:
            self.transport.close()
        deadline = time.monotonic() + 0.5
        background = self._background
        self.stop()
        if background is not None:
            background.join_waits(deadline)
        for thread in self._flushes:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        self._lock.release()
        self.db.close_all()
        self._progress.close()
        self._status.update(state="closed")

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
