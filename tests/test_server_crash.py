"""Crash safety of the server: SIGKILL it in the middle of pushes, many times.

After each kill: ``PRAGMA integrity_check`` is ok and every batch is either
wholly in the log or wholly absent. Batches whose answer was lost are retried
with the same change numbers; at the end every change is in the log exactly
once and the log has no gaps.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from collections import Counter

import requests

from idsync_server_ref.process import ServerProcess

from .conftest import Api, add

KILL_POINTS = int(os.environ.get("IDSYNC_CRASH_KILLS", "50"))
BATCH = 4


def make_batch(i: int) -> list[dict]:
    return [
        add(i * BATCH + j + 1, key=f"b{i}-{j}", value={"batch": i, "j": j}) for j in range(BATCH)
    ]


def check_file(db) -> dict[int, int]:
    """integrity_check is ok; return {batch: keys present} for each batch seen."""
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        keys = [row[0] for row in conn.execute("SELECT key FROM changes")]
    assert len(keys) == len(set(keys)), "a change was applied twice"
    per_batch = Counter(int(k.split("-")[0][1:]) for k in keys)
    assert set(per_batch.values()) <= {BATCH}, f"a batch is partly applied: {per_batch}"
    return per_batch


class Pusher:
    """Pushes batches in order until stopped; remembers which answers were lost."""

    def __init__(self, url: str) -> None:
        self.url = f"{url}/v1/stores/crash/push"
        self.session = requests.Session()
        self.session.trust_env = False
        self.acknowledged: dict[int, list[dict]] = {}
        self.in_doubt: list[int] = []
        self.next_batch = 0
        self.sending: list[int] = []
        self.stop = threading.Event()

    def run(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        todo, self.in_doubt = self.in_doubt, []
        try:
            while not self.stop.is_set() and time.monotonic() < deadline:
                i = todo.pop(0) if todo else self.next_batch
                if i == self.next_batch:
                    self.next_batch += 1
                self.sending.append(i)
                body = {"client_id": "crash", "changes": make_batch(i)}
                try:
                    response = self.session.post(self.url, json=body, timeout=5)
                    response.raise_for_status()
                except requests.RequestException:
                    self.in_doubt.append(i)
                    return
                self.acknowledged[i] = response.json()["outcomes"]
                self.sending.remove(i)
        finally:
            self.in_doubt.extend(todo)


def test_sigkill_during_pushes_loses_and_duplicates_nothing(tmp_path) -> None:
    rng = random.Random(1234)
    db = tmp_path / "crash.sqlite3"
    proc = ServerProcess(db)
    proc.start()
    Api(proc.url).create_store("crash")
    proc.kill()
    pusher = Pusher(proc.url)
    kills_mid_push = 0

    for _ in range(KILL_POINTS):
        proc.start()
        pusher.url = f"{proc.url}/v1/stores/crash/push"
        pusher.stop.clear()
        pusher.sending.clear()
        thread = threading.Thread(target=pusher.run, args=(5,))
        thread.start()
        time.sleep(rng.uniform(0.0, 0.05))
        proc.kill()
        pusher.stop.set()
        thread.join(timeout=10)
        kills_mid_push += bool(pusher.sending)
        check_file(db)

    # Recovery: retry every batch whose answer was lost, then check the whole log.
    acknowledged = pusher.acknowledged
    with proc:
        api = Api(proc.url)
        for i in pusher.in_doubt:
            acknowledged[i] = api.push("crash", "crash", make_batch(i))
        changes, _ = api.pull_all("crash")
    per_batch = check_file(db)
    assert set(per_batch) == set(range(pusher.next_batch)) == set(acknowledged)
    assert [c["seq"] for c in changes] == list(range(1, len(changes) + 1))
    seq_of_key = {c["key"]: c["seq"] for c in changes}
    for i, outcomes in acknowledged.items():
        assert all(o["status"] == "applied" for o in outcomes)
        assert [o["seq"] for o in outcomes] == [seq_of_key[f"b{i}-{j}"] for j in range(BATCH)]
    print(
        f"\nserver crash campaign: {KILL_POINTS} kills ({kills_mid_push} with a push in flight),"
        f" {pusher.next_batch} batches, {len(changes)} changes, 0 lost, 0 duplicated"
    )
    assert kills_mid_push >= KILL_POINTS // 2
