"""Idempotency rows kept per run of change numbers (SQLite's ``client_batches``).

A push remembers each new change number's outcome so that a retried upload
is answered the same (:mod:`.push_rules`). One row per change cost a B-tree
insertion per change; instead, a batch's new outcomes are stored as a few
rows, one per *run*: numbers sorted, a run ends where the next number is
more than :data:`RUN_GAP` further on, or after :data:`RUN_SIZE` numbers. A
client counting up writes one row per batch.

A row holds its first and last number and its outcomes as JSON. Its span is
at most :data:`MAX_SPAN`, so the rows that may hold a number ``n`` are those
whose last number lies between ``n`` and ``n + MAX_SPAN``: a lookup reads a
bounded range of the index, whatever the client's history.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from idsync_client import jsoncodec
from idsync_client.protocol import INT64_MAX

#: Numbers further apart than this start a new run.
RUN_GAP = 1000
#: Outcomes one row holds at most.
RUN_SIZE = 1000
#: The widest span (last minus first number) a row may have. Part of the
#: file format: lookups only search this far, so rows written under a wider
#: span would be missed and their replays taken as new. Never lower it; the
#: run constants above may change only while ``RUN_GAP * (RUN_SIZE - 1)``
#: stays within it.
MAX_SPAN = 999_000
assert RUN_GAP * (RUN_SIZE - 1) <= MAX_SPAN

#: An idempotency row as :class:`.push_rules.PushBatch` collects it:
#: ``(n, body_hash, status, seq, code, message)``.
OutcomeRow = tuple[Any, ...]


def runs(numbers: Iterable[int]) -> Iterator[list[int]]:
    """The given change numbers, sorted, cut into runs."""
    run: list[int] = []
    for n in sorted(numbers):
        if run and (n - run[-1] > RUN_GAP or len(run) == RUN_SIZE):
            yield run
            run = []
        run.append(n)
    if run:
        yield run


def pack(rows: Sequence[OutcomeRow]) -> list[tuple[int, int, str]]:
    """``(last_n, first_n, outcomes JSON)`` of each run of ``rows``."""
    by_n = {row[0]: row for row in rows}
    return [
        (run[-1], run[0], jsoncodec.dumps([list(by_n[n]) for n in run]))
        for run in runs(by_n)
    ]


def lookup_ranges(numbers: Iterable[int]) -> list[tuple[int, int, int]]:
    """For each run of ``numbers``: ``(low, high, last_n bound)``.

    A stored row holds a number of the run only if its last number is at
    least ``low`` and at most the bound, and its first number is at most
    ``high``.
    """
    return [(run[0], run[-1], min(run[-1] + MAX_SPAN, INT64_MAX)) for run in runs(numbers)]


def unpack(texts: Iterable[str], wanted: set[int]) -> dict[int, tuple[Any, ...]]:
    """The outcomes of the ``wanted`` numbers in stored rows: ``n -> (hash, status, seq, code, message)``."""
    found: dict[int, tuple[Any, ...]] = {}
    for text in texts:
        for row in jsoncodec.loads(text):
            if row[0] in wanted:
                found[row[0]] = tuple(row[1:])
    return found
