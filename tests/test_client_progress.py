"""Progress of a first sync of a large store, against a real server."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import uuid
from typing import Any

import pytest

from idsync_client import Client, RetryPolicy
from idsync_client.progress import ProgressReporter, SyncProgress

from .conftest import Api, add

RECORDS = 20_000


def seed(api: Api, store: str, count: int) -> None:
    """``count`` records in ``store``, pushed in full batches."""
    client_id = f"seed-{uuid.uuid4().hex[:8]}"
    for start in range(0, count, 1000):
        api.push(store, client_id, [add(n + 1) for n in range(start, min(count, start + 1000))])


@pytest.fixture(scope="module")
def large_store(server) -> str:
    api = Api(server.url)
    name = f"large-{uuid.uuid4().hex[:8]}"
    api.create_store(name)
    seed(api, name, RECORDS)
    return name


def collect(client: Client) -> tuple[list[SyncProgress], threading.Event]:
    seen: list[SyncProgress] = []
    finished = threading.Event()

    def heard(progress: SyncProgress) -> None:
        seen.append(progress)
        if progress.done:
            finished.set()

    client.on_progress(heard)
    return seen, finished


def check_run(seen: list[SyncProgress], store: str, phase: str) -> None:
    assert len(seen) >= 3, seen  # one report per page, several pages
    assert all(p.store == store and p.phase == phase for p in seen)
    counts = [p.received for p in seen]
    assert counts == sorted(set(counts)), counts  # strictly increasing
    assert [p.done for p in seen] == [False] * (len(seen) - 1) + [True]
    assert seen[-1].received == seen[-1].total == RECORDS
    assert all(p.total == RECORDS for p in seen)  # known from the first page on
    assert seen[0].fraction is not None and 0 < seen[0].fraction < 1
    assert seen[-1].fraction == 1.0


def test_first_pull_reports_each_page_up_to_the_total(server, large_store, tmp_path) -> None:
    with Client(tmp_path / "c.db", server.url, retry=RetryPolicy(sleep=lambda s: None)) as client:
        client.store(large_store)
        seen, finished = collect(client)
        transport = client.transport
        assert transport is not None
        asked: list[str] = []
        request = transport.request

        def counting(method: str, path: str, **kwargs: Any) -> Any:
            asked.append(f"{method} {path}")
            return request(method, path, **kwargs)

        transport.request = counting  # type: ignore[method-assign]
        report = client.sync()
        assert report.pulled == RECORDS
        assert finished.wait(5)
        check_run(seen, large_store, "pull")
        assert len(seen) == RECORDS // 5000  # the engine's page size
        # The first sync's figures (snapshot or log?) serve the progress too.
        assert asked.count(f"GET /v1/stores/{large_store}") == 1, asked

        seen.clear()  # caught up: a one-page pull says nothing
        client.sync()
        assert seen == []


def test_reload_reports_the_snapshot(server, large_store, tmp_path) -> None:
    with Client(tmp_path / "c.db", server.url, retry=RetryPolicy(sleep=lambda s: None)) as client:
        client.store(large_store)
        client.sync()
        seen, finished = collect(client)
        # A reload happens when the server's history changed; here it is asked for.
        client._require_engine().reset(large_store)
        assert finished.wait(5)
        check_run(seen, large_store, "snapshot")
        assert client.db.count(large_store) == RECORDS


def test_background_sync_reports_while_the_round_goes_on(server, large_store, tmp_path) -> None:
    with Client(tmp_path / "c.db", server.url) as client:
        client.store(large_store)
        seen, finished = collect(client)
        client.start()
        assert finished.wait(20)
        check_run(seen, large_store, "pull")


def test_a_failing_callback_is_logged_and_sync_goes_on(
    server, large_store, tmp_path, caplog
) -> None:
    with Client(tmp_path / "c.db", server.url, retry=RetryPolicy(sleep=lambda s: None)) as client:
        client.store(large_store)

        def broken(progress: SyncProgress) -> None:
            raise RuntimeError("broken listener")

        client.on_progress(broken)
        seen, finished = collect(client)
        with caplog.at_level(logging.ERROR, logger="idsync.client"):
            assert client.sync().pulled == RECORDS
            assert finished.wait(5)
        check_run(seen, large_store, "pull")
        assert "a progress callback failed" in caplog.text


def test_registration_checks_and_unsubscribe(server, large_store, tmp_path) -> None:
    with Client(tmp_path / "c.db", server.url, retry=RetryPolicy(sleep=lambda s: None)) as client:
        with pytest.raises(TypeError, match="callable"):
            client.on_progress("not a function")  # type: ignore[arg-type]
        removed: list[SyncProgress] = []
        stop = client.on_progress(removed.append)
        seen, finished = collect(client)  # the control: still listening
        stop()
        stop()  # twice is fine
        client.store(large_store)
        client.sync()
        assert finished.wait(5) and seen
        assert removed == []


def test_reporter_without_total_and_after_unsubscribe() -> None:
    reporter = ProgressReporter()  # no way to ask for totals
    seen: list[SyncProgress] = []
    done = threading.Event()
    stop = reporter.listen(lambda p: (seen.append(p), p.done and done.set()))
    reporter.page("s", "pull", 10, False, None)  # one page: nothing
    reporter.page("s", "pull", 10, True, None)
    reporter.page("s", "snapshot", 5, True, None)  # a reload cuts the pull short
    reporter.page("s", "snapshot", 5, False, None)
    assert done.wait(5)
    assert [(p.phase, p.received, p.total, p.done) for p in seen] == [
        ("pull", 10, None, False),
        ("snapshot", 5, None, False),
        ("snapshot", 10, 10, True),
    ]
    assert seen[0].fraction is None
    stop()
    reporter.page("s", "pull", 10, True, None)
    reporter.close()  # delivers what was queued, then ends
    assert len(seen) == 3


# -- python -m idsync_client sync ------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("IDSYNC_")}
    return subprocess.run(
        [sys.executable, "-m", "idsync_client", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **(env or {})},
    )


def test_cli_syncs_once_with_a_progress_line_per_page(server, large_store, tmp_path) -> None:
    db = tmp_path / "cli.db"
    done = run_cli("sync", "--db", str(db), "--server", server.url, "--store", large_store)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines == [
        f"{large_store}: pull 5,000/20,000 (25%)",
        f"{large_store}: pull 10,000/20,000 (50%)",
        f"{large_store}: pull 15,000/20,000 (75%)",
        f"{large_store}: pull 20,000/20,000 (100%) done",
    ]
    assert f"{large_store}: 20,000 records" in done.stdout
    assert "pulled 20,000" in done.stdout
    # Again, from the environment, with the stores the file knows: no progress.
    again = run_cli("sync", env={"IDSYNC_DB": str(db), "IDSYNC_SERVER": server.url})
    assert again.returncode == 0, again.stderr
    assert again.stderr == "" and "pulled 0" in again.stdout


def test_cli_help_and_errors(tmp_path) -> None:
    shown = run_cli("sync", "--help")
    assert shown.returncode == 0
    for name in ("IDSYNC_DB", "IDSYNC_SERVER", "IDSYNC_TOKEN", "IDSYNC_STORES"):
        assert name in shown.stdout
    missing = run_cli("sync", "--db", str(tmp_path / "x.db"))
    assert missing.returncode == 2 and "--server" in missing.stderr
    db = tmp_path / "none.db"
    typo = tmp_path / "typo" / "y.db"
    for new_file in (db, typo):
        nothing = run_cli("sync", "--db", str(new_file), "--server", "http://127.0.0.1:9")
        assert nothing.returncode == 2 and "no store to sync" in nothing.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "no file or folder left behind"
    unreachable = run_cli(
        "sync", "--db", str(db), "--server", "http://127.0.0.1:9", "--store", "s",
        env={"IDSYNC_DB": "unused"},
    )
    assert unreachable.returncode == 1 and "sync failed" in unreachable.stderr
