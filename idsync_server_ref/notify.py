"""Wake-ups for long-polls when a store's log grows, on the server's event loop.

A waiting long-poll is a future on the event loop, not a thread: thousands
may wait at once. Writers may call :meth:`ChangeNotifier.notify` from any
thread (pushes run in the storage pool); the wake-up is handed to the loop
with ``call_soon_threadsafe``.

A wait costs one future and one timer, nothing else: no task of its own.
The notifier wakes every waiter of a store in one pass; a client that hangs
up settles its waiter through a :class:`HangupSignal` callback.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable, Mapping
from typing import Protocol

#: A waiter's result when its client hung up (store names are never empty).
_GONE = ""


class HangupSignal(Protocol):
    """Calls its callbacks once when the client's connection closes."""

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the loop) when the connection closes; at once if it has."""

    def unwatch(self, callback: Callable[[], None]) -> None:
        """Forget ``callback``."""


class WaitAbandoned(Exception):
    """The client hung up while waiting: there is no one to answer."""


def _settle(future: asyncio.Future[str | None], result: str | None) -> None:
    if not future.done():
        future.set_result(result)


class ChangeNotifier:
    """Tells waiting long-polls, in this process, that stores have new changes.

    Writers call :meth:`notify` after their transaction commits; long-polls
    call :meth:`wait_any` after finding nothing new. A notify that lands
    between a poll's read and its wait is not lost: the heads recorded are
    checked before waiting, and both happen on the loop's thread.
    """

    def __init__(self) -> None:
        self._heads: dict[str, int] = {}
        self._waiters: dict[str, set[asyncio.Future[str | None]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (the server is stopping)."""
        return self._closed

    def parked(self) -> int:
        """How many waits are parked now (each counted once, however many stores it watches)."""
        return len(set().union(*self._waiters.values()))

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the loop the waits run on; call it from that loop's thread."""
        self._loop = loop
        self._loop_thread = threading.get_ident()

    def _on_loop(self, callback: Callable[..., None], *args: object) -> None:
        loop = self._loop
        if loop is None or threading.get_ident() == self._loop_thread:
            callback(*args)
        else:
            loop.call_soon_threadsafe(callback, *args)

    def notify(self, store: str, head_seq: int) -> None:
        """Record that ``store`` now reaches ``head_seq`` and wake its waiters."""
        self._on_loop(self._advance, store, head_seq)

    def forget(self, store: str) -> None:
        """The store was dropped: forget its head and wake its waiters."""
        self._on_loop(self._drop, store)

    def close(self) -> None:
        """Wake every waiter for good (the server is stopping)."""
        self._on_loop(self._close)

    def _advance(self, store: str, head_seq: int) -> None:
        if head_seq > self._heads.get(store, -1):
            self._heads[store] = head_seq
        self._wake(store)

    def _drop(self, store: str) -> None:
        # Waiters wake as if the store changed: their next read tells them it is gone.
        self._heads.pop(store, None)
        self._wake(store)

    def _close(self) -> None:
        self._closed = True
        for store in list(self._waiters):
            self._wake(store)

    def _wake(self, store: str) -> None:
        # One pass over the store's waiters: each future's task resumes on
        # the loop's next turn, all of them together.
        for future in self._waiters.pop(store, ()):
            if not future.done():
                future.set_result(store)

    async def wait(self, store: str, after_seq: int, timeout: float) -> bool:
        """Wait until ``store`` passes ``after_seq``, the timeout, or close.

        Returns True when new changes (or a drop) are known to have happened.
        """
        return bool(await self.wait_any({store: after_seq}, timeout))

    async def wait_any(
        self, after: Mapping[str, int], timeout: float, hangup: HangupSignal | None = None
    ) -> set[str]:
        """Wait until any store passes its seq in ``after``, the timeout, or close.

        Returns the stores known to have changed (empty on timeout or close);
        raises :class:`WaitAbandoned` when ``hangup`` tells the client left.
        Holds no thread and starts no task while waiting.
        """
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self.attach(loop)
        changed = self._changed(after)
        if changed or self._closed or timeout <= 0:
            return changed
        future: asyncio.Future[str | None] = loop.create_future()
        for store in after:
            self._waiters.setdefault(store, set()).add(future)
        timer = loop.call_later(timeout, _settle, future, None)
        gone = functools.partial(_settle, future, _GONE)
        if hangup is not None:
            hangup.watch(gone)
        try:
            woke = await future
        finally:
            timer.cancel()
            if hangup is not None:
                hangup.unwatch(gone)
            for store in after:
                waiting = self._waiters.get(store)
                if waiting is not None:
                    waiting.discard(future)
                    if not waiting:
                        del self._waiters[store]
        if woke == _GONE:
            raise WaitAbandoned
        if self._closed:
            return set()
        changed = self._changed(after)
        if woke is not None and woke not in self._heads:
            changed.add(woke)  # woken by a drop
        return changed

    def _changed(self, after: Mapping[str, int]) -> set[str]:
        return {store for store, seq in after.items() if self._heads.get(store, -1) > seq}
