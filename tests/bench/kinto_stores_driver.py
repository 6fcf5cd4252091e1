"""Kinto on the many-stores data set: one collection per store, fetch-only pull.

Runs inside Kinto's own virtualenv. Usage: python kinto_stores_driver.py URL STORES PER_STORE
Prints one JSON object of figures. Needs kinto-http.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from kinto_http import Client

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.bench.store_data import big_records, store_name


def main() -> None:
    url, stores, per_store = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    client = Client(server_url=url + "/v1", auth=("bench", "bench"), bucket="many")
    client.create_bucket(id="many", if_not_exists=True)
    for i in range(stores):
        name = store_name(i)
        client.create_collection(id=name, bucket="many", if_not_exists=True)
        with client.batch() as batch:
            for record in big_records(i, per_store):
                data = {"index": record["index"], **record["value"]}
                batch.create_record(id=record["key"], data=data, collection=name)
    # A fresh client's pull: every collection fetched, one after another
    # (Kinto keeps nothing locally: fetching is all it does).
    fresh = Client(server_url=url + "/v1", auth=("bench", "bench"), bucket="many")
    started = time.perf_counter()
    fetched = 0
    for i in range(stores):
        fetched += len(fresh.get_records(collection=store_name(i)))
    seconds = time.perf_counter() - started
    assert fetched == stores * per_store, fetched
    print(json.dumps({"initial_s": seconds, "initial_per_s": fetched / seconds}))


if __name__ == "__main__":
    main()
