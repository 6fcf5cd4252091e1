"""Several server processes on one PostgreSQL database: clients spread over them
converge, wake-ups cross processes, a process killed mid-push loses nothing, and
one push sent to two processes at once applies once.

Skipped (with the reason) where the PostgreSQL server binaries or psycopg are
missing: the ``pg_cluster`` fixture decides.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from idsync_client import Client, RetryPolicy, TemporaryError
from idsync_server_ref.process import ServerProcess

from .conftest import Api, add

psycopg = pytest.importorskip("psycopg", reason="the postgresql extra (psycopg) is not installed")

#: A generous bound for "a wake-up crosses processes at once".
WAKE_BOUND = 2.0


def _policy(attempts: int = 3) -> RetryPolicy:
    return RetryPolicy(max_attempts=attempts, sleep=lambda s: None)


@pytest.fixture
def three(pg_url: str) -> Iterator[list[ServerProcess]]:
    """Three server processes on one fresh PostgreSQL database."""
    procs: list[ServerProcess] = []
    try:
        for _ in range(3):
            procs.append(ServerProcess(pg_url, "--busy-timeout-ms", "30000").start())
        yield procs
    finally:
        for proc in procs:
            proc.stop()


def server_view(api: Api, store: str) -> dict[str, tuple[list[str], Any]]:
    """The store's live records, read page by page from one snapshot."""
    view: dict[str, tuple[list[str], Any]] = {}
    params: dict[str, Any] = {}
    for _ in range(10_000):
        response = api.call("GET", f"/v1/stores/{store}/snapshot", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        for record in page["records"]:
            view[record["key"]] = (record["index"], record["value"])
        if not page["more"]:
            return view
        params = {"at": page["at"], "after": page["after"]}
    raise AssertionError("the snapshot did not end")


def client_view(client: Client, store: str) -> dict[str, tuple[list[str], Any]]:
    return {r.key: (list(r.index), r.value) for r in client.store(store)}


def log_counts(api: Api, store: str) -> tuple[dict[str, int], dict[str, int]]:
    """How many times each key was added and deleted in the store's log."""
    changes, _ = api.pull_all(store)
    added: dict[str, int] = {}
    deleted: dict[str, int] = {}
    for change in changes:
        counts = added if change["op"] == "add" else deleted
        counts[change["key"]] = counts.get(change["key"], 0) + 1
    return added, deleted


def _waiting_clients(api: Api) -> float:
    text = api.call("GET", "/metrics").text
    line = next(x for x in text.splitlines() if x.startswith("idsync_waiting_clients "))
    return float(line.split()[1])


def _cursor(api: Api, store: str) -> str:
    return api.pull_all(store)[1]


def test_clients_on_three_processes_converge_and_wake_ups_cross_processes(
    three: list[ServerProcess], tmp_path: Path
) -> None:
    store = "notes"
    apis = [Api(p.url) for p in three]
    apis[0].create_store(store)
    rng = random.Random(20261126)
    clients = [
        Client(tmp_path / f"c{i}.db", three[i % 3].url, retry=_policy(), long_poll=2.0)
        for i in range(6)
    ]
    added: set[str] = set()
    deleted: set[str] = set()
    try:
        for client in clients:
            client.store(store)
            client.start()
        for step in range(150):
            who = rng.randrange(len(clients))
            notes = clients[who].store(store)
            roll = rng.random()
            mine = [r.key for r in notes if not r.index or r.index[0].startswith("tag:")]
            if roll < 0.6 or not mine:
                added.add(notes.add({"by": who, "step": step}, index=[f"tag:{who % 2}"]))
            elif roll < 0.8:
                key = rng.choice(mine)
                try:
                    notes.delete(key)
                except KeyError:  # another client's delete arrived in between: fine
                    continue
                deleted.add(key)
            else:
                notes.set_attr(f"e{rng.randrange(3)}", "title", f"v{step}")
        for client in clients:
            client.stop()
        for _ in range(3):  # a change pushed through one process reaches all the others
            for client in clients:
                client.sync()

        # A wait on the third process wakes for a write through the first.
        woke: list[float] = []

        def wait() -> None:
            body = {"cursors": {store: _cursor(apis[2], store)}, "wait": 20}
            started.set()
            response = apis[2].call("POST", "/v1/wait", body)
            assert response.status_code == 200 and response.json()["changed"] == [store]
            woke.append(time.monotonic())

        started = threading.Event()
        waiter = threading.Thread(target=wait)
        waiter.start()
        assert started.wait(10)
        deadline = time.monotonic() + 10
        while _waiting_clients(apis[2]) < 1:  # parked on the third process
            assert time.monotonic() < deadline, "the wait never parked"
            time.sleep(0.02)
        wake_key = f"wake-{uuid.uuid4().hex[:8]}"
        apis[0].push(store, "waker", [add(1, wake_key)])
        pushed = time.monotonic()
        waiter.join(timeout=25)
        assert woke, "the wait on another process never woke"
        assert woke[0] - pushed < WAKE_BOUND
        added.add(wake_key)
        for client in clients:
            client.sync()

        truth = server_view(apis[1], store)
        for client in clients:
            assert client_view(client, store) == truth
        log_added, log_deleted = log_counts(apis[2], store)
        for key in added:
            assert log_added.get(key) == 1, f"acknowledged add {key} is not on the server once"
        for key in deleted:
            assert log_deleted.get(key) == 1, f"acknowledged delete {key} is not on the server once"
            assert key not in truth
        assert all(n == 1 for n in log_added.values()), "a key was added twice"
        assert len(added - deleted) > 20  # the run did something
    finally:
        for client in clients:
            client.close()


def _backend_waiting_on_lock(pg_url: str, query_start: str) -> int | None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE %s",
            (query_start + "%",),
        ).fetchone()
    return None if row is None else int(row[0])


def _backend_alive(pg_url: str, pid: int) -> bool:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return row is not None


def test_a_process_killed_mid_push_loses_nothing_and_clients_move_on(
    three: list[ServerProcess], pg_url: str, tmp_path: Path
) -> None:
    store = "big"
    a, b = three[0], three[1]
    api = Api(b.url)
    api.create_store(store)
    path = tmp_path / "pusher.db"
    client = Client(path, a.url, retry=_policy(2), batch_size=1000)
    notes = client.store(store)
    old = notes.add({"old": True})
    client.sync()
    # Two full batches go through, the third (500 adds, then the delete of
    # ``old``) stops inside its transaction: the test holds ``old``'s row.
    first = [notes.add({"i": i, "pad": "x" * 200}) for i in range(2000)]
    third = [notes.add({"i": i, "pad": "x" * 200}) for i in range(2000, 2499)]
    notes.delete(old)
    holder = psycopg.connect(pg_url)
    try:
        holder.execute("SELECT 1 FROM records WHERE key = %s FOR SHARE", (old,))
        errors: list[BaseException] = []

        def push() -> None:
            try:
                client.sync()
            except TemporaryError as exc:
                errors.append(exc)

        pusher = threading.Thread(target=push)
        pusher.start()
        deadline = time.monotonic() + 60
        pid = None
        while pid is None:
            assert time.monotonic() < deadline, "the third batch never reached the held row"
            # The push's one write statement, held at the update of ``old``'s row.
            pid = _backend_waiting_on_lock(pg_url, "WITH logged AS (INSERT INTO changes")
            time.sleep(0.02)
        a.kill()  # SIGKILL while that push is inside its transaction
        pusher.join(timeout=60)
        assert not pusher.is_alive()
        assert errors, "the push through the killed process did not fail"
    finally:
        holder.rollback()
        holder.close()
    deadline = time.monotonic() + 30
    while _backend_alive(pg_url, pid):
        assert time.monotonic() < deadline, "the killed process's transaction is still open"
        time.sleep(0.05)

    # The killed push is whole or absent; the two before it are there.
    added, deleted = log_counts(api, store)
    assert all(added.get(k) == 1 for k in first)
    in_log = [k for k in third if k in added]
    assert in_log == [] or (in_log == third and deleted.get(old) == 1)
    client.close()

    # The same local file, pointed at another process, carries on.
    moved = Client(path, b.url, retry=_policy())
    try:
        moved.sync()
        extra = moved.store(store).add({"after": "move"})
        moved.sync()
        added, deleted = log_counts(api, store)
        for key in [old, *first, *third, extra]:
            assert added.get(key) == 1, f"{key} is not on the server exactly once"
        assert deleted == {old: 1}
        assert client_view(moved, store) == server_view(api, store)
        assert moved.status.pending == 0
    finally:
        moved.close()


def _send(
    api: Api, store: str, body: dict[str, Any], barrier: threading.Barrier, answers: list[Any]
) -> None:
    barrier.wait(timeout=10)
    answers.append(api.call("POST", f"/v1/stores/{store}/push", body))


def test_one_push_sent_to_two_processes_at_once_applies_once(
    three: list[ServerProcess],
) -> None:
    store = "twice"
    apis = [Api(three[0].url), Api(three[1].url)]
    apis[0].create_store(store)
    keys: list[str] = []
    for round_ in range(8):
        changes = [add(n, f"r{round_}-{n}") for n in range(1, 51)]
        keys += [c["key"] for c in changes]
        body = {"client_id": f"same-{round_}", "changes": changes}
        barrier = threading.Barrier(2)
        answers: list[requests.Response] = []

        threads = [
            threading.Thread(target=_send, args=(api, store, body, barrier, answers))
            for api in apis
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
        first, second = (r.json()["outcomes"] for r in answers)
        assert first == second  # the later one answers what the first one applied
    added, _ = log_counts(apis[1], store)
    assert sorted(added) == sorted(keys)
    assert set(added.values()) == {1}

