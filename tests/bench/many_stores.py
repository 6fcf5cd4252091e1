"""Apps with many small stores: no-op and incremental sync of all, initial sync beside Kinto.

``python -m tests.bench.many_stores [--quick] [--no-kinto]`` runs these alone
(with the live latency row) and prints them; ``python -m tests.bench`` runs
them inside the whole benchmark. Requests are counted by a response hook on
the client's own session. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import requests

from idsync_client import Client
from idsync_server_ref.process import ServerProcess

from .report import Row
from .store_data import big_records, store_name

KINTO_DRIVER = Path(__file__).with_name("kinto_stores_driver.py")


def _counting(client: Client) -> Counter[str]:
    """Count the client's requests by kind (``POST /v1/wait``, ``GET changes``, ...)."""
    seen: Counter[str] = Counter()
    transport = client.transport
    assert transport is not None
    send = transport.request

    def counted(method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        tail = path.rsplit("/", 1)[-1] if path.startswith("/v1/stores/") else path
        seen[f"{method} {tail}"] += 1
        return send(method, path, **kwargs)

    transport.request = counted  # type: ignore[method-assign]
    return seen


def _timed_ms(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def small_stores(folder: Path, url: str, stores: int = 50, records: int = 20) -> dict[str, float]:
    """A client with ``stores`` small stores: first sync of all, a no-op sync
    (ms, requests), and a sync where 10 of them changed (ms, requests)."""
    names = [store_name(i) for i in range(stores)]
    with (
        Client(folder / "many-writer.db", url) as writer,
        Client(folder / "many-reader.db", url) as reader,
    ):
        for i, name in enumerate(names):
            writer.store(name).add_many(
                [{"index": [f"tag:{j % 5}"], "value": {"n": j, "store": i}} for j in range(records)]
            )
        writer.sync()
        for name in names:
            reader.store(name)
        seen = _counting(reader)
        first = _timed_ms(reader.sync)
        first_requests = sum(seen.values())
        noop, noop_requests = [], []
        for _ in range(30):
            seen.clear()
            noop.append(_timed_ms(reader.sync))
            noop_requests.append(sum(seen.values()))
        inc, inc_requests = [], []
        for round_ in range(10):
            for name in names[round_ % 5 :: 5][:10]:  # 10 of the stores
                writer.store(name).add({"round": round_})
            writer.sync()
            seen.clear()
            inc.append(_timed_ms(reader.sync))
            inc_requests.append(sum(seen.values()))
    return {
        "first_ms": first,
        "first_requests": first_requests,
        "noop_ms": statistics.median(noop),
        "noop_requests": statistics.median(noop_requests),
        "inc_ms": statistics.median(inc),
        "inc_requests": statistics.median(inc_requests),
    }


def big_stores(folder: Path, url: str, stores: int, per_store: int) -> dict[str, float]:
    """Initial sync of a fresh client with ``stores`` stores of few-KB records."""
    with Client(folder / "big-writer.db", url) as writer:
        for i in range(stores):
            writer.store(store_name(i, "big")).add_many(big_records(i, per_store))
        writer.sync()
    with Client(folder / "big-reader.db", url) as reader:
        for i in range(stores):
            reader.store(store_name(i, "big"))
        seen = _counting(reader)
        started = time.perf_counter()
        report = reader.sync()
        seconds = time.perf_counter() - started
    assert report.pulled == stores * per_store, report.pulled
    return {
        "initial_s": seconds,
        "initial_per_s": report.pulled / seconds,
        "initial_requests": sum(seen.values()),
    }


@contextlib.contextmanager
def _kinto_server(work: Path) -> Iterator[tuple[Path, str]]:
    """Kinto on its memory backend on 127.0.0.1: its Python and URL."""
    from .kinto_peer import INI, _free_port, ensure_kinto

    python = ensure_kinto()
    ini = work / "kinto-many.ini"
    ini.write_text(INI)
    port = _free_port()
    server = subprocess.Popen(
        [str(python.parent / "kinto"), "start", "--ini", str(ini), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(url + "/v1/", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        else:
            raise RuntimeError("kinto did not start")
        yield python, url
    finally:
        server.terminate()
        server.wait(timeout=20)


def kinto_big_stores(work: Path, stores: int, per_store: int) -> dict[str, float]:
    """Kinto's fetch-only initial pull of the same data: one collection per store."""
    with _kinto_server(work) as (python, url):
        out = subprocess.run(
            [str(python), str(KINTO_DRIVER), url, str(stores), str(per_store)],
            check=True,
            capture_output=True,
            text=True,
            timeout=1800,
        )
    figures: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def rows(
    work: Path, url: str, quick: bool, kinto: bool, note: Callable[..., None] = print
) -> list[Row]:
    """The many-stores rows, measured against the server at ``url``."""
    note("bench: 50 small stores ...")
    small = small_stores(work, url)
    stores, per_store = (20, 50) if quick else (50, 100)
    note(f"bench: initial sync of {stores} stores x {per_store} records of ~3 KB ...")
    big = big_stores(work, url, stores, per_store)
    peer: dict[str, float] = {}
    if kinto:
        try:
            peer = kinto_big_stores(work, stores, per_store)
        except Exception as exc:  # the peer is optional: say why it is missing
            note(f"bench: Kinto unavailable: {exc}")
    return [
        Row("50 small stores: first sync", "ms", small["first_ms"], size=50),
        Row("50 small stores: first sync, requests", "requests", small["first_requests"], size=50),
        Row("50 small stores: no-op sync", "ms", small["noop_ms"], size=50),
        Row("50 small stores: no-op sync, requests", "requests", small["noop_requests"], size=50),
        Row("50 small stores: 10 changed, sync", "ms", small["inc_ms"], size=50),
        Row("50 small stores: 10 changed, requests", "requests", small["inc_requests"], size=50),
        Row(
            f"{stores} stores of ~3 KB records: initial sync",
            "/s",
            big["initial_per_s"],
            kinto=peer.get("initial_per_s"),
            size=stores * per_store,
        ),
        Row(
            f"{stores} stores of ~3 KB records: initial sync",
            "s",
            big["initial_s"],
            kinto=peer.get("initial_s"),
            size=stores * per_store,
        ),
        Row(
            f"{stores} stores of ~3 KB records: initial sync, requests",
            "requests",
            big["initial_requests"],
            size=stores * per_store,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    """Run the many-stores rows and the live latency alone; print them."""
    from . import workloads as w

    parser = argparse.ArgumentParser(prog="python -m tests.bench.many_stores", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, smaller stores")
    parser.add_argument("--no-kinto", action="store_true", help="skip the Kinto peer")
    parser.add_argument("--samples", type=int, default=200, help="live latency samples")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="idsync-many-"))
    try:
        with ServerProcess(work / "server.sqlite3") as server:
            found = rows(work, server.url, args.quick, not args.no_kinto)
            live = w.live_latency(work, server.url, "live", args.samples)
            found.append(Row("live latency p50", "ms", live["live_p50_ms"], size=args.samples))
            found.append(Row("live latency p99", "ms", live["live_p99_ms"], size=args.samples))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for row in found:
        peer = f"  Kinto {row.kinto:,.1f}" if row.kinto is not None else ""
        print(f"{row.workload:<55} {row.idsync:>10,.1f} {row.unit}{peer}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
