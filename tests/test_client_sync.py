"""The client end to end against a real reference-server process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

from idsync_client import AuthError, Client, TemporaryError
from idsync_client.jsoncodec import canonical
from idsync_client.protocol import ProtocolViolation
from idsync_client.records import same_json
from idsync_client.testing import Network, ServerProcess

from .conftest import Api, fast_policy, live_keys, wait_for


@pytest.fixture
def make_client(tmp_path, server):
    clients: list[Client] = []

    def make(name: str, url: str | None = None, **kwargs) -> Client:
        kwargs.setdefault("retry", fast_policy(5))
        client = Client(tmp_path / f"{name}.db", url or server.url, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def state(client: Client, store: str) -> dict:
    return {r.key: (r.index, r.value) for r in client.store(store)}


def server_state(api: Api, store: str) -> dict:
    records, after, more = {}, 0, True
    while more:
        page = api.call("GET", f"/v1/stores/{store}/snapshot", params={"after": after}).json()
        records.update({r["key"]: (tuple(r["index"]), r["value"]) for r in page["records"]})
        after, more = page["after"], page["more"]
    return records


def test_three_clients_converge(make_client, api, store) -> None:
    a, b, c = make_client("a"), make_client("b"), make_client("c")
    sa, sb, sc = a.store(store), b.store(store), c.store(store)
    ka = sa.add({"from": "a"}, index=["tag:x"])
    kb = sb.add({"from": "b"}, index=["tag:y", "owner:b"])
    sc.add({"from": "c"})
    for client in (a, b, c, a, b):
        client.sync()
    sa.delete(kb)
    sc.set_attr("e1", "title", "from c")
    for client in (a, b, c, a, b, c):
        client.sync()
    expected = server_state(api, store)
    assert len(expected) == 3 and kb not in expected and ka in expected
    assert state(a, store) == state(b, store) == state(c, store) == expected
    assert sb.get_attr("e1", "title") == "from c"
    assert [r.key for r in sb.find("tag:x")] == [ka]
    assert all(not r.pending for r in sa)


def test_offline_writes_arrive_when_back_online(make_client, api, store) -> None:
    a, b = make_client("a"), make_client("b")
    b.store(store)
    net = Network(a)
    net.offline()
    keys = [a.store(store).add({"i": i}, index=["tag:offline"]) for i in range(5)]
    assert [r.key for r in a.store(store).find("tag:offline")] == keys
    with pytest.raises(TemporaryError):
        a.sync()
    assert a.status.state == "offline" and a.status.pending == 5
    net.online()
    assert a.sync().pushed == 5
    b.sync()
    assert sorted(r.key for r in b.store(store)) == sorted(keys)
    assert a.status.state == "online" and a.status.pending == 0 and a.status.last_sync


def test_lost_responses_timeouts_and_503s_apply_nothing_twice(make_client, api, store) -> None:
    a = make_client("a")
    net = Network(a)
    notes = a.store(store)
    for i in range(3):
        notes.add({"i": i})
    net.lose_next_response()
    net.timeout_next()
    net.fail_next(503, retry_after=0)
    a.sync()
    outcomes = [entry for entry in net.log if "push" in entry[0]]
    assert [kind for _, kind, _ in outcomes[:3]] == ["lose", "timeout", "status"]
    info = api.call("GET", f"/v1/stores/{store}").json()
    assert info["log_length"] == 3 and info["live_records"] == 3
    assert a.status.pending == 0


def test_attribute_conflict_resolves_to_the_same_winner(make_client, api, store) -> None:
    a, b, c = make_client("a"), make_client("b"), make_client("c")
    b.store(store), c.store(store)
    a.store(store).set_attr("note1", "title", "original")
    for client in (a, b, c):
        client.sync()
    # Both edit offline; b uploads last, so b's value was logged last and wins.
    a.store(store).set_attr("note1", "title", "from a")
    b.store(store).set_attr("note1", "title", "from b")
    a.sync()
    b.sync()
    for client in (a, b, c, a, b, c):
        client.sync()
    values = {cl.store(store).get_attr("note1", "title") for cl in (a, b, c)}
    assert values == {"from b"}
    holders = [r for r in server_state(api, store).values() if "@attr:note1/title" in r[0]]
    assert len(holders) == 1, "the losing value was deleted everywhere"
    assert state(a, store) == state(b, store) == state(c, store)


def test_rejected_change_is_reported_and_does_not_block(make_client, api, store) -> None:
    a, b = make_client("a"), make_client("b")
    a.store(store).add({"v": "a"}, key="shared-key")
    a.sync()
    b_notes = b.store(store)
    b_notes.add({"v": "b"}, key="shared-key")  # b has not pulled: the clash shows at push
    after = b_notes.add({"v": "after"})
    report = b.sync()
    assert [r.code for r in report.rejected] == ["key_exists"]
    assert b_notes.get("shared-key").value == {"v": "a"}, "the server's version wins"
    assert b_notes.get(after) is not None and not b_notes.get(after).pending
    assert [r.key for r in b.rejected()] == ["shared-key"]


def test_reset_keeps_pending_changes(make_client, api) -> None:
    name = f"reset-{uuid.uuid4().hex[:6]}"
    api.create_store(name)
    a = make_client("a")
    notes = a.store(name)
    synced = notes.add({"v": "synced"})
    a.sync()
    pending_add = notes.add({"v": "pending"})
    notes.delete(synced)
    api.call("DELETE", f"/v1/stores/{name}")
    api.create_store(name, recreate=True)
    other = Api(api.url)
    other.push(name, "someone", [{"n": 1, "op": "add", "key": "theirs", "index": [], "value": 1}])
    # Pull first, so that the reset really meets the pending changes (sync pushes first).
    assert a._engine.pull(name).resets == 1
    assert a.db.pending_count(name) == 2
    assert {r.key for r in notes} == {pending_add, "theirs"}
    assert notes.get(pending_add).pending
    report = a.sync()
    assert report.resets == 0
    assert {r.key for r in notes} == {pending_add, "theirs"}
    assert set(server_state(api, name)) == {pending_add, "theirs"}
    assert [r.code for r in a.rejected()] == ["key_not_found"], "the delete had nothing to delete"


def test_auth_error_pauses_until_the_token_is_replaced(tmp_path) -> None:
    with ServerProcess(tmp_path / "s.db", "--auth-token", "right") as srv:
        client = Client(tmp_path / "c.db", srv.url, token="wrong", retry=fast_policy(5))
        with client:
            client.store("notes").add(1)
            with pytest.raises(AuthError):
                client.sync()
            assert client.status.state == "auth_error"
            client.set_token("right")
            assert client.sync().pushed == 1


def test_background_sync_delivers_remote_changes_to_subscribers(make_client, store) -> None:
    a, b = make_client("a", long_poll=5), make_client("b", long_poll=5)
    arrived = threading.Event()
    seen: list = []

    def on_change(event) -> None:
        seen.append(event)
        if any(r.value == {"hello": "b"} for r in event.added):
            arrived.set()

    b_notes = b.store(store)
    sub = b_notes.subscribe(on_change, index="tag:hi")
    a.store(store)
    a.start()
    b.start()
    a.store(store).add({"hello": "b"}, index=["tag:hi"])
    a.store(store).add({"other": True}, index=["tag:other"])
    assert arrived.wait(15), "the change never reached b"
    assert all(event.origin == "remote" for event in seen)
    assert all("tag:hi" in r.index for event in seen for r in event.added)
    sub.cancel()
    a.stop()
    b.stop()
    assert a.status.pending == 0


def test_local_subscription_and_status_callbacks(make_client, store) -> None:
    a = make_client("a")
    events, statuses = [], []
    a.store(store).subscribe(events.append)
    stop = a.on_status(statuses.append)
    key = a.store(store).add({"x": 1})
    a.store(store).delete(key)
    a.sync()
    stop()
    assert [(e.origin, [r.key for r in e.added], [r.key for r in e.deleted]) for e in events] == [
        ("local", [key], []),
        ("local", [], [key]),
    ]
    assert statuses[-1].state == "online" and statuses[-1].pending == 0


WRITER = textwrap.dedent("""
    import sys
    from idsync_client import Client
    path, url, store, tag, count = sys.argv[1:6]
    with Client(path, url) as client:
        notes = client.store(store)
        for i in range(int(count)):
            notes.add({"i": i}, index=[tag])
        try:
            client.sync()
            print("synced")
        except Exception as exc:
            print(type(exc).__name__)
""")


def test_two_processes_on_one_file(tmp_path, server, api, store) -> None:
    path = tmp_path / "shared.db"
    with Client(path, server.url, retry=fast_policy(5)) as holder:
        holder.store(store).add({"from": "holder"})
        holder.start()  # holds the sync lock
        result = subprocess.run(
            [sys.executable, "-c", WRITER, str(path), server.url, store, "tag:child", "20"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.stdout.strip() == "SyncLocked", result.stderr
        assert len(list(holder.store(store).find("tag:child"))) == 20
        holder.kick()
        deadline_ok = threading.Event()
        stop = holder.on_status(lambda s: s.pending == 0 and deadline_ok.set())
        holder.kick()
        assert deadline_ok.wait(15) or holder.status.pending == 0
        stop()
    assert api.call("GET", f"/v1/stores/{store}").json()["live_records"] == 21
    # With the holder gone, the other process may sync.
    result = subprocess.run(
        [sys.executable, "-c", WRITER, str(path), server.url, store, "tag:later", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout.strip() == "synced", result.stderr
    assert api.call("GET", f"/v1/stores/{store}").json()["live_records"] == 22


def test_a_write_by_a_process_in_standby_is_uploaded_soon_and_counted_there(
    tmp_path, server: ServerProcess, api: Api, store: str
) -> None:
    """Two windows of one app on one file: the one in standby writes; the one
    that syncs uploads it within seconds (it is not kicked by that write),
    and the standby one's pending count comes back to 0."""
    path = tmp_path / "shared.db"
    with Client(path, server.url, retry=fast_policy()) as syncing:
        syncing.store(store)
        syncing.start()
        assert wait_for(lambda: syncing.status.state == "online", 10)
        with Client(path, server.url, retry=fast_policy()) as other:
            notes = other.store(store)
            other.start()
            assert wait_for(lambda: other.status.state == "standby", 10)
            key = notes.add({"from": "the other window"})
            assert wait_for(lambda: key in live_keys(api, store), 5), "uploaded within seconds"
            assert wait_for(lambda: other.status.pending == 0, 5), other.status


def test_server_with_smaller_pages_is_still_pulled(tmp_path) -> None:
    with ServerProcess(tmp_path / "s.db", "--max-page", "50", "--default-page", "20") as srv:
        writer = Client(tmp_path / "w.db", srv.url, retry=fast_policy(5))
        reader = Client(tmp_path / "r.db", srv.url, retry=fast_policy(5))
        with writer, reader:
            writer.store("notes").add_many([{"value": i} for i in range(120)])
            writer.sync()
            reader.store("notes")
            assert reader.sync().pulled == 120
            assert len(reader.store("notes")) == 120


def test_a_closed_client_applies_nothing_more(make_client, store) -> None:
    a, b = make_client("a"), make_client("b", long_poll=5)
    b.store(store)
    a.store(store)
    a.sync()
    b.start()
    b.sync()  # caught up: its live channel now waits in a long-poll
    background = b._background
    deadline = time.monotonic() + 15
    while background._wait_thread is None and time.monotonic() < deadline:
        time.sleep(0.01)  # a bounded wait for the live channel's first wait
    assert background._wait_thread is not None
    b.stop()
    key = a.store(store).add({"after": "stop"})
    a.sync()  # wakes the long-poll that b left behind
    background._wait_thread.join(timeout=15)
    assert b.store(store).get(key) is None, "a page arriving after stop was applied"
    b.sync()
    assert b.store(store).get(key) is not None


def test_background_sync_pauses_on_auth_error_and_resumes_with_a_new_token(tmp_path) -> None:
    with ServerProcess(tmp_path / "s.db", "--auth-token", "right") as srv:
        client = Client(tmp_path / "c.db", srv.url, token="wrong", retry=fast_policy(5), long_poll=2)
        paused, done = threading.Event(), threading.Event()

        def watch(status) -> None:
            if status.state == "auth_error":
                paused.set()
            if status.state == "online" and status.pending == 0:
                done.set()

        with client:
            client.on_status(watch)
            client.store("notes").add({"v": 1})
            client.start()
            assert paused.wait(15), client.status
            assert client.status.pending == 1 and "401" in client.status.last_error
            client.set_token("right")
            assert done.wait(15), client.status
            assert (
                Api(srv.url)
                .call("GET", "/v1/stores/notes", headers={"Authorization": "Bearer right"})
                .json()["live_records"]
                == 1
            )


@pytest.mark.parametrize("item", ["", "tag:\x00x", "x" * 257], ids=["empty", "nul", "too-long"])
@pytest.mark.parametrize("prefix", [True, False], ids=["prefix", "exact"])
def test_find_refuses_what_the_server_refuses(make_client, api, store, item, prefix) -> None:
    client = make_client("a")
    notes = client.store(store)
    notes.add(1, index=["tag:a"])
    client.sync()
    params = {"index": item, "prefix": "true" if prefix else "false"}
    answer = api.call("GET", f"/v1/stores/{store}/records", params=params)
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_request"
    with pytest.raises(ProtocolViolation) as refused:
        notes.find(item, prefix=prefix)  # refused at the call, before any iteration
    assert refused.value.code == "invalid_request"


def test_pulled_content_is_compared_as_exact_json(make_client, api, store) -> None:
    """Another client logged these keys first. The same JSON in another member
    order is no change; false/0, 1.0/1 and [true]/[1] are different values:
    the local view ends with the server's, type for type, and says so."""
    theirs = {"same": {"b": 2, "a": 1}, "bool": False, "float": 1.0, "list": [True]}
    mine = {"same": {"a": 1, "b": 2}, "bool": 0, "float": 1, "list": [1]}
    api.push(
        store,
        "other-client",
        [{"n": i, "op": "add", "key": k, "value": v} for i, (k, v) in enumerate(theirs.items(), 1)],
    )
    client = make_client("a")
    notes = client.store(store)
    for key, value in mine.items():
        notes.add(value, key=key)
    remote: list = []
    notes.subscribe(lambda event: remote.append(event) if event.origin == "remote" else None)
    client.sync()
    for key, value in theirs.items():
        assert canonical(notes.get(key).value) == canonical(value), key
    told = {r.key for event in remote for r in event.added}
    assert told == {"bool", "float", "list"}, "only real changes are announced"
    assert same_json('{"a":1,"b":2}', '{"b":2,"a":1}')
    for a, b in (("false", "0"), ("1", "1.0"), ("[1]", "[true]"), ("0.0", "-0.0")):
        assert not same_json(a, b)


def test_a_push_reads_the_client_id_once_a_batch(tmp_path, server, store, monkeypatch) -> None:
    from idsync_client.localdb import LocalDB

    reads: list[str] = []
    original = LocalDB.client_id

    def counted(db: LocalDB) -> str:
        value = original.fget(db)  # type: ignore[attr-defined]
        reads.append(value)
        return value

    with Client(tmp_path / "c.db", server.url, retry=fast_policy(2), batch_size=2) as client:
        notes = client.store(store)
        client.sync()
        for i in range(3):
            notes.add({"i": i})
        assert client._engine is not None
        monkeypatch.setattr(LocalDB, "client_id", property(counted))
        report = client._engine.push(store)
        monkeypatch.undo()
        assert report.pushed == 3
        assert reads == [client.client_id] * 2, "one read for each of the two batches"
