"""Many idle live clients on one server process, and slow connections beside a normal one.

An asyncio load generator holds N long-polls on raw asyncio streams, as N
idle apps would: ``POST /v1/wait`` asking for pages, as the client's live
channel does (or ``GET .../changes?wait=`` with ``kind="pull"``). Measured with them parked: health
and push latency (p99, beside the same on an idle server), the time one write
takes to reach all N (p50/p99 of each poll's answer), and the server's RSS.
Then 500 connections trickle their headers while a normal client syncs.
Figures only: nothing here fails on a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import resource
import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import requests

from idsync_client import Client
from idsync_server_ref.process import ServerProcess

#: Seconds a parked long-poll waits; long enough to open every connection first.
WAIT = 300


def raise_open_files(wanted: int) -> int:
    """Raise this process's RLIMIT_NOFILE towards ``wanted``; return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def p(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def _latencies(fn: Any, samples: int) -> list[float]:
    out = []
    for i in range(samples):
        started = time.perf_counter()
        fn(i)
        out.append((time.perf_counter() - started) * 1000)
    return out


class _Probe:
    """Health and push latency through one keep-alive session."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.trust_env = False
        self.round = 0

    def health(self, _i: int) -> None:
        self.session.get(f"{self.url}/v1/health", timeout=60).raise_for_status()

    def push(self, i: int) -> None:
        self.round += 1
        body = {
            "client_id": "probe",
            "changes": [
                {
                    "n": self.round,
                    "op": "add",
                    "key": f"p{self.round}",
                    "index": [],
                    "value": {"i": i},
                }
            ],
        }
        self.session.post(
            f"{self.url}/v1/stores/probe/push", json=body, timeout=60
        ).raise_for_status()


async def _park(
    port: int, request: bytes, refused: list[int], bodies: list[bytes] | None = None
) -> tuple[float, int]:
    """One idle client: send a long-poll, wait for its answer; (answered at, status).

    A 503 (the storage queue is full while thousands connect at once) is
    retried after a second or so, as a real client honours Retry-After.
    With ``bodies``, the answer's body is read too and appended to it.
    """
    status = 0
    for _ in range(30):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        status_line = await reader.readline()
        answered = time.perf_counter()
        status = int(status_line.split()[1]) if status_line else 0
        if bodies is not None and status != 503:
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            bodies.append(await reader.readexactly(length))
        with contextlib.suppress(Exception):
            writer.close()
        if status != 503:
            return answered, status
        refused.append(1)
        await asyncio.sleep(random.uniform(0.5, 1.5))
    return time.perf_counter(), status


def long_poll_request(kind: str, cursor: str) -> bytes:
    """The bytes of one parked long-poll of ``kind`` (``wait`` or ``pull``) on store idle."""
    if kind == "pull":
        return (
            f"GET /v1/stores/idle/changes?cursor={cursor}&wait={WAIT} HTTP/1.1\r\n"
            "Host: bench\r\n\r\n"
        ).encode()
    body = json.dumps({"cursors": {"idle": cursor}, "wait": WAIT, "pages": True}).encode()
    head = (
        "POST /v1/wait HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def idle_clients(folder: Path, n: int, samples: int, kind: str = "wait") -> dict[str, float]:
    """N parked long-polls on one server: latencies beside them, fan-out, RSS.

    ``kind``: ``wait`` (``POST /v1/wait`` with pages, the client's live
    channel) or ``pull`` (``GET .../changes?wait=``).
    """
    raise_open_files(n + 1024)
    args = ("--max-connections", str(n + 1000), "--max-wait-seconds", str(WAIT))
    with ServerProcess(folder / "idle.sqlite3", *args) as server:
        assert server.proc is not None
        probe = _Probe(server.url)
        probe.session.post(f"{server.url}/v1/stores", json={"name": "probe"}, timeout=30)
        probe.session.post(f"{server.url}/v1/stores", json={"name": "idle"}, timeout=30)
        cursor = probe.session.get(f"{server.url}/v1/stores/idle/changes", timeout=30).json()[
            "cursor"
        ]
        result: dict[str, float] = {"rss_idle_mb": rss_mb(server.proc.pid)}
        result["health_p99_idle_ms"] = p(_latencies(probe.health, samples), 0.99)
        result["push_p99_idle_ms"] = p(_latencies(probe.push, samples), 0.99)

        request = long_poll_request(kind, cursor)
        loop = asyncio.new_event_loop()
        refused: list[int] = []
        ready = threading.Event()
        answers: list[tuple[float, int]] = []

        async def hold() -> None:
            tasks = []
            for _ in range(n):
                tasks.append(asyncio.ensure_future(_park(server.port, request, refused)))
                if len(tasks) % 200 == 0:
                    await asyncio.sleep(0)  # let connections complete as we go
            ready.set()
            answers.extend(await asyncio.gather(*tasks))

        runner = threading.Thread(target=loop.run_until_complete, args=(hold(),))
        started_open = time.perf_counter()
        runner.start()
        deadline = time.monotonic() + WAIT / 2
        while probe.session.get(f"{server.url}/v1/health", timeout=60).json()["waiting"] < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"not all {n} idle clients parked in time")
            time.sleep(0.2)
        result["open_all_s"] = time.perf_counter() - started_open
        result["refused_503_while_connecting"] = len(refused)
        result["rss_loaded_mb"] = rss_mb(server.proc.pid)
        result["health_p99_ms"] = p(_latencies(probe.health, samples), 0.99)
        result["push_p99_ms"] = p(_latencies(probe.push, samples), 0.99)

        written = time.perf_counter()
        body = {
            "client_id": "writer",
            "changes": [{"n": 1, "op": "add", "key": "wake", "index": [], "value": {}}],
        }
        probe.session.post(f"{server.url}/v1/stores/idle/push", json=body, timeout=60)
        runner.join(timeout=WAIT)
        loop.close()
        reached = [(at - written) * 1000 for at, status in answers if status == 200]
        result["fanout_p50_ms"] = statistics.median(reached)
        result["fanout_p99_ms"] = p(reached, 0.99)
        result["fanout_all_ms"] = max(reached)
        result["fanout_answered"] = len(reached)
    return result


def trickling_headers(folder: Path, slow: int, samples: int) -> dict[str, float]:
    """A normal client's sync latency, alone and beside ``slow`` trickling connections."""
    raise_open_files(slow + 1024)
    with ServerProcess(folder / "trickle.sqlite3", "--header-timeout", "60") as server:
        result: dict[str, float] = {}
        with Client(folder / "trickle-client.db", server.url) as client:
            notes = client.store("notes")
            client.sync()

            def one_sync(i: int) -> None:
                notes.add({"i": i})
                client.sync()

            result["sync_p50_alone_ms"] = statistics.median(_latencies(one_sync, samples))
            socks = []
            for _ in range(slow):
                sock = socket.create_connection(("127.0.0.1", server.port))
                sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost")
                socks.append(sock)
            stop = threading.Event()

            def trickle() -> None:
                while not stop.wait(0.5):
                    for sock in socks:
                        with contextlib.suppress(OSError):
                            sock.send(b"x")

            trickler = threading.Thread(target=trickle)
            trickler.start()
            try:
                beside = _latencies(one_sync, samples)
            finally:
                stop.set()
                trickler.join()
                for sock in socks:
                    sock.close()
            result["sync_p50_trickle_ms"] = statistics.median(beside)
            result["sync_p99_trickle_ms"] = p(beside, 0.99)
    return result


if __name__ == "__main__":  # python -m tests.bench.idle_clients [N] [wait|pull]
    import sys
    import tempfile

    size = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    how = sys.argv[2] if len(sys.argv) > 2 else "wait"
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(idle_clients(Path(tmp), size, 50, how), indent=2))
        print(json.dumps(trickling_headers(Path(tmp), 500, 20), indent=2))
