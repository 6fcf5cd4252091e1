"""PostgreSQL beside SQLite: push, initial sync and live latency with one and three
server processes on a throwaway cluster (``tests/pg.py``), SQLite measured again
in the same way in the same run.

Three set-ups, each on a fresh database: SQLite (one process: it can have no
more), PostgreSQL behind one process, PostgreSQL behind three processes. On
each, the same workloads:

- push, one client: N records (``workloads.push``), through the first process;
- push, three clients at once: N/3 records each, into one store, client i
  through process i (all through the one process where there is only one);
  records per second over the wall time of the three;
- initial sync, one client (``workloads.initial_sync``) of the N records;
- initial sync, three fresh clients at once, one per process: their records
  together over the longest of their sync times;
- live latency: client A writes through the first process, B's background
  long-poll waits on the second (the same process where there is only one),
  so on three processes every sample crosses processes through ``NOTIFY``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from idsync_client import Client
from idsync_server_ref.process import ServerProcess

from ..pg import PgCluster, find_binaries
from . import workloads as w
from .dataset import items
from .report import BackendRow

SETUPS = ("sqlite", "pg1", "pg3")


@contextmanager
def _cluster() -> Iterator[PgCluster]:
    bin_dir = find_binaries()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found")
    cluster = PgCluster(bin_dir).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _push_three(folder: Path, urls: list[str], store: str, count: int) -> float:
    """Three clients push ``count // 3`` records each into one store at once: records/s."""
    each = count // 3
    with ExitStack() as stack:
        clients = [
            stack.enter_context(Client(folder / f"push3-{i}.db", urls[i % len(urls)]))
            for i in range(3)
        ]
        for i, client in enumerate(clients):
            client.store(store).add_many(items(each, seed=100 + i))
        clients[0].sync()  # the store exists before the clock starts
        barrier = threading.Barrier(4)

        def push(client: Client) -> None:
            barrier.wait()
            assert client._engine is not None
            client._engine.push(store)

        threads = [threading.Thread(target=push, args=(c,)) for c in clients]
        for thread in threads:
            thread.start()
        barrier.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        assert all(c.db.pending_count() == 0 for c in clients)
    return 3 * each / seconds


def _initial_three(folder: Path, urls: list[str], store: str) -> float:
    """Three fresh clients pull ``store`` at once, one per process: records/s together."""
    module = [sys.executable, "-m", "tests.bench.initial_sync"]
    procs = [
        subprocess.Popen(
            [*module, urls[i % len(urls)], store, str(folder / f"initial3-{i}.db")],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    reports = [json.loads(proc.communicate(timeout=3600)[0]) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    return float(sum(r["records"] for r in reports) / max(r["seconds"] for r in reports))


def _measure_setup(folder: Path, urls: list[str], n: int, samples: int) -> dict[str, float]:
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, float] = {"push_1": w.push(folder, urls[0], "one", n)}
    out["push_3"] = _push_three(folder, urls, "three", n)
    out["initial_1"] = w.initial_sync(folder, urls[0], "one")["per_s"]
    out["initial_3"] = _initial_three(folder, urls, "one")
    live = w.live_latency(folder, urls[0], "live", samples, reader_url=urls[1 % len(urls)])
    out["live_p50"] = live["live_p50_ms"]
    out["live_p99"] = live["live_p99_ms"]
    return out


def measure(
    work: Path, n: int, samples: int, note: Callable[..., Any] = print
) -> dict[str, dict[str, float]]:
    """Every workload on every set-up: ``{setup: {figure: value}}``."""
    results: dict[str, dict[str, float]] = {}
    with ServerProcess(work / "pg-compare.sqlite3") as server:
        note("bench: SQLite, one process ...")
        results["sqlite"] = _measure_setup(work / "sqlite", [server.url], n, samples)
    with _cluster() as cluster:
        for setup, count in (("pg1", 1), ("pg3", 3)):
            note(f"bench: PostgreSQL, {count} process(es) ...")
            database = cluster.database()
            with ExitStack() as stack:
                procs = [stack.enter_context(ServerProcess(database)) for _ in range(count)]
                urls = [p.url for p in procs]
                results[setup] = _measure_setup(work / setup, urls, n, samples)
    return results


def rows(
    results: dict[str, dict[str, float]],
    n: int,
    samples: int,
    kinto: dict[str, float],
    kinto_n: int,
) -> list[BackendRow]:
    """The table rows; ``kinto`` holds Kinto's figures (at ``kinto_n`` records)
    when it ran on PostgreSQL, else nothing."""
    full_pull = kinto.get("full_pull_s")
    kinto_initial = kinto_n / full_pull if full_pull else None

    def row(
        label: str, unit: str, key: str, size: int, kinto_value: float | None = None
    ) -> BackendRow:
        sqlite, pg1, pg3 = (results[s][key] if s in results else None for s in SETUPS)
        return BackendRow(label, unit, size, sqlite, pg1, pg3, kinto=kinto_value)

    return [
        row("push, 1 client", "/s", "push_1", n, kinto.get("ingest_per_s")),
        row("push, 3 clients at once", "/s", "push_3", n),
        row("initial sync, 1 client", "/s", "initial_1", n, kinto_initial),
        row("initial sync, 3 clients at once", "/s", "initial_3", 3 * n),
        row("live latency p50", "ms", "live_p50", samples),
        row("live latency p99", "ms", "live_p99", samples),
    ]
