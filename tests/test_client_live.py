"""Background sync holds one live channel (POST /v1/wait) for all of a client's stores."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from idsync_client import Client, PermanentError, ResetRequired
from idsync_client.errors import IdsyncError
from idsync_client.protocol import Cursor, Limits, Outcome
from idsync_client.testing import Network, ServerProcess
from idsync_client.transport import HttpTransport
from idsync_client.wire import PullAnswer, SnapshotAnswer, WaitAnswer, WireError

from .conftest import Api, fast_policy, wait_for


def add_change(n: int, key: str) -> dict[str, Any]:
    return {"n": n, "op": "add", "key": key, "index": [], "value": {"n": n}}


@pytest.fixture
def own_server(tmp_path) -> Iterator[ServerProcess]:
    """A server of its own: its count of waiting requests is this test's alone."""
    with ServerProcess(tmp_path / "server.sqlite3") as proc:
        yield proc


def waiting(api: Api) -> int:
    return int(api.call("GET", "/v1/health").json()["waiting"])


def test_five_stores_hold_one_request_while_idle(tmp_path, own_server) -> None:
    api = Api(own_server.url)
    with Client(tmp_path / "c.db", own_server.url, retry=fast_policy(2), long_poll=10) as client:
        net = Network(client)
        stores = [client.store(f"s{i}") for i in range(5)]
        heard: list[str] = []
        for store in stores:
            store.subscribe(
                lambda e: heard.extend(f"{e.store}:{r.key}" for r in e.added if e.origin == "remote")
            )
        client.start()
        assert wait_for(lambda: client.status.state == "online" and waiting(api) == 1)
        sent = len(net.log)
        samples = []
        for _ in range(10):  # a second of idling, looked at ten times
            samples.append(waiting(api))
            time.sleep(0.1)
        assert samples == [1] * 10, "exactly one request held open for five stores"
        assert len(net.log) == sent, "no request answered while idle: not polling"

        started = time.monotonic()
        api.push("s3", "writer", [add_change(1, "news")])
        assert wait_for(lambda: heard == ["s3:news"], 5), heard
        assert time.monotonic() - started < 3, "the wait answered, not a timeout"
        assert stores[3].get("news") is not None
        # The answer, the pull of s3, and no more: the others were not asked.
        asked = [what for what, _, _ in net.log[sent:]]
        assert not any("/stores/s0/" in what for what in asked), asked
        assert wait_for(lambda: waiting(api) == 1), "and the channel waits again"


def test_a_store_opened_after_start_joins_the_channel(tmp_path, own_server) -> None:
    api = Api(own_server.url)
    with Client(tmp_path / "c.db", own_server.url, retry=fast_policy(2), long_poll=10) as client:
        client.store("first")
        client.start()
        assert wait_for(lambda: client.status.state == "online" and waiting(api) == 1)
        late = client.store("late")
        heard: list[str] = []
        late.subscribe(lambda e: heard.extend(r.key for r in e.added if e.origin == "remote"))
        assert wait_for(lambda: client.db.cursor("late") is not None, 5), "pulled at once"
        started = time.monotonic()
        api.push("late", "writer", [add_change(1, "hello")])
        assert wait_for(lambda: heard == ["hello"], 5), heard
        # Had the store waited for the wait in flight to end, it would take 10 s.
        assert time.monotonic() - started < 3
        # The wait left behind ends by itself; one request is held again.
        assert wait_for(lambda: waiting(api) == 1, 15)


def test_a_local_write_still_kicks_the_push(tmp_path, server) -> None:
    api = Api(server.url)
    with Client(tmp_path / "c.db", server.url, retry=fast_policy(2), long_poll=10) as client:
        notes = client.store("live-push")
        client.start()
        assert wait_for(lambda: client.status.state == "online")
        key = notes.add({"t": 1})
        assert wait_for(lambda: client.status.pending == 0, 5)
        assert api.call("GET", f"/v1/stores/live-push/records/{key}").status_code == 200


class FakeTransport:
    """A Transport in memory: scripted wait answers, one page per store."""

    def __init__(self) -> None:
        self.token: str | None = None
        self.contacts = 0
        self.answers: list[WaitAnswer | IdsyncError] = []
        self.waits: list[dict[str, str | None]] = []
        self.created: list[str] = []
        self.resets: set[str] = set()
        self.snapshots: list[str] = []
        self.idle = threading.Event()
        self.server_limits = Limits()
        self._http = HttpTransport("http://idsync.test")
        self._lock = threading.Lock()

    def _answered(self) -> None:
        with self._lock:
            self.contacts += 1

    def create_store(self, store: str) -> None:
        self._answered()
        self.created.append(store)

    def push(self, store: str, client_id: str, changes_json: list[str]) -> list[Outcome]:
        self._answered()
        return []

    def pull(
        self, store: str, cursor: str | None, wait: float = 0.0, limit: int | None = None
    ) -> PullAnswer:
        self._answered()
        if store in self.resets:
            self.resets.discard(store)
            raise ResetRequired("stale cursor", status=410, code="reset_required")
        return PullAnswer([], "0123456789abcdef.0", False)

    def snapshot(self, store: str, at: str | None, after: int) -> SnapshotAnswer:
        self._answered()
        self.snapshots.append(store)
        return SnapshotAnswer([], "0123456789abcdef.0", 0, False)

    def find(self, store: str, item: str, prefix: bool = False, after: int = 0, limit=None):
        raise NotImplementedError

    def wait(
        self,
        cursors: dict[str, str | None],
        wait: float,
        pages: bool = False,
        limit: int | None = None,
    ) -> WaitAnswer:
        with self._lock:
            self.waits.append(dict(cursors))
            answer = self.answers.pop(0) if self.answers else None
        if answer is None:
            self.idle.wait(min(wait, 0.5))  # nothing scripted: an empty answer
            answer = WaitAnswer([], {})
        if isinstance(answer, IdsyncError):
            raise answer
        self._answered()
        return answer

    def error_for(self, store: str, error: WireError) -> IdsyncError:
        return self._http.error_for(store, error)

    def limits(self) -> Limits:
        return self.server_limits

    def close(self) -> None:
        self.idle.set()


def envelope(code: str) -> WireError:
    return WireError(code, code.replace("_", " "))


@pytest.fixture
def fake_client(tmp_path) -> Iterator[tuple[Client, FakeTransport]]:
    fake = FakeTransport()
    client = Client(tmp_path / "c.db", "http://idsync.test", retry=fast_policy(2), long_poll=5)
    assert client._engine is not None
    client._engine.transport = fake  # the engine is typed against Transport
    yield client, fake
    client.close()
    fake.close()


def test_reset_required_in_a_wait_answer_reloads_the_store(fake_client) -> None:
    client, fake = fake_client
    client.store("notes")
    client.store("tags")
    fake.answers.append(WaitAnswer([], {"notes": envelope("reset_required")}))
    client.start()
    assert wait_for(lambda: client.status.resets == 1, 5), client.status
    assert fake.snapshots == ["notes"]
    assert wait_for(lambda: len(fake.waits) >= 2, 5)
    assert set(fake.waits[0]) == {"notes", "tags"}, "one wait for both stores"
    assert client.status.last_error is None


def test_store_not_found_in_a_wait_answer_creates_the_store(fake_client) -> None:
    client, fake = fake_client
    client.store("notes")
    fake.answers.append(WaitAnswer([], {"notes": envelope("store_not_found")}))
    client.start()
    assert wait_for(lambda: fake.created == ["notes"], 5), fake.created
    assert wait_for(lambda: len(fake.waits) >= 2, 5)
    assert client.status.last_error is None


def test_a_missing_wait_endpoint_shows_and_does_not_wedge(fake_client) -> None:
    client, fake = fake_client
    client.store("notes")
    missing = PermanentError("HTTP 404: no endpoint (not_found)", status=404, code="not_found")
    fake.answers += [missing, missing]
    client.start()
    assert wait_for(lambda: "not_found" in (client.status.last_error or ""), 5)
    # Tried again after a backoff; once the server answers, the error clears.
    assert wait_for(lambda: len(fake.waits) >= 3 and client.status.last_error is None, 10)
    assert client.status.state == "online"


def test_a_store_failing_for_good_is_set_aside_and_the_others_keep_waiting(fake_client) -> None:
    client, fake = fake_client
    client.store("notes")
    client.store("broken")
    fake.answers.append(WaitAnswer([], {"broken": envelope("invalid_cursor")}))
    client.start()
    assert wait_for(lambda: "invalid_cursor" in (client.status.last_error or ""), 5)
    assert wait_for(lambda: len(fake.waits) >= 2, 5)
    assert set(fake.waits[-1]) == {"notes"}, "the failing store waits aside"


def test_more_stores_than_one_wait_may_name_are_waited_on_in_turns(fake_client) -> None:
    client, fake = fake_client
    fake.server_limits = Limits(max_wait_stores=2)
    names = [f"s{i}" for i in range(5)]
    for name in names:
        client.store(name)
    client.start()
    assert wait_for(lambda: len(fake.waits) >= 3, 10)
    first_turns = fake.waits[:3]
    assert all(len(cursors) <= 2 for cursors in first_turns)
    assert sorted(s for cursors in first_turns for s in cursors) == names


def _seq(cursor: str | None) -> int:
    return -1 if cursor is None else Cursor.decode(cursor).seq


def test_a_remote_write_arrives_through_the_live_channel_with_no_pull(
    tmp_path, own_server
) -> None:
    with (
        Client(tmp_path / "a.db", own_server.url, retry=fast_policy(2)) as a,
        Client(tmp_path / "b.db", own_server.url, retry=fast_policy(2), long_poll=10) as b,
    ):
        net = Network(b)
        a.store("notes")
        a.sync()
        heard: list[str] = []
        b.store("notes").subscribe(lambda e: heard.extend(r.key for r in e.added))
        b.start()
        api = Api(own_server.url)
        assert wait_for(lambda: b.status.state == "online" and waiting(api) == 1)
        sent = len(net.log)
        keys = []
        for i in range(3):
            keys.append(a.store("notes").add({"i": i}))
            a.sync()
            assert wait_for(lambda n=i + 1: len(heard) == n)
        assert heard == keys, "each change told once, in order"
        paths = [what for what, _, _ in net.log[sent:]]
        assert paths and all(p == "POST /v1/wait" for p in paths), paths


def test_the_writer_takes_its_own_change_back_from_the_live_channel(
    tmp_path, own_server
) -> None:
    with Client(tmp_path / "a.db", own_server.url, retry=fast_policy(2), long_poll=10) as a:
        net = Network(a)
        heard: list[str] = []
        a.store("notes").subscribe(lambda e: heard.extend(e.origin for r in e.added))
        a.start()
        api = Api(own_server.url)
        assert wait_for(lambda: a.status.state == "online" and waiting(api) == 1)
        sent = len(net.log)
        a.store("notes").add({"mine": True})
        assert wait_for(lambda: a.status.pending == 0 and waiting(api) == 1)
        # The live channel moved the cursor past the own change (seq 1).
        assert wait_for(lambda: _seq(a.db.cursor("notes")) == 1)
        kinds = [what.split("?")[0] for what, _, _ in net.log[sent:]]
        assert "GET /v1/stores/notes/changes" not in kinds, kinds
        assert heard == ["local"], "the own change is told once, as the local write"


def test_a_change_from_the_live_channel_is_told_before_the_round_reads_its_counts(
    tmp_path, own_server
) -> None:
    with (
        Client(tmp_path / "a.db", own_server.url, retry=fast_policy(2)) as a,
        Client(tmp_path / "b.db", own_server.url, retry=fast_policy(2), long_poll=10) as b,
    ):
        a.store("notes")
        a.sync()
        events: list[tuple[str, ...]] = []
        locks_free: list[bool] = []
        told = threading.Event()

        def on_change(event: Any) -> None:
            # A write from another thread goes through while the callback runs:
            # the thread telling holds no lock of the local file.
            writer = threading.Thread(target=lambda: other.add(1))
            writer.start()
            writer.join(2.0)
            locks_free.append(not writer.is_alive())
            events.append(tuple(r.key for r in event.added))
            told.set()

        b.store("notes").subscribe(on_change)
        other = b.store("other")
        b.start()
        api = Api(own_server.url)
        assert wait_for(lambda: b.status.state == "online" and waiting(api) == 1)
        background = b._background
        assert background is not None
        # Note, in the round that takes the page, whether the app was told
        # before the round reads the counts for its status.
        took = threading.Event()
        take, counts = background._take, background.counts
        told_first: list[bool] = []

        def taking(*args: Any) -> None:
            take(*args)
            took.set()

        def counting() -> tuple[int, int]:
            if took.is_set():
                took.clear()
                told_first.append(told.wait(2.0))  # bounded: False if told only after
            return counts()

        background._take = taking  # type: ignore[method-assign]
        background.counts = counting
        key = a.store("notes").add({"n": 1})
        a.sync()
        assert wait_for(lambda: bool(told_first), 10)
        assert told_first[0], "told at once, not after the round's status work"
        assert wait_for(lambda: b.status.pending == 0 and waiting(api) == 1)
        assert events == [(key,)], "told once"
        assert locks_free == [True], "outside the library's locks"


def test_a_kick_leaves_the_live_thread_listening_and_still_wakes_the_push(
    tmp_path, own_server
) -> None:
    from idsync_client.background import BackgroundSync

    class Counting(threading.Event):
        """Notes whether each wake-up came from the test's own thread (a kick)."""

        def __init__(self) -> None:
            super().__init__()
            self.from_main: list[bool] = []

        def set(self) -> None:
            self.from_main.append(threading.current_thread() is threading.main_thread())
            super().set()

    api = Api(own_server.url)
    with Client(tmp_path / "c.db", own_server.url, retry=fast_policy(2)) as client:
        notes = client.store("notes")
        client.sync()
        assert client._engine is not None
        background = BackgroundSync(
            client._engine, client._status, client._lock, client._counts, long_poll=10
        )
        wake_live = background._wake_live = Counting()
        background.start(["notes"])
        try:
            assert wait_for(lambda: waiting(api) == 1)
            notes.add({"n": 1})  # the client's own kick goes to its own (stopped) sync
            background.kick()
            assert wait_for(lambda: client.db.pending_count() == 0, 5), "the push was kicked"
            assert True not in wake_live.from_main, "the listening live thread was left alone"
        finally:
            background.stop()
            background.join_waits(time.monotonic() + 1)
