"""A client process for the crash campaign: writes and syncs until killed.

Usage: python crash_worker.py DB URL STORE ACK_FILE LANE [--final]

Each add's key is appended to ACK_FILE only after ``add`` returned (the app
was told the write is saved). Before each phase it prints the phase name, so
the campaign knows where the kill landed. With --final it only syncs, once.
"""

import sys

from idsync_client import Client, RetryPolicy


def main() -> None:
    db, url, store, ack_path, lane = sys.argv[1:6]
    final = "--final" in sys.argv
    policy = RetryPolicy(max_attempts=8, base_delay=0.01, max_delay=0.2)
    with Client(db, url, retry=policy) as client, open(ack_path, "a") as acks:
        notes = client.store(store)
        engine = client._engine
        if final:
            client.sync()
            print("final-synced", flush=True)
            return
        print("ready", flush=True)
        i = 0
        while True:
            for _ in range(3):
                print("write", flush=True)
                key = notes.add({"lane": lane, "i": i, "pad": "x" * 100}, index=[f"lane:{lane}"])
                acks.write(key + "\n")
                acks.flush()
                i += 1
            print("push", flush=True)
            engine.push(store)
            print("pull", flush=True)
            engine.pull(store)


if __name__ == "__main__":
    main()
