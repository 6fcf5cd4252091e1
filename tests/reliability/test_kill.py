"""Kill campaigns: SIGKILL client and server processes while clients write and sync.

Three client processes (:mod:`tests.reliability.worker`) add and delete
records, each on its own file (two sync after each round of writes, one
syncs in the background), and sync with one server process (SQLite or
PostgreSQL) or three server processes sharing one PostgreSQL database.
Each acknowledged write is appended to the lane's acknowledgement file
after the call returned. A seeded controller kills a random process after
a random delay, and restarts it; half of the restarts arm a named kill
point (``IDSYNC_KILL_AT``, see :mod:`idsync_client.killpoint`) at which the
process kills itself: inside the server's push transaction before its
commit, after the commit before the answer, after the client's write
commit before the call returns, after the push's answer before the
outbox is settled, around the commit of a pulled page and its cursor.

At the end every process is stopped, the servers are started again, each
client syncs to the end, and the set check holds: every acknowledged write
is on the server exactly once, every client equals the server, no client
has anything pending, ``integrity_check`` is ok on every SQLite file.
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from idsync_client import Client, RetryPolicy
from idsync_client.killpoint import STEPS
from idsync_server_ref.process import ServerProcess

from ..conftest import Api, wait_for
from .figures import CampaignFigures, record
from .setcheck import Ledger, check, server_log
from .worker import Forker

LANES = 3
CLIENT_STEPS = [s for s in STEPS if s.startswith("client.")]
SERVER_STEPS = [s for s in STEPS if s.startswith("server.")]


@dataclass(frozen=True)
class Size:
    """How many kill points a campaign aims at, and its time limit in seconds."""

    kill_points: int
    seconds: float
    max_delay: float


SHORT = Size(kill_points=30, seconds=6.0, max_delay=0.3)
FULL = Size(kill_points=1000, seconds=600.0, max_delay=0.3)


class Lane:
    """One client file and the worker process that writes to it."""

    def __init__(
        self, forker: Forker, folder: Path, n: int, url: str, store: str, seed: int
    ) -> None:
        self.forker = forker
        self.n = n
        self.url = url
        self.store = store
        self.db = folder / f"lane{n}.db"
        self.acks = folder / f"lane{n}.acks"
        self.out = folder / f"lane{n}.out"
        self.err = folder / f"lane{n}.err"
        self.seed = seed
        self.starts = 0
        self.pid: int | None = None
        # The last lane syncs in the background, as an app does; the others
        # sync on their own thread after each round of writes.
        self.mode = "background" if n == LANES - 1 else "sync"

    def start(self, kill_at: str | None = None) -> None:
        """Start the worker, armed at ``kill_at`` (``step@n``) or not."""
        self.starts += 1
        args = [str(self.db), self.url, self.store, str(self.acks), str(self.n)]
        args += [f"{self.seed}-{self.starts}", "10000", self.mode]
        self.out.unlink(missing_ok=True)  # ready() waits for this start's first line
        self.pid = self.forker.start(args, self.out, self.err, kill_at)

    def phase(self) -> str:
        """The last phase the worker printed ("" before its first)."""
        lines = self.out.read_text(errors="replace").splitlines()
        return lines[-1].split()[0] if lines else ""

    def ready(self) -> bool:
        """True once the worker opened its file (printed a phase)."""
        return self.out.exists() and self.out.stat().st_size > 0

    def wait(self, timeout: float) -> int | None:
        """The worker's exit code, or None while it runs (after ``timeout`` seconds)."""
        assert self.pid is not None
        return self.forker.wait(self.pid, timeout)

    def kill(self) -> str:
        """SIGKILL the worker; the phase the kill landed in."""
        assert self.pid is not None
        self.forker.kill(self.pid)
        return self.phase()

    def close(self) -> None:
        if self.pid is not None:
            self.forker.kill(self.pid)


class Controller:
    """Kills and restarts the campaign's processes, one thread per process;
    counts the kills and where they landed."""

    def __init__(self, size: Size, seed: int) -> None:
        self.size = size
        self.seed = seed
        self.landed: Counter[str] = Counter()
        self.kills = 0
        self.crashes: list[str] = []
        self._lock = threading.Lock()
        self._deadline = time.monotonic() + size.seconds

    def _more(self) -> bool:
        with self._lock:
            return (
                self.kills < self.size.kill_points
                and time.monotonic() < self._deadline
                and not self.crashes
            )

    def _count(self, where: str) -> None:
        with self._lock:
            self.kills += 1
            self.landed[where] += 1

    def _crashed(self, text: str) -> None:
        with self._lock:
            self.crashes.append(text)

    @staticmethod
    def _armed(rng: random.Random, steps: list[str]) -> str | None:
        """Half the starts arm a named kill point (at its 1st to 4th pass)."""
        if rng.random() < 0.5:
            return None
        return f"{rng.choice(steps)}@{rng.randint(1, 4)}"

    def _delay(self, rng: random.Random, armed: str | None, scale: float) -> float:
        # An armed process gets longer: its step must come round. None waits
        # past the campaign's end.
        delay = rng.uniform(0.0, self.size.max_delay * scale * (4 if armed else 1))
        return max(0.0, min(delay, self._deadline - time.monotonic()))

    def run_lane(self, lane: Lane, index: int) -> None:
        """Start, let write, kill, restart ``lane`` until the campaign ends."""
        rng = random.Random(f"{self.seed}-lane-{index}")
        try:
            while self._more():
                armed = self._armed(rng, CLIENT_STEPS)
                lane.start(armed)
                if not wait_for(lambda: lane.ready() or lane.wait(0) is not None, 30):
                    self._crashed(f"lane {lane.n} did not start")
                    return
                code = lane.wait(self._delay(rng, armed, 1.0))
                if code is None:
                    self._count(f"client {lane.kill()}")
                    continue
                if code == -9 and armed:
                    self._count(f"named {armed.partition('@')[0]}")
                elif code != 0:
                    self._crashed(f"lane {lane.n} exited {code}: {lane.err.read_text()[-3000:]}")
        except BaseException as exc:
            self._crashed(f"lane {lane.n}: {exc!r}")
        finally:
            lane.close()

    def run_server(self, server: ServerProcess, index: int) -> None:
        """Kill and restart ``server`` until the campaign ends (less often than
        the clients: they need it up to get anything done)."""
        rng = random.Random(f"{self.seed}-server-{index}")
        try:
            while self._more():
                assert server.proc is not None
                armed = server.env.get("IDSYNC_KILL_AT")
                try:
                    code = server.proc.wait(timeout=self._delay(rng, armed, 3.0))
                except subprocess.TimeoutExpired:
                    server.kill()
                    self._count("server random")
                else:
                    if code == -9 and armed:
                        self._count(f"named {armed.partition('@')[0]}")
                    else:
                        self._crashed(f"server exited {code}: {''.join(server.log_lines[-40:])}")
                        return
                server.env.pop("IDSYNC_KILL_AT", None)
                step = self._armed(rng, SERVER_STEPS)
                if step:
                    server.env["IDSYNC_KILL_AT"] = step
                server.start()
        except BaseException as exc:
            self._crashed(f"server {index}: {exc!r}")

    def run(self, lanes: list[Lane], servers: list[ServerProcess]) -> None:
        """Run every process's thread until the campaign ends."""
        threads = [
            threading.Thread(target=self.run_lane, args=(lane, i)) for i, lane in enumerate(lanes)
        ]
        threads += [
            threading.Thread(target=self.run_server, args=(server, i))
            for i, server in enumerate(servers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=self.size.seconds + 120)
        assert not any(t.is_alive() for t in threads), "a kill thread did not end"


def start_all(servers: list[ServerProcess]) -> None:
    """Start the servers side by side (each start waits until it listens)."""
    errors: list[BaseException] = []

    def start(server: ServerProcess) -> None:
        try:
            server.start()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(server,)) for server in servers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors


def final_sync(lanes: list[Lane]) -> None:
    """Each client syncs to the end, twice round (the first hears what the last pushed)."""
    policy = RetryPolicy(max_attempts=10, base_delay=0.05, max_delay=0.5, rng=random.Random(0))
    for _ in range(2):
        for lane in lanes:
            with Client(lane.db, lane.url, retry=policy) as client:
                client.store(lane.store)
                client.sync()
                assert client.db.pending_count() == 0, f"lane {lane.n} still has changes pending"


def run_campaign(
    name: str, database: str | Path, servers_n: int, size: Size, folder: Path, seed: int
) -> CampaignFigures:
    """One kill campaign; its figures (the set check is asserted)."""
    started = time.monotonic()
    store = "kill"
    servers = [ServerProcess(database) for _ in range(servers_n)]
    lanes: list[Lane] = []
    forker = Forker()
    try:
        start_all(servers)
        Api(servers[0].url).create_store(store)
        lanes = [
            Lane(forker, folder, n, servers[n % servers_n].url, store, seed)
            for n in range(LANES)
        ]
        control = Controller(size, seed)
        killing = time.monotonic()
        control.run(lanes, servers)
        assert not control.crashes, control.crashes
        syncing = time.monotonic()
        killing = syncing - killing
        for server in servers:
            server.kill()
            server.env.pop("IDSYNC_KILL_AT", None)
        start_all(servers)
        final_sync(lanes)
        syncing = time.monotonic() - syncing

        ledger = Ledger()
        for lane in lanes:
            ledger.merge_file(store, lane.acks)
        sqlite_files = [Path(database)] if "://" not in str(database) else []
        found = check(
            ledger, servers[0].url, [store], [lane.db for lane in lanes], sqlite_files
        )
        logged_adds = {c["key"] for c in server_log(servers[0].url, store) if c["op"] == "add"}
        saved_unacknowledged = len(logged_adds - set(ledger.adds.get(store, {})))
        row = record(
            CampaignFigures(
                campaign=name,
                backend="sqlite" if sqlite_files else "postgresql",
                injected=control.kills,
                acknowledged=found.acknowledged,
                lost=found.lost,
                duplicated=found.duplicated,
                seconds=time.monotonic() - started,
                extra={
                    "servers": servers_n,
                    "clients": LANES,
                    "client_kills": sum(
                        v for k, v in control.landed.items() if k.startswith("client ")
                    ),
                    "server_kills": control.landed["server random"],
                    "named_kills": sum(
                        v for k, v in control.landed.items() if k.startswith("named ")
                    ),
                    "saved_unacknowledged": saved_unacknowledged,
                    "landed": dict(sorted(control.landed.items())),
                    "kill_s": round(killing, 1),
                    "final_sync_s": round(syncing, 1),
                },
            )
        )
        assert found.ok, found.problems
        return row
    finally:
        for lane in lanes:
            lane.close()
        forker.close()
        for server in servers:
            server.kill()


@pytest.fixture(params=["sqlite-1", "postgresql-1", "postgresql-3"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str | Path, int]:
    """(backend, database, server processes) for one campaign."""
    backend, _, n = str(request.param).partition("-")
    if backend == "sqlite":
        return backend, tmp_path / "server.sqlite3", int(n)
    return backend, str(request.getfixturevalue("pg_url")), int(n)


def test_kill_campaign_loses_and_duplicates_nothing(
    setup: tuple[str, str | Path, int], full: bool, tmp_path: Path
) -> None:
    backend, database, servers_n = setup
    size = FULL if full else SHORT
    name = f"kill clients and {servers_n} server{'s' if servers_n > 1 else ''}"
    row = run_campaign(name, database, servers_n, size, tmp_path, seed=servers_n * 7 + len(backend))
    assert row.lost == 0 and row.duplicated == 0
    assert row.acknowledged > 0
    # The full run reaches its aim; a short one on a slow machine may stop at its time limit.
    assert row.injected >= (size.kill_points if full else 5), row
    # A write saved but never acknowledged needs a kill between its commit and
    # its acknowledgement: at most one per kill during writes.
    landed = row.extra["landed"]
    cut = landed.get("client write", 0) + landed.get("named client.write.committed", 0)
    assert row.extra["saved_unacknowledged"] <= cut, row
