"""``python -m tests.bench [--quick] [--large] [--no-kinto] [--postgres]``: run the benchmarks.

Prints a table (workload, idsync, Kinto, ceiling, ratios) and writes it as
JSON, Markdown and a PNG chart under ``--out`` (default ``bench-results/``).
``--postgres`` adds a second table: PostgreSQL behind one and three server
processes beside SQLite (``tests/bench/postgres.py``), Kinto on PostgreSQL.
Figures are measured in this run, on this machine; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from idsync_server_ref.process import ServerProcess

from . import history, idle_clients, many_stores
from . import workloads as w
from .report import BackendRow, Row, render_backends, render_chart, render_markdown


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every workload; return the results document."""
    n = args.n or (10_000 if args.quick else 100_000)
    peer_n = args.peer_n or (2_000 if args.quick else 10_000)
    singles = 1_000 if args.quick else 3_000
    samples = 50 if args.quick else 200
    work = Path(tempfile.mkdtemp(prefix="idsync-bench-"))
    rows: list[Row] = []
    backend_rows: list[BackendRow] = []
    kinto: dict[str, float] = {}
    note = print if not args.silent else (lambda *a, **k: None)
    try:
        note(f"bench: N={n:,}, peer size {peer_n:,}, work folder {work}")
        single = w.local_single_writes(work, singles)
        rows.append(
            Row(
                "local single writes (durable)",
                "/s",
                single,
                ceiling=w.raw_single_commits(work, singles),
                size=singles,
            )
        )
        bulk = w.local_bulk_writes(work, n)
        rows.append(
            Row(
                "local bulk writes (add_many)",
                "/s",
                bulk,
                ceiling=w.raw_executemany(work, n),
                size=n,
            )
        )
        idx = w.index_queries(work, n)
        rows.append(
            Row(
                f"index query exact ({idx['index_exact_rows']} rows)",
                "µs p50",
                idx["index_exact_p50_us"],
                size=n,
            )
        )
        rows.append(Row("index query prefix", "µs p50", idx["index_prefix_p50_us"], size=n))
        note("bench: local done")

        server_db = work / "server.sqlite3"
        with ServerProcess(server_db) as server:
            if not args.no_kinto:
                try:
                    from .kinto_peer import measure_kinto

                    note("bench: Kinto ...")
                    kinto = measure_kinto(peer_n, work, postgres=args.kinto_postgres)
                except Exception as exc:  # the peer is optional: say why it is missing
                    note(f"bench: Kinto unavailable: {exc}")
            for store, size in (("peer", peer_n), ("main", n)):
                push_rate = w.push(work, server.url, store, size)
                initial = w.initial_sync(work, server.url, store)
                ceiling_pull = w.raw_pull_ceiling(work, server.url, store)
                inc = w.incremental_and_noop(work, server.url, store)
                is_peer = store == "peer"
                rows += [
                    Row(
                        "push",
                        "/s",
                        push_rate,
                        kinto=kinto.get("ingest_per_s") if is_peer else None,
                        ceiling=w.raw_executemany(work, size, f"raw-push-{store}.db"),
                        size=size,
                    ),
                    Row(
                        "initial sync (fetch + store + index)",
                        "/s",
                        initial["per_s"],
                        kinto=(peer_n / kinto["full_pull_s"]) if is_peer and kinto else None,
                        ceiling=ceiling_pull,
                        size=size,
                    ),
                    Row("initial sync peak RSS", "MB", initial["peak_rss_mb"], size=size),
                    Row(
                        "incremental sync, 1,000 new",
                        "ms",
                        inc["incremental_1000_ms"],
                        kinto=kinto.get("incremental_1000_ms") if is_peer else None,
                        size=size,
                    ),
                    Row(
                        "no-op sync",
                        "ms",
                        inc["noop_ms"],
                        kinto=kinto.get("noop_ms") if is_peer else None,
                        size=size,
                    ),
                ]
                note(f"bench: {store} ({size:,}) done")
            rows.append(
                Row(
                    "server scan + encode (ceiling part)",
                    "/s",
                    w.scan_and_encode(server_db, "main"),
                    size=n,
                )
            )
            rows.append(
                Row(
                    "HTTP pull bytes, unparsed (ceiling part)",
                    "/s",
                    w.http_stream(server.url, "main"),
                    size=n,
                )
            )
            deletes = w.deletes(work, server.url, "main", 1000)
            rows.append(
                Row(
                    "delete 1,000 and push",
                    "/s",
                    deletes,
                    kinto=kinto.get("delete_1000_per_s"),
                    size=1000,
                )
            )
            live = w.live_latency(work, server.url, "live", samples)
            rows.append(Row("live latency p50", "ms", live["live_p50_ms"], size=samples))
            rows.append(Row("live latency p99", "ms", live["live_p99_ms"], size=samples))
            live = w.live_latency(work, server.url, "live-apart", samples, reader_process=True)
            rows.append(
                Row(
                    "live latency p50, reader in its own process",
                    "ms",
                    live["live_p50_ms"],
                    size=samples,
                )
            )
            rows.append(
                Row(
                    "live latency p99, reader in its own process",
                    "ms",
                    live["live_p99_ms"],
                    size=samples,
                )
            )
            rows += many_stores.rows(work, server.url, args.quick, not args.no_kinto, note)
            if args.large:
                size = 1_000_000
                note("bench: 1,000,000 records ...")
                w.push(work, server.url, "large", size)
                initial = w.initial_sync(work, server.url, "large")
                inc = w.incremental_and_noop(work, server.url, "large")
                rows += [
                    Row("initial sync (fetch + store + index)", "/s", initial["per_s"], size=size),
                    Row("initial sync peak RSS", "MB", initial["peak_rss_mb"], size=size),
                    Row("no-op sync", "ms", inc["noop_ms"], size=size),
                ]
        if args.postgres:
            from . import postgres

            try:
                figures = postgres.measure(work, n, samples, note)
            except RuntimeError as exc:  # no PostgreSQL here: say so, run the rest
                note(f"bench: PostgreSQL unavailable: {exc}")
            else:
                peer = kinto if args.kinto_postgres else {}
                backend_rows = postgres.rows(figures, n, samples, peer, peer_n)
        rows += idle_rows(work, args.idle or (300 if args.quick else 5_000), note)
        rows += history_rows(work, 1_000, 10_000 if args.quick else 100_000, note)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "machine": machine_info(),
        "params": {
            "n": n,
            "peer_n": peer_n,
            "quick": args.quick,
            "large": args.large,
            "kinto_backend": "postgresql" if args.kinto_postgres else "memory",
        },
        "rows": [row.as_dict() for row in rows],
        "postgres_rows": [row.as_dict() for row in backend_rows],
    }


def idle_rows(work: Path, idle: int, note: Any) -> list[Row]:
    """Rows of the idle clients and trickling connections workloads."""
    note(f"bench: {idle:,} idle live clients ...")
    held = idle_clients.idle_clients(work, idle, 100)
    note("bench: 500 trickling connections ...")
    slow = idle_clients.trickling_headers(work, 500, 30)
    return [
        Row("health p99, idle server", "ms", held["health_p99_idle_ms"], size=0),
        Row("health p99, idle clients", "ms", held["health_p99_ms"], size=idle),
        Row("push p99, idle server", "ms", held["push_p99_idle_ms"], size=0),
        Row("push p99, idle clients", "ms", held["push_p99_ms"], size=idle),
        Row("one write reaches all idle clients, p50", "ms", held["fanout_p50_ms"], size=idle),
        Row("one write reaches all idle clients, p99", "ms", held["fanout_p99_ms"], size=idle),
        Row("server RSS, idle server", "MB", held["rss_idle_mb"], size=0),
        Row("server RSS, idle clients", "MB", held["rss_loaded_mb"], size=idle),
        Row("client sync p50, alone", "ms", slow["sync_p50_alone_ms"], size=0),
        Row("client sync p50, trickling connections", "ms", slow["sync_p50_trickle_ms"], size=500),
        Row("client sync p99, trickling connections", "ms", slow["sync_p99_trickle_ms"], size=500),
    ]


def history_rows(work: Path, live: int, edits: int, note: Any) -> list[Row]:
    """Rows of the long-lived store, before and after compaction (``history.py``)."""
    note(f"bench: a long-lived store ({live:,} live records, {edits:,} edits) ...")
    h = history.long_lived_store(work, live, edits)
    return [
        Row(
            "long-lived store: log entries, before compaction",
            "entries",
            h["log_before"],
            size=edits,
        ),
        Row("long-lived store: log entries, after", "entries", h["log_after"], size=edits),
        Row("long-lived store: compaction", "ms", h["compact_ms"], size=edits),
        Row("long-lived store: server file, before", "MB", h["size_before_mb"], size=edits),
        Row(
            "long-lived store: server file, after (+ vacuum)", "MB", h["size_after_mb"], size=edits
        ),
        Row("long-lived store: new device's sync, before", "ms", h["sync_before_ms"], size=edits),
        Row("long-lived store: new device's sync, after", "ms", h["sync_after_ms"], size=edits),
    ]


def main(argv: list[str] | None = None) -> int:
    """Run, print and save the benchmark."""
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10,000 records, Kinto at 2,000")
    parser.add_argument("--large", action="store_true", help="also 1,000,000 records")
    parser.add_argument("--no-kinto", action="store_true", help="skip the Kinto peer")
    parser.add_argument(
        "--kinto-postgres",
        action="store_true",
        help="run Kinto on a throwaway PostgreSQL cluster (initdb, pg_ctl)",
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="also push, initial sync and live latency on PostgreSQL behind 1 and 3 server"
        " processes, beside SQLite, on a throwaway cluster; implies --kinto-postgres",
    )
    parser.add_argument("--n", type=int, help="records (default 100,000; 10,000 quick)")
    parser.add_argument(
        "--idle", type=int, help="idle live clients held at once (default 5,000; 300 quick)"
    )
    parser.add_argument("--peer-n", type=int, help="records for the Kinto comparison")
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--silent", action="store_true", help="print only the table")
    args = parser.parse_args(argv)
    args.kinto_postgres = args.kinto_postgres or args.postgres
    results = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [Row.from_dict(r) for r in results["rows"]]
    table = render_markdown(rows, results["machine"], results["params"])
    if results["postgres_rows"]:
        kinto_n = (
            results["params"]["peer_n"]
            if any(r["kinto"] for r in results["postgres_rows"])
            else None
        )
        backends = [BackendRow(**r) for r in results["postgres_rows"]]
        table += "\n" + render_backends(backends, kinto_n)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    (args.out / "results.md").write_text(table)
    chart = render_chart(rows, args.out / "results.png")
    print(table)
    print(
        f"written: {args.out / 'results.json'}, {args.out / 'results.md'}"
        + (f", {chart}" if chart else " (no chart: matplotlib is not installed)")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
