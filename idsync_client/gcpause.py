"""Pausing Python's cyclic garbage collector while pages of changes stream in.

A decoded page of 5,000 changes is about 10,000 container objects. Made in
bursts, they set off collections, and every few pages a full one, which
walks every object of the process: 8–12 % of a first sync's time, for
objects that reference counting frees anyway once the page is applied.
While a download runs the collector is off; it is back on (if it was on)
when the last download of the process ends, and collects then what other
threads left meanwhile. Nested and concurrent pauses (several stores'
first syncs) count: the collector comes back after the last one.
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
