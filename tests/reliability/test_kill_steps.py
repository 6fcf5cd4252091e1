"""Deterministic kill points: a process killed at each named step loses nothing.

The random campaign (:mod:`.test_kill`) must land in small windows to hit
these; here each step of :mod:`idsync_client.killpoint` is hit on purpose,
once: the process dies there (exit by SIGKILL proves the step was reached),
is started again, everyone syncs, and the set check holds.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from idsync_client import Client, RetryPolicy, TemporaryError, killpoint
from idsync_client.killpoint import STEPS
from idsync_server_ref.process import ServerProcess

from ..conftest import Api
from .figures import CampaignFigures, record
from .setcheck import Ledger, check, server_log

WORKER = Path(__file__).with_name("worker.py")
CLIENT_STEPS = [s for s in STEPS if s.startswith("client.")]
SERVER_STEPS = [s for s in STEPS if s.startswith("server.")]


def policy() -> RetryPolicy:
    return RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05, rng=random.Random(1))


def run_worker(db: Path, url: str, store: str, acks: Path, kill_at: str | None) -> int:
    """Run one worker process for three rounds; its exit code (-9: killed at ``kill_at``)."""
    env = {k: v for k, v in os.environ.items() if k != "IDSYNC_KILL_AT"}
    if kill_at:
        env["IDSYNC_KILL_AT"] = kill_at
    cmd = [sys.executable, str(WORKER), str(db), url, store, str(acks), "0", "seed", "3"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode in (0, -9), done.stderr
    return done.returncode


@pytest.mark.parametrize("step", CLIENT_STEPS)
def test_a_client_killed_at_each_step_loses_and_duplicates_nothing(
    step: str, server: ServerProcess, store: str, tmp_path: Path
) -> None:
    ledger = Ledger()
    other = tmp_path / "other.db"
    with Client(other, server.url, retry=policy()) as client:
        # Something to pull, so that the pull steps come round.
        for i in range(3):
            ledger.added(store, client.store(store).add({"other": i}), {"other": i})
        client.sync()
    db, acks = tmp_path / "lane.db", tmp_path / "lane.acks"
    assert run_worker(db, server.url, store, acks, f"{step}@3") == -9, f"{step} was not reached"
    if step == "client.write.committed":
        # Killed after its third write committed: two were acknowledged.
        assert len(acks.read_text().splitlines()) == 2
    assert run_worker(db, server.url, store, acks, None) == 0
    for path in (db, other, db):
        with Client(path, server.url, retry=policy()) as client:
            client.store(store)
            client.sync()
            assert client.db.pending_count() == 0
    ledger.merge_file(store, acks)
    found = check(ledger, server.url, [store], clients=[db, other])
    record(CampaignFigures(f"kill client at {step}", injected=1, acknowledged=found.acknowledged,
                           lost=found.lost, duplicated=found.duplicated))  # fmt: skip
    assert found.ok, found.problems


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    if request.param == "sqlite":
        return tmp_path / "server.sqlite3"
    return str(request.getfixturevalue("pg_url"))


@pytest.mark.parametrize("step", SERVER_STEPS)
def test_a_server_killed_at_each_step_loses_and_duplicates_nothing(
    step: str, database: str | Path, tmp_path: Path
) -> None:
    store = "steps"
    server = ServerProcess(database)
    ledger = Ledger()
    try:
        server.start()
        Api(server.url).create_store(store)
        server.kill()
        server.env["IDSYNC_KILL_AT"] = step
        server.start()
        with Client(tmp_path / "c.db", server.url, retry=policy()) as client:
            notes = client.store(store)
            kept = [notes.add({"i": i}, index=["tag:x"]) for i in range(4)]
            for i, key in enumerate(kept):
                ledger.added(store, key, {"i": i})
            notes.delete(kept[0])
            ledger.deleted(store, kept[0])
            with pytest.raises(TemporaryError):
                client.sync()  # the server dies inside the push
            assert server.proc is not None and server.proc.wait(timeout=30) == -9
            server.env.clear()
            server.start()
            # Before its commit the batch is wholly absent; after it, wholly there.
            logged = len(server_log(server.url, store))
            assert logged == (0 if step == "server.push.before_commit" else 5)
            client.sync()
            assert client.db.pending_count() == 0
        sqlite_files = [] if "://" in str(database) else [Path(database)]
        found = check(ledger, server.url, [store], [tmp_path / "c.db"], sqlite_files)
        backend = "sqlite" if sqlite_files else "postgresql"
        record(CampaignFigures(f"kill server at {step}", backend, injected=1,
                               acknowledged=found.acknowledged, lost=found.lost,
                               duplicated=found.duplicated))  # fmt: skip
        assert found.ok, found.problems
    finally:
        server.kill()


def test_an_unknown_kill_point_is_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown step 'client\.nowhere'"):
        killpoint.arm("client.nowhere")
    killpoint.arm(None)
