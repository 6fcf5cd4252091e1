"""Measure Kinto on the benchmark's data set (runs inside Kinto's own virtualenv).

Usage: python kinto_driver.py URL COUNT
Prints one JSON object of figures. Needs kinto-http.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from kinto_http import Client

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.bench.dataset import rows


def main() -> None:
    url, count = sys.argv[1], int(sys.argv[2])
    client = Client(
        server_url=url + "/v1", auth=("bench", "bench"), bucket="bench", collection="records"
    )
    client.create_bucket(id="bench", if_not_exists=True)
    client.create_collection(id="records", bucket="bench", if_not_exists=True)
    data = list(rows(count))
    figures: dict[str, float] = {}

    started = time.perf_counter()
    with client.batch() as batch:
        for row in data:
            batch.create_record(id=row.key, data={"index": list(row.index), **row.value})
    figures["ingest_per_s"] = count / (time.perf_counter() - started)

    started = time.perf_counter()
    records = client.get_records()
    figures["full_pull_s"] = time.perf_counter() - started
    assert len(records) == count, len(records)
    since = client.get_records_timestamp()

    more = list(rows(1000, start=count))
    with client.batch() as batch:
        for row in more:
            batch.create_record(id=row.key, data={"index": list(row.index), **row.value})
    started = time.perf_counter()
    changed = client.get_records(_since=since)
    figures["incremental_1000_ms"] = (time.perf_counter() - started) * 1000
    assert len(changed) == 1000, len(changed)
    since = client.get_records_timestamp()

    noop = []
    for _ in range(20):
        started = time.perf_counter()
        assert client.get_records(_since=since) == []
        noop.append((time.perf_counter() - started) * 1000)
    figures["noop_ms"] = statistics.median(noop)

    started = time.perf_counter()
    with client.batch() as batch:
        for row in more:
            batch.delete_record(id=row.key)
    figures["delete_1000_per_s"] = 1000 / (time.perf_counter() - started)
    tombstones = client.get_records(_since=since)
    figures["tombstones_seen"] = sum(1 for r in tombstones if r.get("deleted"))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
