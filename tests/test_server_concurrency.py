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


# -- the notifier: waits on the event loop, wake-ups from any thread ------------------------


def test_notifier_wakes_a_wait_from_a_worker_thread() -> None:
    import asyncio

    from idsync_server_ref.notify import ChangeNotifier

    async def scenario() -> tuple[set[str], float, set[str], set[str]]:
        notifier = ChangeNotifier()
        notifier.attach(asyncio.get_running_loop())
        writer = threading.Timer(0.05, notifier.notify, args=("b", 3))
        started = time.monotonic()
        writer.start()
        woken = await notifier.wait_any({"a": 0, "b": 2}, 10)
        elapsed = time.monotonic() - started
        writer.join()
        already = await notifier.wait_any({"b": 2}, 10)  # known head past the cursor
        dropper = threading.Timer(0.05, notifier.forget, args=("a",))
        dropper.start()
        dropped = await notifier.wait_any({"a": 0}, 10)
        dropper.join()
        return woken, elapsed, already, dropped

    woken, elapsed, already, dropped = asyncio.run(scenario())
    assert woken == {"b"} and elapsed < 5
    assert already == {"b"} and dropped == {"a"}


def test_notifier_close_ends_every_wait() -> None:
    import asyncio

    from idsync_server_ref.notify import ChangeNotifier

    async def scenario() -> tuple[list[set[str]], float]:
        notifier = ChangeNotifier()
        notifier.attach(asyncio.get_running_loop())
        waits = [asyncio.ensure_future(notifier.wait_any({f"s{i}": 0}, 30)) for i in range(50)]
        await asyncio.sleep(0)
        started = time.monotonic()
        threading.Thread(target=notifier.close).start()
        results = await asyncio.wait_for(asyncio.gather(*waits), 10)
        return results, time.monotonic() - started

    results, elapsed = asyncio.run(scenario())
    assert results == [set()] * 50 and elapsed < 5
