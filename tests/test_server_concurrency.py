"""Concurrent writers and readers: no reader ever skips or repeats a change."""

from __future__ import annotations

import threading
import time

from .conftest import Api, add

WRITERS = 4
BATCHES_PER_WRITER = 25
BATCH = 3


def test_pullers_see_every_change_once_in_order(api: Api, store: str) -> None:
    total = WRITERS * BATCHES_PER_WRITER * BATCH
    seen: dict[str, list[dict]] = {}
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        mine = Api(api.url)
        for b in range(BATCHES_PER_WRITER):
            changes = [add(b * BATCH + j + 1, key=f"w{w}-{b}-{j}") for j in range(BATCH)]
            mine.push(store, f"writer{w}", changes)

    def reader(name: str, wait: float, limit: int) -> None:
        mine = Api(api.url)
        got: list[dict] = seen.setdefault(name, [])
        cursor = None
        deadline = time.monotonic() + 60
        try:
            while len(got) < total and time.monotonic() < deadline:
                params = {"limit": limit, "wait": wait}
                if cursor:
                    params["cursor"] = cursor
                page = mine.call("GET", f"/v1/stores/{store}/changes", params=params).json()
                got += page["changes"]
                cursor = page["cursor"]
        except BaseException as exc:  # report in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    threads += [
        threading.Thread(target=reader, args=("long-poll", 5, 7)),
        threading.Thread(target=reader, args=("long-poll-big", 5, 1000)),
        threading.Thread(target=reader, args=("busy-poll", 0, 3)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert not errors, errors
    for name, changes in seen.items():
        seqs = [c["seq"] for c in changes]
        assert seqs == list(range(1, total + 1)), f"{name} skipped or repeated a change"
    keys = {c["key"] for c in seen["busy-poll"]}
    assert len(keys) == total
