"""A thread-safe registry of callbacks, as the status, progress and conflict hooks keep them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


def require_callable(callback: object) -> None:
    """TypeError unless ``callback`` can be called: refused when registered, not
    found later at the first event, where it would fail that event's caller."""
    if not callable(callback):
        raise TypeError(f"callback must be callable, not {type(callback).__name__}")


class Listeners(Generic[T]):
    """Registered entries (a callback, or a callback with what it listens to)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[T] = []

    def add(self, entry: T) -> Callable[[], None]:
        """Register ``entry``; returns the function that removes it (twice is harmless)."""
        with self._lock:
            self._entries.append(entry)

        def remove() -> None:
            with self._lock:
                if entry in self._entries:
                    self._entries.remove(entry)

        return remove

    def current(self) -> list[T]:
        """The entries now, as a copy: callbacks are called outside the lock."""
        with self._lock:
            return list(self._entries)

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self._entries)
