"""Resting Python's cyclic garbage collector while a pulled page is decoded
and applied.

A decoded page of 5,000 changes is about 10,000 container objects. Made in
bursts, they set off collections, and every few pages a full one, which
walks every object of the process: 8–12 % of a first sync's time, for
objects that reference counting frees anyway once the page is applied.
Callers pause around that CPU work only (milliseconds), never around a
network wait or a retry's sleep, so the app's own garbage is collected
between pages. Nested and concurrent pauses (several stores' first syncs)
count: the collector comes back after the last one, if it was on before
the first.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_depth = 0
_resume = False


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """The collector off inside; back on after the last pause ends, if it was
    on before the first (an app that turned it off keeps it off)."""
    global _depth, _resume
    with _lock:
        if _depth == 0:
            _resume = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _resume:
                gc.enable()
