"""The idsync workloads and the raw ceilings they are compared with."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path

import requests

from idsync_client import Client, jsoncodec
from idsync_server_ref.storage import SqliteStorage

from .dataset import items, rows


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


# -- local writes --------------------------------------------------------------------------


def local_single_writes(folder: Path, count: int) -> float:
    """Durable single writes per second (each its own transaction, FULL)."""
    data = items(count, seed=7)
    with Client(folder / "single.db") as client:
        store = client.store("bench")
        seconds = _timed(
            lambda: [store.add(i["value"], index=i["index"], key=i["key"]) for i in data]
        )
    return _rate(count, seconds)


def local_bulk_writes(folder: Path, count: int, batch: int = 10_000) -> float:
    """Bulk writes per second through ``Store.add_many``, 10,000 per transaction."""
    data = items(count, seed=8)
    with Client(folder / "bulk.db") as client:
        store = client.store("bench")
        seconds = _timed(
            lambda: [store.add_many(data[i : i + batch]) for i in range(0, count, batch)]
        )
    return _rate(count, seconds)


def _raw_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "CREATE TABLE records (id INTEGER PRIMARY KEY, key TEXT UNIQUE, index_json TEXT,"
        " value_json TEXT)"
    )
    conn.execute(
        "CREATE TABLE idx (item TEXT, record_id INTEGER, PRIMARY KEY (item, record_id))"
        " WITHOUT ROWID"
    )
    return conn


def raw_single_commits(folder: Path, count: int) -> float:
    """Ceiling: raw sqlite3, one commit per record (+2 index rows), synchronous=FULL."""
    conn = _raw_db(folder / "raw-single.db")
    data = [
        (r.key, json.dumps(list(r.index)), json.dumps(r.value), r.index)
        for r in rows(count, seed=7)
    ]
    started = time.perf_counter()
    for key, index_json, value_json, index in data:
        conn.execute("BEGIN")
        rid = conn.execute(
            "INSERT INTO records (key, index_json, value_json) VALUES (?, ?, ?)",
            (key, index_json, value_json),
        ).lastrowid
        conn.executemany("INSERT INTO idx VALUES (?, ?)", [(i, rid) for i in index])
        conn.execute("COMMIT")
    seconds = time.perf_counter() - started
    conn.close()
    return _rate(count, seconds)


def raw_executemany(folder: Path, count: int, name: str = "raw-bulk.db") -> float:
    """Ceiling: raw sqlite3 ``executemany`` of records and index rows in one transaction."""
    conn = _raw_db(folder / name)
    data = [
        (i + 1, r.key, json.dumps(list(r.index)), json.dumps(r.value), r.index)
        for i, r in enumerate(rows(count, seed=8))
    ]
    started = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO records VALUES (?, ?, ?, ?)", [d[:4] for d in data])
    conn.executemany("INSERT INTO idx VALUES (?, ?)", [(item, d[0]) for d in data for item in d[4]])
    conn.execute("COMMIT")
    seconds = time.perf_counter() - started
    conn.close()
    return _rate(count, seconds)


# -- sync ----------------------------------------------------------------------------------


def push(folder: Path, url: str, store: str, count: int) -> float:
    """A client uploads ``count`` pending records: records per second."""
    with Client(folder / f"push-{store}.db", url) as client:
        notes = client.store(store)
        data = items(count)
        for i in range(0, count, 1000):
            notes.add_many(data[i : i + 1000])
        seconds = _timed(lambda: client._engine.push(store))
        assert client.status.pending == 0 or client.db.pending_count() == 0
    return _rate(count, seconds)


def initial_sync(folder: Path, url: str, store: str) -> dict[str, float]:
    """A fresh client pulls the whole store, in its own process: seconds and peak RSS."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.bench.initial_sync",
            url,
            store,
            str(folder / f"initial-{store}-{time.time_ns()}.db"),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    return json.loads(out.stdout)


def raw_pull_ceiling(folder: Path, url: str, store: str) -> float:
    """Ceiling: the pull pages over HTTP, parsed, inserted raw (one transaction a page)."""
    conn = _raw_db(folder / f"raw-pull-{store}.db")
    session = requests.Session()
    session.trust_env = False
    cursor, count, more = None, 0, True
    started = time.perf_counter()
    next_id = 1
    while more:
        params = {"cursor": cursor, "limit": 5000} if cursor else {"limit": 5000}
        page = jsoncodec.loads(
            session.get(f"{url}/v1/stores/{store}/changes", params=params, timeout=60).content
        )
        conn.execute("BEGIN")
        recs, idx = [], []
        for change in page["changes"]:
            recs.append(
                (
                    next_id,
                    change["key"],
                    jsoncodec.dumps(change["index"]),
                    jsoncodec.dumps(change["value"]),
                )
            )
            idx += [(item, next_id) for item in change["index"]]
            next_id += 1
        conn.executemany("INSERT INTO records VALUES (?, ?, ?, ?)", recs)
        conn.executemany("INSERT INTO idx VALUES (?, ?)", idx)
        conn.execute("COMMIT")
        count += len(page["changes"])
        cursor, more = page["cursor"], page["more"]
    return _rate(count, time.perf_counter() - started)


def scan_and_encode(server_db: Path, store: str) -> float:
    """Ceiling part: the server's storage scans and encodes a store's log (no HTTP)."""
    storage = SqliteStorage(server_db)
    count, cursor, more = 0, None, True
    started = time.perf_counter()
    while more:
        page = storage.pull(store, cursor, 5000, 1 << 30)
        count += len(page.items_json)
        cursor, more = page.cursor, page.more
    seconds = time.perf_counter() - started
    storage.close()
    return _rate(count, seconds)


def http_stream(url: str, store: str) -> float:
    """Ceiling part: the pull pages' bytes over loopback HTTP, not parsed."""
    session = requests.Session()
    session.trust_env = False
    count, cursor, more = 0, None, True
    started = time.perf_counter()
    while more:
        params = {"cursor": cursor, "limit": 5000} if cursor else {"limit": 5000}
        body = session.get(f"{url}/v1/stores/{store}/changes", params=params, timeout=60).content
        # Only the page's tail is read, to find the cursor: no full parse.
        tail = jsoncodec.loads(b"{" + body[body.rindex(b'"cursor"') :])
        count += body.count(b'"seq":')
        cursor, more = tail["cursor"], tail["more"]
    return _rate(count, time.perf_counter() - started)


def incremental_and_noop(folder: Path, url: str, store: str) -> dict[str, float]:
    """After a synced state: pull 1,000 new records (ms); then a no-op sync (median ms)."""
    with (
        Client(folder / f"inc-{store}.db", url) as reader,
        Client(folder / f"inc-writer-{store}.db", url) as writer,
    ):
        reader.store(store)
        reader.sync()
        writer.store(store).add_many(items(1000, start=10_000_000))
        writer.sync()
        incremental = _timed(reader.sync) * 1000
        assert len(reader.store(store)) >= 1000
        noop = [_timed(reader.sync) * 1000 for _ in range(30)]
    return {"incremental_1000_ms": incremental, "noop_ms": statistics.median(noop)}


def live_latency(
    folder: Path,
    url: str,
    store: str,
    samples: int,
    reader_url: str | None = None,
    reader_process: bool = False,
) -> dict[str, float]:
    """A write by A seen by B through the long-poll: p50 and p99 in ms.

    B talks to ``reader_url`` when given (another process on the same database).
    By default A and B are two clients of this process, whose threads share
    one interpreter lock: B's answer can wait for A's threads (settling the
    push, taking its own change back). ``reader_process``: B runs in a
    process of its own, as a second app would; times are read from the same
    monotonic clock (``perf_counter`` is ``CLOCK_MONOTONIC`` on Linux).
    """
    with contextlib.ExitStack() as stack:
        seen = stack.enter_context(_live_reader(folder, reader_url or url, store, reader_process))
        a = stack.enter_context(Client(folder / f"live-a-{store}.db", url))
        a.store(store)
        a.start()
        a.sync()
        time.sleep(0.3)  # let B's long-poll reach the server before the first sample
        latencies = []
        for i in range(samples):
            started = time.perf_counter()
            key = a.store(store).add({"sample": i})
            seen_at = seen(key, started + 5)
            if seen_at is not None:
                latencies.append((seen_at - started) * 1000)
    latencies.sort()
    return {
        "live_p50_ms": statistics.median(latencies),
        "live_p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "live_samples": len(latencies),
    }


@contextlib.contextmanager
def _live_reader(
    folder: Path, url: str, store: str, own_process: bool
) -> Iterator[Callable[[str, float], float | None]]:
    """Client B, subscribed to ``store`` and live, in this process or its own.

    Yields ``seen(key, deadline)``: when B was told of ``key`` (a
    ``perf_counter`` time), or None if not by ``deadline``.
    """
    if not own_process:
        arrived = threading.Event()
        seen_at: dict[str, float] = {}

        def on_change(event) -> None:
            now = time.perf_counter()
            for record in event.added:
                seen_at[record.key] = now
            arrived.set()

        def seen(key: str, deadline: float) -> float | None:
            while key not in seen_at and time.perf_counter() < deadline:
                arrived.wait(0.5)
                arrived.clear()
            return seen_at.get(key)

        with Client(folder / f"live-b-{store}.db", url) as b:
            b.store(store).subscribe(on_change)
            b.start()
            b.sync()
            yield seen
        return
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    reader = context.Process(
        target=_live_reader_process, args=(theirs, str(folder / f"live-b-{store}.db"), url, store)
    )
    reader.start()
    try:
        if not ours.poll(60) or ours.recv() != "ready":
            raise RuntimeError("the live reader process did not start")
        told: dict[str, float] = {}

        def seen_elsewhere(key: str, deadline: float) -> float | None:
            while key not in told:
                left = deadline - time.perf_counter()
                if left <= 0 or not ours.poll(left):
                    return None
                told.update(ours.recv())
            return told[key]

        yield seen_elsewhere
    finally:
        ours.send("stop")
        reader.join(10)
        if reader.is_alive():
            reader.kill()


def _live_reader_process(conn: Connection, path: str, url: str, store: str) -> None:
    """Client B in its own process: sends ``{key: perf_counter()}`` of each add it is told of."""

    def on_change(event) -> None:
        now = time.perf_counter()
        conn.send({record.key: now for record in event.added})

    with Client(Path(path), url) as b:
        b.store(store).subscribe(on_change)
        b.start()
        b.sync()
        conn.send("ready")
        conn.poll(600)  # until the writer is done (bounded)


def index_queries(folder: Path, count: int) -> dict[str, float]:
    """Exact and prefix index queries on a local store of ``count`` records: p50 µs."""
    with Client(folder / "bulk.db") as client:  # the bulk-write store, already filled
        store = client.store("bench")
        assert len(store) >= count
        exact, prefix = [], []
        for i in range(200):
            started = time.perf_counter()
            found = list(store.find(f"tag:{i % 100}"))
            exact.append((time.perf_counter() - started) * 1e6)
            started = time.perf_counter()
            list(store.find(f"owner:{i % 1000}", prefix=True))
            prefix.append((time.perf_counter() - started) * 1e6)
        assert found
    return {
        "index_exact_p50_us": statistics.median(exact),
        "index_prefix_p50_us": statistics.median(prefix),
        "index_exact_rows": len(found),
    }


def deletes(folder: Path, url: str, store: str, count: int) -> float:
    """Delete ``count`` records locally and push the deletes: records per second."""
    with Client(folder / f"push-{store}.db", url) as client:  # the client that pushed them
        notes = client.store(store)
        keys = [record.key for _, record in zip(range(count), notes, strict=False)]

        def run() -> None:
            for key in keys:
                notes.delete(key)
            client._engine.push(store)

        seconds = _timed(run)
    return _rate(len(keys), seconds)
