"""Wake-ups for long-polling pullers when a store's log grows."""

from __future__ import annotations

import threading


class ChangeNotifier:
    """Tells waiting pullers, in this process, that a store has new changes.

    Writers call :meth:`notify` after their transaction commits; pullers call
    :meth:`wait` after finding nothing new. A notify that lands between a
    puller's read and its wait is not lost: the head it recorded is checked
    before sleeping.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heads: dict[str, int] = {}
        self._closed = False

    def notify(self, store: str, head_seq: int) -> None:
        """Record that ``store`` now reaches ``head_seq`` and wake its waiters."""
        with self._cond:
            self._heads[store] = head_seq
            self._cond.notify_all()

    def forget(self, store: str) -> None:
        """Drop what is known of a store (it was dropped); wake its waiters."""
        with self._cond:
            self._heads.pop(store, None)
            self._cond.notify_all()

    def wait(self, store: str, after_seq: int, timeout: float) -> bool:
        """Block until ``store`` passes ``after_seq``, the timeout, or close.

        Returns True when new changes are known to exist.
        """
        with self._cond:
            return (
                self._cond.wait_for(
                    lambda: self._closed or self._heads.get(store, -1) > after_seq, timeout
                )
                and not self._closed
            )

    def close(self) -> None:
        """Wake every waiter for good (the server is stopping)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
