"""Storage looks for woken long-polls, made together: one storage call per turn of the loop.

One write can wake thousands of waits on the same store at once. Each then
wants the same thing (with pages: the first page past its cursor). Made one
by one, that is thousands of identical pulls queued on the storage threads.
Instead, the looks asked during one turn of the event loop go into one
batch, run as one storage call at the start of the next turn
(``call_soon``: no timer, nothing waits longer than it must). In the batch
each look still checks its own caller's access, but a pull with the same
(store, cursor, limit, byte bound) is made once and its answer text built
once (:class:`.waiting.PageMemo`).

The storage queue's bound (``503 storage_busy``) keeps counting what waits
for a storage thread: a batch is one call, however many looks it holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from .storage import Storage
from .waiting import PageMemo

T = TypeVar("T")

#: A look: runs on a storage thread with the batch's memo of pulls.
LookFn = Callable[[PageMemo], Any]


class LookBatches:
    """Runs looks in batches on ``executor``; counts looks and the pulls they made."""

    def __init__(self, storage: Storage, executor: Executor) -> None:
        self.storage = storage
        self.executor = executor
        self._pending: list[tuple[LookFn, asyncio.Future[Any]]] = []
        #: Looks run so far.
        self.looks = 0
        #: Storage pulls those looks made.
        self.pulls = 0

    async def run(self, fn: Callable[[PageMemo], T]) -> T:
        """``fn(memo)`` on a storage thread, in the batch of this turn of the loop."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._start, loop)
        self._pending.append((fn, future))
        return await future

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._pending = self._pending, []
        fns = [fn for fn, _ in batch]
        futures = [future for _, future in batch]
        try:
            job = loop.run_in_executor(self.executor, self._work, fns)
        except RuntimeError as exc:  # the storage threads stopped (server stopping)
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            return
        job.add_done_callback(lambda done: self._hand_out(futures, done))

    def _work(self, fns: list[LookFn]) -> tuple[list[tuple[bool, Any]], int]:
        memo = PageMemo(self.storage)
        results: list[tuple[bool, Any]] = []
        for fn in fns:
            try:
                results.append((True, fn(memo)))
            except Exception as exc:  # that look's failure alone
                results.append((False, exc))
        return results, memo.pulls

    def _hand_out(
        self,
        futures: list[asyncio.Future[Any]],
        done: asyncio.Future[tuple[list[tuple[bool, Any]], int]],
    ) -> None:
        if done.cancelled() or done.exception() is not None:
            failure = done.exception() if not done.cancelled() else RuntimeError("cancelled")
            assert failure is not None
            for future in futures:
                if not future.done():
                    future.set_exception(failure)
            return
        results, pulls = done.result()
        self.looks += len(results)
        self.pulls += pulls
        for future, (ok, value) in zip(futures, results, strict=True):
            if future.done():  # its request was cancelled meanwhile
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
