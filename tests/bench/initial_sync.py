"""Initial sync of a fresh client, in its own process so its peak RSS is its own.

Usage: python -m tests.bench.initial_sync URL STORE DB  -> JSON on stdout
"""

from __future__ import annotations

import json
import resource
import sys
import time

from idsync_client import Client


def peak_rss_mb() -> float:
    """This process's peak resident memory. On Linux, ``VmHWM``: ``ru_maxrss``
    survives exec, so it would report the benchmark parent's peak instead."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    url, store, db = sys.argv[1:4]
    with Client(db, url) as client:
        client.store(store)
        started = time.perf_counter()
        report = client.sync()
        seconds = time.perf_counter() - started
    print(
        json.dumps(
            {
                "seconds": seconds,
                "records": report.pulled,
                "per_s": report.pulled / seconds,
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    )


if __name__ == "__main__":
    main()
