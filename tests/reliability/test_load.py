"""Load: thousands of idle live clients parked on ``POST /v1/wait`` beside real writers.

In rounds: every idle client parks a long-poll at the store's head (the
asyncio load generator of tests/bench/idle_clients.py), and once the server
reports them all waiting, a few real :class:`~idsync_client.Client` writers
each add a record and sync. Every parked client must be answered ``200``
with the store in ``changed`` (the write reached it), with no error. The
server's RSS is sampled over the run (start, peak, end). At the end the set
check holds the writers' acknowledged adds against the server and their files.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from pathlib import Path

import requests

from idsync_client import Client
from idsync_server_ref.process import ServerProcess

from ..bench.idle_clients import _park, raise_open_files, rss_mb
from ..conftest import Api, wait_for
from .figures import CampaignFigures, record
from .setcheck import Ledger, check

WAIT_SECONDS = 120
WRITERS = 3


class RssSampler:
    """Samples a process's RSS (MB) every ``interval`` seconds in a thread until stopped."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.samples: list[float] = [rss_mb(pid)]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.samples.append(rss_mb(self.pid))

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join(timeout=5)
        self.samples.append(rss_mb(self.pid))
        return self.samples


def park_all(port: int, store: str, cursor: str, n: int) -> tuple[threading.Thread, list]:
    """Start ``n`` parked ``POST /v1/wait`` long-polls in a thread; (thread, results).

    ``results`` holds, once the thread ends, (answered at, status) per client
    and their bodies, and the count of 503s retried while connecting.
    """
    body = json.dumps({"cursors": {store: cursor}, "wait": WAIT_SECONDS}).encode()
    request = (
        b"POST /v1/wait HTTP/1.1\r\nHost: load\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    answers: list[tuple[float, int]] = []
    bodies: list[bytes] = []
    refused: list[int] = []

    async def hold() -> None:
        tasks = []
        for _ in range(n):
            tasks.append(asyncio.ensure_future(_park(port, request, refused, bodies)))
            if len(tasks) % 200 == 0:
                await asyncio.sleep(0)  # let connections complete as we go
        answers.extend(await asyncio.gather(*tasks))

    def run() -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(hold())
        finally:
            loop.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, [answers, bodies, refused]


def get(url: str) -> dict:
    """One GET on a connection of its own: the server closes keep-alive connections
    idle for 5 s, and a round can leave one idle longer than that."""
    with requests.Session() as http:
        http.trust_env = False
        response = http.get(url, timeout=60, headers={"Connection": "close"})
        response.raise_for_status()
        answer: dict = response.json()
        return answer


def test_thousands_of_idle_clients_each_see_every_write(tmp_path: Path, full: bool) -> None:
    idle = 3000 if full else 200
    rounds, budget = (12, 240.0) if full else (3, 15.0)
    raise_open_files(idle + 1024)
    args = ("--max-connections", str(idle + 1000), "--max-wait-seconds", str(WAIT_SECONDS + 10))
    ledger = Ledger()
    store = "load"
    started = time.monotonic()
    with ServerProcess(tmp_path / "load.sqlite3", *args) as server:
        assert server.proc is not None
        api = Api(server.url)
        api.create_store(store)
        sampler = RssSampler(server.proc.pid)
        writers = [Client(tmp_path / f"writer{i}.db", server.url) for i in range(WRITERS)]
        fanout_ms: list[float] = []
        problems: list[str] = []
        answered = refused = done = 0
        after_round: list[float] = []  # the server's RSS once each round's clients are answered
        try:
            for client in writers:
                client.store(store)
                client.sync()
            while done < rounds and time.monotonic() - started < budget:
                cursor = get(f"{server.url}/v1/stores/{store}")["head_cursor"]
                thread, (answers, bodies, retried) = park_all(server.port, store, cursor, idle)
                parked = wait_for(
                    lambda: get(f"{server.url}/v1/health")["waiting"] >= idle, 60
                )
                assert parked, f"round {done}: not all {idle} idle clients parked"
                written = time.perf_counter()

                def write(i: int, client: Client, round_: int) -> None:
                    value = {"writer": i, "round": round_}
                    key = client.store(store).add(value, index=[f"round:{round_}"])
                    ledger.added(store, key, value)
                    client.sync()

                threads = [
                    threading.Thread(target=write, args=(i, c, done)) for i, c in enumerate(writers)
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(timeout=60)
                thread.join(timeout=WAIT_SECONDS)
                assert not thread.is_alive(), f"round {done}: idle clients still waiting"
                refused += len(retried)
                for (at, status), body in zip(answers, bodies, strict=True):
                    answer = json.loads(body) if body else None
                    if status != 200 or answer != {"changed": [store], "errors": {}}:
                        problems.append(f"round {done}: {status} {body[:200]!r}")
                    else:
                        answered += 1
                        fanout_ms.append((at - written) * 1000)
                assert len(answers) == idle
                done += 1
                after_round.append(rss_mb(server.proc.pid))
            for client in writers:
                client.sync()
            result = check(ledger, server.url, [store], clients=[c.path for c in writers])
        finally:
            for client in writers:
                client.close()
            samples = sampler.stop()
    rss = {
        "rss_start_mb": round(samples[0], 1),
        "rss_first_round_mb": round(after_round[0], 1) if after_round else None,
        "rss_peak_mb": round(max(samples), 1),
        "rss_end_mb": round(samples[-1], 1),
    }
    record(
        CampaignFigures(
            "load: idle clients on /v1/wait + writers",
            injected=idle * done,
            acknowledged=result.acknowledged,
            lost=result.lost,
            duplicated=result.duplicated,
            seconds=time.monotonic() - started,
            extra={
                "idle_clients": idle,
                "rounds": done,
                "answers_ok": answered,
                "bad_answers": len(problems),
                "retried_503": refused,
                "fanout_p50_ms": round(statistics.median(fanout_ms)) if fanout_ms else None,
                "fanout_max_ms": round(max(fanout_ms)) if fanout_ms else None,
                **rss,
            },
        )
    )
    assert not problems, problems[:5]
    assert answered == idle * done and done >= min(rounds, 2)
    assert result.ok, result.problems
    if full:
        # Flat: after the first round has sized the server's buffers for
        # thousands of clients, later rounds of as many take nothing more
        # (Python keeps what it allocated, so the start is not the bar).
        assert max(after_round) <= after_round[0] * 1.25 + 16, (rss, after_round)
