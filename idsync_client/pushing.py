"""Pushing a store's outbox: batches in order, each change settled once.

Part of :class:`~.sync.SyncEngine`. A batch holds at most the server's
``max_batch`` changes and fits its ``max_body_bytes``; the next batch is
sent on a worker thread as soon as one is answered, and the answered one is
settled meanwhile, never before its answer (the server applies the outbox
in order). A batch the server refuses is split (too large) or loses the
change it names; what settling shows (a restored server, another copy of
this file) reloads the store or renews the client id, and a batch sent
ahead is then left unsettled, to go again from the outbox.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import killpoint
from .errors import PermanentError, StoreNotFound
from .protocol import Limits, Outcome
from .records import ChangeEvent, OutboxEntry, RejectedChange
from .wire import push_body

if TYPE_CHECKING:
    from .localdb import LocalDB
    from .subscriptions import SubscriptionHub
    from .sync import SyncReport
    from .transport import Transport

log = logging.getLogger("idsync.client")

_SPLIT_CODES = ("batch_too_large", "body_too_large")

#: Client ids renewed in a row on change_number_conflict before such a
#: conflict counts as a rejection (a fresh id cannot conflict: only a broken
#: server makes this limit matter).
_MAX_RENEWALS = 3


@dataclass(frozen=True)
class _SentBatch:
    """A batch of outbox entries as sent: the client id and the changes' JSON
    it went with, and its answer when sent ahead on a worker thread."""

    entries: list[OutboxEntry]
    client_id: str
    wire: list[str]
    answer: Future[list[Outcome]] | None


class Pushing:
    """The push side of :class:`~.sync.SyncEngine`, which provides the rest."""

    db: LocalDB
    transport: Transport
    hub: SubscriptionHub
    batch_size: int
    on_rejected: Callable[[RejectedChange], None] | None
    _push_lock: threading.Lock
    _prefetcher: ThreadPoolExecutor
    _thread: threading.local
    _renewals: int

    def _call(self, fn: Callable[[], Any]) -> Any:
        raise NotImplementedError

    def _ensure_store(self, store: str, exc: StoreNotFound) -> None:
        raise NotImplementedError

    def _reload(self, store: str, report: SyncReport) -> None:
        raise NotImplementedError

    def _push_outbox(self, store: str, report: SyncReport) -> None:
        """Push ``store``'s outbox until it is empty (see :meth:`SyncEngine.push`)."""
        with self._push_lock:
            # The batch sent after an answered one: the server takes it while
            # this thread settles the one before. Never sent before the
            # answer to the one before: the server applies batches in order.
            ahead: _SentBatch | None = None
            try:
                while True:
                    if ahead is None:
                        sent = self._next_batch(store, 0, report)
                        if sent is None:
                            return
                        outcomes = self._answer(store, sent, report)
                    else:
                        sent, ahead = ahead, None
                        assert sent.answer is not None
                        try:
                            outcomes = sent.answer.result()
                        except Exception:
                            outcomes = self._answer(store, sent, report)  # as when sent alone
                    if outcomes is None:
                        continue  # refused and handled: read the outbox again
                    killpoint.reached("client.push.answered")
                    ahead = self._next_batch(store, sent.entries[-1].n, report, send=True)
                    if not self._settle(store, sent.entries, outcomes, report, sent.client_id):
                        ahead = self._drop(ahead)  # sent again, from the outbox, next turn
            finally:
                self._drop(ahead)

    def _next_batch(
        self, store: str, after: int, report: SyncReport, send: bool = False
    ) -> _SentBatch | None:
        """The next batch of ``store``'s outbox past change number ``after``
        (None when there is none), sent ahead on a worker thread if ``send``."""
        while True:
            entries = self.db.pending(store, self.batch_size, after)
            if not entries:
                return None
            limits = self.transport.limits()  # asked once, when there is something to push
            entries = entries[: limits.max_batch]
            # Read once a batch (another process may renew it meanwhile):
            # the id the batch is sent with is the one its outcomes settle.
            client_id = self.db.client_id
            batch = self._fitting(store, entries, limits, report, client_id)
            if not batch:
                continue  # its first change was too large: rejected, read on
            wire = [e.to_wire_json() for e in batch]
            answer: Future[list[Outcome]] | None = None
            if send:
                once = getattr(self._thread, "once", False)  # as on this thread
                answer = self._prefetcher.submit(self._push_ahead, once, store, client_id, wire)
            return _SentBatch(batch, client_id, wire, answer)

    def _push_ahead(self, once: bool, store: str, client_id: str, wire: list[str]) -> list[Outcome]:
        """The push of a batch on a worker thread, tried once if the caller's are."""
        self._thread.once = once
        try:
            result: list[Outcome] = self._call(lambda: self.transport.push(store, client_id, wire))
            return result
        finally:
            self._thread.once = False

    @staticmethod
    def _drop(ahead: _SentBatch | None) -> None:
        """Leave a batch sent ahead unsettled: its changes stay in the outbox
        and go again (the server answers a change it has with its first outcome)."""
        if ahead is not None and ahead.answer is not None:
            ahead.answer.cancel()
            with contextlib.suppress(Exception):
                ahead.answer.exception()  # wait: the next push must not overtake it
        return None

    def _fitting(
        self,
        store: str,
        entries: Sequence[OutboxEntry],
        limits: Limits,
        report: SyncReport,
        client_id: str,
    ) -> list[OutboxEntry]:
        """The oldest entries whose push body fits ``max_body_bytes``.

        Empty when the oldest entry alone is too large: it is rejected here.
        """
        size = len(push_body(client_id, []).encode("utf-8"))
        batch: list[OutboxEntry] = []
        for entry in entries:
            size += len(entry.to_wire_json().encode("utf-8")) + 1  # and a comma
            if size > limits.max_body_bytes:
                break
            batch.append(entry)
        if not batch:
            self._reject_alone(store, entries[0], limits.max_body_bytes, report, client_id)
        return batch

    def _reject_alone(
        self,
        store: str,
        entry: OutboxEntry,
        max_body: int | None,
        report: SyncReport,
        client_id: str,
    ) -> None:
        size = len(push_body(client_id, [entry.to_wire_json()]).encode("utf-8"))
        limit = f"the server's {max_body} byte limit" if max_body else "what the server accepts"
        rejection, event = self.db.reject(
            entry,
            "body_too_large",
            f"change {entry.n} ({entry.op} {entry.key!r} in {store!r}) makes a push body of"
            f" {size} bytes, over {limit}",
        )
        self._rejected([rejection], event, report)

    def _answer(self, store: str, sent: _SentBatch, report: SyncReport) -> list[Outcome] | None:
        """Send ``sent`` on this thread and return its outcomes; None when the
        server refused the batch (handled: split, or a change rejected)."""
        client_id, wire = sent.client_id, sent.wire
        try:
            try:
                result: list[Outcome] = self._call(
                    lambda: self.transport.push(store, client_id, wire)
                )
            except StoreNotFound as exc:
                self._ensure_store(store, exc)
                result = self._call(lambda: self.transport.push(store, client_id, wire))
        except PermanentError as exc:
            self._handle_refused_batch(store, sent.entries, exc, report, client_id)
            return None
        return result

    def _push_batch(
        self,
        store: str,
        entries: Sequence[OutboxEntry],
        report: SyncReport,
        client_id: str,
    ) -> None:
        sent = _SentBatch(list(entries), client_id, [e.to_wire_json() for e in entries], None)
        outcomes = self._answer(store, sent, report)
        if outcomes is not None:
            killpoint.reached("client.push.answered")
            self._settle(store, entries, outcomes, report, client_id)

    def _handle_refused_batch(
        self,
        store: str,
        entries: Sequence[OutboxEntry],
        exc: PermanentError,
        report: SyncReport,
        client_id: str,
    ) -> None:
        # Any 413 splits, whatever its body: a proxy or the HTTP layer may
        # answer it in plain text.
        too_large = exc.status == 413 or exc.code in _SPLIT_CODES
        if too_large and len(entries) > 1:
            half = len(entries) // 2
            self._push_batch(store, entries[:half], report, client_id)
            self._push_batch(store, entries[half:], report, client_id)
            return
        if too_large:
            self._reject_alone(store, entries[0], None, report, client_id)
            return
        bad_n = exc.details.get("n") if exc.code == "invalid_change" else None
        bad = None if bad_n is None else next((e for e in entries if e.n == bad_n), None)
        if bad is not None:
            rejection, event = self.db.reject(bad, exc.code or "rejected", str(exc))
            self._rejected([rejection], event, report)
            return
        raise exc

    def _settle(
        self,
        store: str,
        entries: Sequence[OutboxEntry],
        outcomes: list[Outcome],
        report: SyncReport,
        used: str,
    ) -> bool:
        """Settle the outcomes of a batch sent with client id ``used``; False
        when they showed a restored server or another copy of this file (a
        batch sent meanwhile must then not be settled)."""
        settled = self.db.settle(
            store, entries, outcomes, keep_conflicts=self._renewals < _MAX_RENEWALS
        )
        report.pushed += settled.pushed
        if settled.history_changed:
            # The server went back to an older history (restored from a copy)
            # behind a cursor it still accepts: reload, and re-send what of
            # ours it lost.
            log.warning("store %s: the server logged a change where another was", store)
            self._reload(store, report)
        if settled.conflicts:
            # Another copy of this file sent these change numbers: the changes
            # stay in the outbox and go again, in order, under a fresh id.
            self.db.renew_client_id(used)
            self._renewals += 1
        elif settled.pushed:
            self._renewals = 0
        self._rejected(settled.rejected, settled.event, report)
        return not (settled.history_changed or settled.conflicts)

    def _rejected(
        self, rejected: list[RejectedChange], event: ChangeEvent, report: SyncReport
    ) -> None:
        report.rejected += rejected
        self.hub.publish(event)
        for rejection in rejected:
            log.warning(
                "change %s on %s rejected: %s", rejection.n, rejection.key, rejection.message
            )
            if self.on_rejected is not None:
                self.on_rejected(rejection)
