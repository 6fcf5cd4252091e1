"""The network campaign: clients write through a TCP fault proxy, then heal and converge.

Several real clients (three syncing in the background, one calling
``client.sync()`` in a loop) add, delete and set attributes through a
:class:`~.faultproxy.FaultProxy` that refuses connections, resets requests
midway, cuts answers, loses answers after the server committed, black-holes
requests until the client's timeout, delays them, and takes the whole link
down and up on a schedule. Then the proxy heals, every client converges,
and the set check runs: every write acknowledged to the app is on the server
exactly once, every client equals the server, the files pass integrity_check.
Attributes: each client's own entities end with the value it set last, and
every attribute has one live record on the server.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from idsync_client import Client, RetryPolicy, TemporaryError
from idsync_client.testing import wait_until_synced
from idsync_server_ref.process import ServerProcess

from ..conftest import Api, wait_for
from .faultproxy import FaultPlan, FaultProxy
from .figures import CampaignFigures, record
from .setcheck import Ledger, check, server_records

STORE = "notes"

#: Per request: about one in four requests meets a fault.
PLAN = FaultPlan(
    refuse=0.05,
    reset_request=0.05,
    cut_response=0.05,
    lose_answer=0.06,
    black_hole=0.01,
    delay=0.08,
    max_delay=0.15,
)


@dataclass
class Writer:
    """One client's writes: what it was told it saved, and its last attribute values."""

    name: str
    client: Client
    rng: random.Random
    background: bool
    mine: list[str] = field(default_factory=list)
    attrs: dict[tuple[str, str], object] = field(default_factory=dict)
    ops: Counter[str] = field(default_factory=Counter)
    errors: list[BaseException] = field(default_factory=list)


def _client(path: Path, url: str, seed: int) -> Client:
    # Short timeouts, so a black hole costs a second, and quick retries.
    policy = RetryPolicy(max_attempts=3, base_delay=0.02, max_delay=0.3, rng=random.Random(seed))
    return Client(path, url, retry=policy, timeouts=(0.5, 1.0), long_poll=1.0)


def _write(writer: Writer, ledger: Ledger, stop: threading.Event, limit: int) -> None:
    notes = writer.client.store(STORE)
    rng = writer.rng
    try:
        for n in range(limit):
            if stop.is_set():
                return
            roll = rng.random()
            if roll < 0.55 or not writer.mine:
                value = {"by": writer.name, "n": n, "tags": rng.sample(range(50), 2)}
                key = notes.add(value, index=[f"tag:{rng.randrange(5)}"])
                ledger.added(STORE, key, value)
                writer.mine.append(key)
                writer.ops["add"] += 1
            elif roll < 0.68:
                key = writer.mine.pop(rng.randrange(len(writer.mine)))
                try:
                    notes.delete(key)
                except KeyError:  # another writer deleted it, and this one heard
                    writer.ops["delete_gone"] += 1
                    continue
                ledger.deleted(STORE, key)
                writer.ops["delete"] += 1
            elif roll < 0.75:
                # Another writer's record, once synced here: two may delete it at once.
                theirs = [r.key for r in notes.find("tag:", prefix=True) if not r.pending][:200]
                key = rng.choice(theirs) if theirs else None
                if key is not None and key not in writer.mine:
                    try:
                        notes.delete(key)
                    except KeyError:  # a pull deleted it meanwhile
                        continue
                    ledger.deleted(STORE, key)
                    writer.ops["delete_theirs"] += 1
            else:
                # Own entities (one writer each) and shared ones (all writers race).
                entity = f"{writer.name}-{rng.randrange(4)}" if rng.random() < 0.7 else "shared"
                name = rng.choice(("title", "colour"))
                value = {"by": writer.name, "n": n}
                notes.set_attr(entity, name, value)
                writer.attrs[(entity, name)] = value
                writer.ops["set_attr"] += 1
            if not writer.background and n % 5 == 4:
                try:
                    writer.client.sync()
                except TemporaryError:
                    writer.ops["sync_gave_up"] += 1
            # A pace, not a wait for anything: writes spread over the campaign.
            stop.wait(rng.uniform(0, 0.01))
    except BaseException as exc:  # the campaign reports it; a thread must not die silently
        writer.errors.append(exc)


def _settle(foreground: list[Writer], background: list[Writer], seconds: float) -> None:
    """Sync everyone to the server's head after the proxy healed; bounded by ``seconds``."""
    deadline = time.monotonic() + seconds

    def sync_foreground() -> None:
        for w in foreground:
            while True:
                try:
                    w.client.sync()
                    if w.client.status.pending == 0:
                        break
                except TemporaryError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{w.name} did not sync after the heal")

    sync_foreground()
    clients = [w.client for w in background]
    wait_until_synced(clients, timeout=max(1.0, deadline - time.monotonic()))
    sync_foreground()  # pull what the others pushed meanwhile
    wait_until_synced(clients, timeout=max(1.0, deadline - time.monotonic()))


def _attribute_problems(writers: list[Writer], url: str) -> list[str]:
    problems = []
    live = server_records(url, STORE)
    per_attr = Counter(
        item for index, _ in live.values() for item in index if item.startswith("@attr:")
    )
    problems += [f"{item} has {n} live records" for item, n in per_attr.items() if n != 1]
    for owner in writers:
        for (entity, name), value in owner.attrs.items():
            if entity == "shared":
                continue
            for reader in writers:
                got = reader.client.store(STORE).get_attr(entity, name)
                if got != value:
                    problems.append(f"{reader.name} reads {entity}/{name}={got}, set {value}")
    shared = {
        (w.name, name): w.client.store(STORE).get_attr("shared", name)
        for w in writers
        for name in ("title", "colour")
    }
    for name in ("title", "colour"):
        seen = {repr(v) for (_, n), v in shared.items() if n == name}
        if len(seen) != 1:
            problems.append(f"shared/{name} differs between clients: {seen}")
    return problems


def run_campaign(
    tmp_path: Path,
    seconds: float,
    seed: int,
    label: str,
    database: str | Path | None = None,
    backend: str = "sqlite",
) -> CampaignFigures:
    """Write through the faulty proxy for ``seconds``, heal, converge, check.

    ``database``: the server's database (a SQLite file in ``tmp_path`` when None).
    """
    started = time.monotonic()
    rng = random.Random(seed)
    ledger = Ledger()
    with (
        ServerProcess(database or tmp_path / "server.sqlite3") as server,
        FaultProxy(("127.0.0.1", server.port), seed=seed) as proxy,
    ):
        Api(server.url).create_store(STORE)
        writers = [
            Writer(
                f"c{i}",
                _client(tmp_path / f"c{i}.db", proxy.url, seed + i),
                random.Random(rng.random()),
                background=i < 3,
            )
            for i in range(4)
        ]
        try:
            states: Counter[str] = Counter()
            for w in writers:
                w.client.store(STORE)
                w.client.on_status(lambda status: states.update([status.state]))
                if w.background:
                    w.client.start()
            proxy.set_plan(PLAN)
            proxy.flap(seed, up=(0.5, 2.5), down=(0.05, 0.5))
            stop = threading.Event()
            threads = [
                threading.Thread(target=_write, args=(w, ledger, stop, 200_000), daemon=True)
                for w in writers
            ]
            for t in threads:
                t.start()
            stop.wait(seconds)  # the campaign's length, not a wait for a result
            stop.set()
            for t in threads:
                t.join(timeout=60)
            assert not any(t.is_alive() for t in threads), "a writer did not stop"
            errors = [f"{w.name}: {e!r}" for w in writers for e in w.errors]
            assert not errors, errors
            faults = dict(proxy.counts)
            requests = proxy.requests
            proxy.heal()
            healed = time.monotonic()
            _settle(
                [w for w in writers if not w.background],
                [w for w in writers if w.background],
                seconds=120,
            )
            settle_seconds = round(time.monotonic() - healed, 1)
            # Online after the heal, within a bound: a wait sent into the
            # outage can still fail after the data converged (reported
            # offline), and the live thread's next round, after its backoff
            # (max_offline_delay, 5 s), reports online again.
            assert wait_for(
                lambda: all(w.client.status.state == "online" for w in writers if w.background),
                seconds=15,
            ), {w.name: w.client.status.state for w in writers if w.background}
            assert states["offline"] > 0, states  # the app was told the link was down
            rejected = {w.name: w.client.rejected() for w in writers}
            assert not any(rejected.values()), rejected
            attr_problems = _attribute_problems(writers, server.url)
            ops = sum((w.ops for w in writers), Counter())
        finally:
            for w in writers:
                w.client.close()
        result = check(
            ledger, server.url, [STORE], clients=[tmp_path / f"{w.name}.db" for w in writers]
        )
    row = record(
        CampaignFigures(
            label,
            backend=backend,
            injected=sum(faults.values()),
            acknowledged=result.acknowledged,
            lost=result.lost,
            duplicated=result.duplicated,
            seconds=time.monotonic() - started,
            extra={
                **faults,
                "requests": requests,
                "converged_after_heal_s": settle_seconds,
                "status_updates_offline": states["offline"],
                **{f"ops_{k}": v for k, v in ops.items()},
            },
        )
    )
    assert result.ok, result.problems
    assert not attr_problems, attr_problems
    return row


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_clients_through_a_faulty_network_lose_nothing(
    tmp_path: Path, full: bool, backend: str, request: pytest.FixtureRequest
) -> None:
    # Full: two rounds of 100 s (about 7,000 faults); short: one of 4 s.
    rounds = [(100.0, 7001), (100.0, 7002)] if full else [(4.0, 7001)]
    cluster = request.getfixturevalue("pg_cluster") if backend == "postgresql" else None
    total = 0
    for i, (seconds, seed) in enumerate(rounds):
        folder = tmp_path / f"round{i}"
        database = None if cluster is None else str(cluster.database())
        row = run_campaign(folder, seconds, seed, "network faults (proxy)", database, backend)
        total += row.injected
    assert total > (500 if full else 20), "the proxy injected too few faults to mean much"
