"""Idempotency rows per run of change numbers: how numbers are cut and found again."""

from __future__ import annotations

from idsync_client.protocol import INT64_MAX
from idsync_server_ref.storage.client_runs import (
    MAX_SPAN,
    RUN_GAP,
    RUN_SIZE,
    lookup_ranges,
    pack,
    runs,
    unpack,
)


def test_a_client_counting_up_makes_one_run_per_batch() -> None:
    assert list(runs(range(1001, 2001))) == [list(range(1001, 2001))]


def test_runs_end_at_a_gap_and_at_their_size() -> None:
    numbers = [5, 1, 1 + RUN_GAP, 2 + 2 * RUN_GAP + 1, INT64_MAX]
    assert list(runs(numbers)) == [[1, 5, 1 + RUN_GAP], [2 + 2 * RUN_GAP + 1], [INT64_MAX]]
    long = list(range(1, 2 * RUN_SIZE + 2))
    assert [len(run) for run in runs(long)] == [RUN_SIZE, RUN_SIZE, 1]


def test_no_run_spans_more_than_the_lookup_allows() -> None:
    widest = [i * RUN_GAP for i in range(1, RUN_SIZE + 1)]
    (run,) = runs(widest)
    assert run[-1] - run[0] == MAX_SPAN


def test_packed_outcomes_are_found_by_number() -> None:
    rows = [
        (3, "h3", "applied", 7, None, None),
        (1, "v1:h1", "rejected", None, "key_exists", "key 'é' exists"),
        (INT64_MAX, "hx", "duplicate", 2, None, None),
    ]
    packed = pack(rows)
    assert [(last, first) for last, first, _ in packed] == [(3, 1), (INT64_MAX, INT64_MAX)]
    found = unpack([text for _, _, text in packed], {1, INT64_MAX, 42})
    assert found == {1: rows[1][1:], INT64_MAX: rows[2][1:]}


def test_lookup_bounds_stay_within_64_bits() -> None:
    assert lookup_ranges([7, 9, INT64_MAX]) == [(7, 9, 9 + MAX_SPAN), (INT64_MAX, INT64_MAX, INT64_MAX)]


def test_the_lookup_span_is_the_one_files_were_written_with() -> None:
    """Rows on disk were cut with spans up to 999,000: a lookup that searched
    less far would miss them and take their replays as new changes."""
    assert MAX_SPAN == 999_000
    assert RUN_GAP * (RUN_SIZE - 1) <= MAX_SPAN
