"""Initial sync of a fresh client, in its own process so its peak RSS is its own.

Usage: python -m tests.bench.initial_sync URL STORE DB  -> JSON on stdout
"""

from __future__ import annotations

import json
import resource
import sys
import time

from idsync_client import Client


def main() -> None:
    url, store, db = sys.argv[1:4]
    with Client(db, url) as client:
        client.store(store)
        started = time.perf_counter()
        report = client.sync()
        seconds = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "seconds": seconds,
                "records": report.pulled,
                "per_s": report.pulled / seconds,
                "peak_rss_mb": peak_kb / 1024,
            }
        )
    )


if __name__ == "__main__":
    main()
