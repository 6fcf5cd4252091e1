"""Server-side history over HTTP and in a real server process: dropped stores that
stay dropped, compaction on a schedule, clients behind the horizon, schema 3."""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from idsync_client import Client, RetryPolicy, jsoncodec
from idsync_server_ref import admin
from idsync_server_ref.compaction import CompactionSchedule, parse_duration
from idsync_server_ref.process import ServerProcess
from idsync_server_ref.storage import SqliteStorage
from idsync_server_ref.storage.sqlite_schema import SCHEMA_VERSION
from idsync_server_ref.storage.testing import add as storage_add
from idsync_server_ref.storage.testing import delete as storage_delete

from .conftest import Api, add, delete

FIXTURE = Path(__file__).parent / "fixtures" / "v1" / "server.sqlite"


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not become true in time"
        time.sleep(0.02)


def error_code(response: object) -> str:
    return str(response.json()["error"]["code"])  # type: ignore[attr-defined]


def test_a_dropped_store_answers_store_dropped_and_is_not_recreated(
    api: Api, store: str
) -> None:
    api.push(store, "c1", [add(1, "a")])
    old = api.call("GET", f"/v1/stores/{store}").json()
    assert api.call("DELETE", f"/v1/stores/{store}").status_code == 200
    answers = [
        api.call("POST", f"/v1/stores/{store}/push", {"client_id": "c1", "changes": [add(2)]}),
        api.call("GET", f"/v1/stores/{store}/changes", params={"cursor": old["head_cursor"]}),
        api.call("GET", f"/v1/stores/{store}/snapshot"),
        api.call("GET", f"/v1/stores/{store}"),
        api.call("POST", "/v1/stores", {"name": store}),
    ]
    for response in answers:
        assert response.status_code == 410, response.text
        body = response.json()["error"]
        assert body["code"] == "store_dropped" and body["retryable"] is False
        assert body["details"] == {"epoch": old["epoch"]}
    waited = api.call("POST", "/v1/wait", {"cursors": {store: old["head_cursor"]}, "wait": 0})
    assert waited.json()["errors"][store]["code"] == "store_dropped"
    # Never used: still plain not found.
    assert error_code(api.call("GET", "/v1/stores/never-used-x")) == "store_not_found"
    for bad in ({"name": store, "recreate": "yes"}, {"name": store, "other": 1}):
        assert error_code(api.call("POST", "/v1/stores", bad)) == "invalid_request"
    created = api.call("POST", "/v1/stores", {"name": store, "recreate": True})
    assert created.status_code == 201 and created.json()["epoch"] != old["epoch"]
    assert api.push(store, "c1", [add(1, "a")])[0]["status"] == "applied"
    pulled = api.call("GET", f"/v1/stores/{store}/changes", params={"cursor": old["head_cursor"]})
    assert error_code(pulled) == "reset_required"


def test_the_server_compacts_on_its_schedule(tmp_path: Path) -> None:
    db = tmp_path / "server.sqlite3"
    with ServerProcess(db, "--compact-every", "1s", "--retention", "0s") as server:
        api = Api(server.url)
        api.create_store("notes")
        api.push("notes", "c1", [add(1, "a"), add(2, "b")])
        _, seen_add = api.pull_all("notes")
        api.push("notes", "c1", [delete(3, "a")])
        _, at_head = api.pull_all("notes")
        figures = lambda: api.call("GET", "/v1/stores/notes").json()  # noqa: E731
        wait_for(lambda: figures()["horizon_seq"] == 3)
        info = figures()
        assert info["log_length"] == 1 and info["retention_seconds"] is None
        assert info["bytes_on_disk"] > 0
        # Saw the add of "a" but not its delete: must reload, never skip it.
        old = api.call("GET", "/v1/stores/notes/changes", params={"cursor": seen_add})
        assert error_code(old) == "reset_required"
        current = api.call("GET", "/v1/stores/notes/changes", params={"cursor": at_head})
        assert current.status_code == 200 and current.json()["changes"] == []
        again = api.push("notes", "c2", [add(1, "a")])
        assert again[0]["code"] == "key_deleted"


def test_a_client_offline_past_the_retention_resets_and_converges(tmp_path: Path) -> None:
    policy = RetryPolicy(max_attempts=3, sleep=lambda s: None)
    with ServerProcess(tmp_path / "server.sqlite3") as server:
        Api(server.url).create_store("notes")
        a = Client(tmp_path / "a.db", server.url, retry=policy)
        b = Client(tmp_path / "b.db", server.url, retry=policy)
        try:
            first = a.store("notes").add({"t": 1})
            second = a.store("notes").add({"t": 2})
            a.sync()
            b.store("notes")
            b.sync()
            assert sorted(r.key for r in b.store("notes")) == sorted([first, second])
            # b goes away; a deletes one and adds another; the server compacts.
            a.store("notes").delete(first)
            third = a.store("notes").add({"t": 3})
            a.sync()
            assert admin.main(["compact", "--db", str(server.database), "--retention", "0s"]) == 0
            b.sync()
            assert sorted(r.key for r in b.store("notes")) == sorted([second, third])
        finally:
            a.close()
            b.close()


def test_a_schedule_compacts_while_writers_write(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "db.sqlite3")
    storage.create_store("notes")
    storage.set_retention("notes", 0)
    schedule = CompactionSchedule(storage, every=0.02, retention=0).start()
    try:
        for i in range(50):
            storage.push("notes", "c1", [storage_add(2 * i + 1, f"k{i}")])
            storage.push("notes", "c1", [storage_delete(2 * i + 2, f"k{i}")])
        wait_for(lambda: storage.get_store("notes").log_length == 0)
        assert storage.get_store("notes").horizon_seq == 100 and schedule.runs > 0
    finally:
        schedule.stop()
        storage.close()
    assert not any(t.name == "idsync-compaction" for t in threading.enumerate())
    off = CompactionSchedule(storage, every=0).start()
    off.stop()
    assert off.runs == 0


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("30s", 30), ("90m", 5400), ("12h", 43200), ("7d", 604800)]
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "7 days", "-1d", "1.5h", "d"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_a_bad_schedule_flag_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "server.sqlite3"
    with pytest.raises(RuntimeError, match="not a duration"):
        ServerProcess(db, "--compact-every", "often").start(timeout=30)
    assert not db.exists()


def test_a_v1_file_goes_through_every_step_and_compacts(tmp_path: Path) -> None:
    path = tmp_path / "server.sqlite"
    shutil.copy(FIXTURE, path)
    storage = SqliteStorage(path)
    try:
        before, _ = _snapshot(storage)
        assert storage.get_store("notes").log_length == 7
        # Entries logged before the upgrade count their retention from it.
        assert storage.compact(now=time.time()).entries_removed == 0
        report = storage.compact("notes", now=time.time() + 8 * 86400)
        # Two deleted records (synced-2 and a replaced attribute): their adds and deletes.
        assert report.entries_removed == 4 and report.horizons == {"notes": 7}
        assert storage.get_store("notes").log_length == 3
        after, _ = _snapshot(storage)
        assert after == before
        out = storage.push("notes", "c9", [storage_add(1, "synced-2")])
        assert out[0].code == "key_deleted"
    finally:
        storage.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT value FROM meta").fetchone() == (str(SCHEMA_VERSION),)
        assert conn.execute("PRAGMA auto_vacuum").fetchone() == (2,)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()


def _snapshot(storage: SqliteStorage) -> tuple[dict[str, object], object]:
    page = storage.snapshot("notes", None, 0, 1000, 10**7)
    assert not page.more
    return {jsoncodec.loads(r)["key"]: r for r in page.records_json}, page.at
