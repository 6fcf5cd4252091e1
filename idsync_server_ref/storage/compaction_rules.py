"""Compaction's rules, once for every backend: which entries go, chunk by chunk.

A backend supplies one chunk step (lock the store, read its horizon and
retention, delete rows, move the horizon) in its own SQL; the order of the
work and the choice of the deletes that may go are decided here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager

from .base import CompactionReport

#: Deleted records whose log entries one compaction transaction removes, at most.
COMPACT_CHUNK = 500

#: One chunk of one store: ``(store, now, default_retention) -> (removed, horizon)``.
ChunkStep = Callable[[str, float, int], tuple[int, int]]


def compact_stores(
    names: Sequence[str],
    write: Callable[[], AbstractContextManager[object]],
    step: ChunkStep,
    now: float | None,
    default_retention: int,
) -> CompactionReport:
    """Compact each store chunk by chunk, each chunk in its own ``write()`` transaction.

    One short transaction per chunk: a push waits at most one chunk.
    """
    started = time.monotonic()
    now = time.time() if now is None else now
    removed = chunks = 0
    horizons: dict[str, int] = {}
    for store in names:
        while True:
            with write():
                count, horizon = step(store, now, default_retention)
            chunks += 1
            if not count:
                break
            removed += count
            horizons[store] = horizon
    return CompactionReport(len(names), removed, horizons, chunks, time.monotonic() - started)


def deletes_to_remove(
    rows: Iterable[tuple[int, str, bytes | str | None, float]],
    now: float,
    retention: int | None,
    default_retention: int,
) -> list[tuple[int, str, bytes | str | None]]:
    """Of the deletes past the horizon, oldest first, those whose retention has passed.

    ``rows`` are ``(seq, key, tag, logged_at)``. The run stops at the first
    delete still within the retention, so the horizon never passes a delete
    that must stay.
    """
    cutoff = now - (default_retention if retention is None else retention)
    deletes = []
    for seq, key, tag, logged_at in rows:
        if logged_at > cutoff:
            break
        deletes.append((seq, key, tag))
    return deletes
