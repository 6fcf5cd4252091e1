"""The client's local API on a real SQLite file: reads, writes, and bad input."""

from __future__ import annotations

import math
import sqlite3

import pytest

from idsync_client import Client, ClientClosed, IdsyncError, KeyInUse, Limits


@pytest.fixture
def client(tmp_path):
    with Client(tmp_path / "local.db") as c:
        yield c


def pending_rows(client: Client) -> int:
    return client.db.pending_count()


def test_reads_see_local_writes_at_once(client: Client) -> None:
    notes = client.store("notes")
    key = notes.add({"t": "hi"}, index=["tag:b", "tag:a", "tag:a"])
    record = notes.get(key)
    assert record.value == {"t": "hi"} and record.pending and record.seq is None
    assert record.index == ("tag:a", "tag:b"), "index items are sorted and unique"
    assert [r.key for r in notes.find("tag:a")] == [key]
    assert [r.key for r in notes.find("tag:", prefix=True)] == [key]
    assert key in notes and len(notes) == 1 and [r.key for r in notes] == [key]
    notes.delete(key)
    assert notes.get(key) is None and list(notes.find("tag:a")) == []
    assert pending_rows(client) == 2
    assert client.status.state == "local" and client.status.pending == 2


def test_find_pages_through_many_records(client: Client) -> None:
    notes = client.store("notes")
    keys = notes.add_many([{"value": i, "index": ["tag:x"]} for i in range(1234)])
    assert [r.key for r in notes.find("tag:x", page_size=100)] == keys
    assert len(list(notes)) == 1234


def test_attributes_locally(client: Client) -> None:
    notes = client.store("notes")
    assert notes.get_attr("n1", "title", "none") == "none"
    notes.set_attr("n1", "title", "a")
    notes.set_attr("n1", "title", "b")
    notes.set_attr("n1", "body", {"rich": True})
    assert notes.get_attr("n1", "title") == "b"
    assert notes.attrs("n1") == {"title": "b", "body": {"rich": True}}
    assert notes.entities() == ["n1"]
    assert len(list(notes.find("@attr:n1/title"))) == 1, "the old value was deleted"
    assert notes.delete_attr("n1", "title") is True
    assert notes.delete_attr("n1", "title") is False
    assert notes.attrs("n1") == {"body": {"rich": True}}


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        math.inf,
        {1: "int key"},
        {"set": {1, 2}},
        b"bytes",
        object(),
        2**64,
        "x" * (256 * 1024 + 1),
        [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
    ],
    ids=["nan", "inf", "int-key", "set", "bytes", "object", "bigint", "oversize", "deep"],
)
def test_bad_values_are_refused_and_change_nothing(client: Client, value) -> None:
    with pytest.raises(ValueError):
        client.store("notes").add(value)
    assert len(client.store("notes")) == 0 and pending_rows(client) == 0


@pytest.mark.parametrize("key", ["", "a\x00b", "a\nb", "k" * 257, "\ud800"])
def test_bad_keys_are_refused(client: Client, key: str) -> None:
    notes = client.store("notes")
    with pytest.raises(ValueError):
        notes.add(1, key=key)
    with pytest.raises(ValueError):
        notes.get(key)
    assert pending_rows(client) == 0


@pytest.mark.parametrize(
    "index", ["tag:a", [""], ["a\tb"], ["x" * 257], [f"i{i}" for i in range(33)]]
)
def test_bad_index_items_are_refused(client: Client, index) -> None:
    with pytest.raises(ValueError):
        client.store("notes").add(1, index=index)
    assert pending_rows(client) == 0


@pytest.mark.parametrize("index", [[1], None, 5, [b"bytes"], ["ok", None]])
def test_index_items_of_a_wrong_type_are_a_type_error(client: Client, index) -> None:
    with pytest.raises(TypeError):
        client.store("notes").add(1, index=index)
    assert pending_rows(client) == 0


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.get(5),
        lambda s: s.delete(None),
        lambda s: s.add(1, key=5),
        lambda s: list(s.find(None)),
        lambda s: s.subscribe(print, index=["a"]),
        lambda s: s.set_attr(5, "title", 1),
        lambda s: s.get_attr("note", None),
        lambda s: s.attrs(None),
        lambda s: s.delete_entity(3.0),
    ],
)
def test_arguments_of_a_wrong_type_are_a_type_error(client: Client, call) -> None:
    with pytest.raises(TypeError):
        call(client.store("notes"))
    assert pending_rows(client) == 0


def test_a_store_name_of_a_wrong_type_is_a_type_error(client: Client) -> None:
    with pytest.raises(TypeError, match="store name must be a string"):
        client.store(None)  # type: ignore[arg-type]
    assert client.stores == []


def test_keys_are_never_reused(client: Client) -> None:
    notes = client.store("notes")
    notes.add(1, key="k")
    with pytest.raises(KeyInUse):
        notes.add(2, key="k")
    notes.delete("k")
    with pytest.raises(KeyInUse):
        notes.add(3, key="k")
    with pytest.raises(KeyError):
        notes.delete("k")
    with pytest.raises(KeyError):
        notes.delete("never")
    assert pending_rows(client) == 2


def test_bulk_add_is_all_or_nothing(client: Client) -> None:
    notes = client.store("notes")
    with pytest.raises(ValueError):
        notes.add_many([{"value": 1}, {"value": float("nan")}])
    with pytest.raises(TypeError):
        notes.add_many([{"value": 1}, "not a mapping"])
    with pytest.raises(ValueError):
        notes.add_many([{"value": 1, "colour": "red"}])
    notes.add(0, key="taken")
    with pytest.raises(KeyInUse):
        notes.add_many([{"value": 1, "key": "fresh"}, {"value": 2, "key": "taken"}])
    with pytest.raises(KeyInUse):
        notes.add_many([{"value": 1, "key": "twice"}, {"value": 2, "key": "twice"}])
    assert len(notes) == 1 and pending_rows(client) == 1


@pytest.mark.parametrize("name", ["../x", "A", "", "x" * 65, 5])
def test_bad_store_names(client: Client, name) -> None:
    client.store("kept")
    with pytest.raises(TypeError if name == 5 else ValueError):
        client.store(name)
    assert client.stores == ["kept"], "a refused name was recorded"


def test_bad_attribute_names(client: Client) -> None:
    notes = client.store("notes")
    for entity, name in [("a/b", "t"), ("a", "t/x"), ("", "t"), ("a", "")]:
        with pytest.raises(ValueError):
            notes.set_attr(entity, name, 1)
    assert pending_rows(client) == 0


def test_misuse_of_the_client(tmp_path) -> None:
    with pytest.raises(TypeError):
        Client(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Client(tmp_path / "a.db", "ftp://nowhere")
    with pytest.raises(ValueError):
        Client(tmp_path / "b.db", synchronous="SOMETIMES")
    with pytest.raises(ValueError):
        Client(tmp_path / "c.db", batch_size=0)
    local = Client(tmp_path / "d.db")
    with pytest.raises(IdsyncError):
        local.sync()
    with pytest.raises(TypeError):
        local.store("notes").subscribe("not callable")  # type: ignore[arg-type]
    notes = local.store("notes")
    local.close()
    local.close()
    with pytest.raises(ClientClosed):
        local.store("notes")
    # Listening to a closed client would never hear anything: said at once.
    for listen in (local.on_status, local.on_progress, notes.subscribe):
        with pytest.raises(ClientClosed):
            listen(print)


def test_limits_can_be_tightened(tmp_path) -> None:
    with Client(tmp_path / "l.db", limits=Limits().with_overrides(max_value_bytes=10)) as c:
        c.store("s").add("short")
        with pytest.raises(ValueError, match="over the 10 limit"):
            c.store("s").add("much too long")
    with pytest.raises(ValueError):
        Limits().with_overrides(max_batch=0)
    with pytest.raises(ValueError):
        Limits().with_overrides(colour=3)
    with pytest.raises(ValueError, match="over max_page"):
        Limits().with_overrides(default_page=6000, max_page=5000)


def test_schema_version_is_checked_at_open(tmp_path) -> None:
    Client(tmp_path / "v.db").close()
    with sqlite3.connect(tmp_path / "v.db") as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(IdsyncError, match="schema version 99"):
        Client(tmp_path / "v.db")


def test_data_and_client_id_survive_reopening(tmp_path) -> None:
    with Client(tmp_path / "r.db") as first:
        key = first.store("notes").add({"kept": True})
        client_id = first.client_id
    with Client(tmp_path / "r.db") as again:
        assert again.client_id == client_id
        assert again.store("notes").get(key).value == {"kept": True}
        assert again.status.pending == 1


def test_index_subscription_filters_events(client: Client) -> None:
    notes = client.store("notes")
    seen = []
    sub = notes.subscribe(seen.append, index="tag:a")
    notes.add(1, index=["tag:a"])
    notes.add(2, index=["tag:b"])
    sub.cancel()
    notes.add(3, index=["tag:a"])
    assert [[r.value for r in e.added] for e in seen] == [[1]]


def test_sync_lock_is_shared_by_the_threads_of_a_process(tmp_path) -> None:
    import threading

    from idsync_client.processlock import ProcessLock

    lock = ProcessLock(tmp_path / "x.lock")
    other = ProcessLock(tmp_path / "x.lock")  # as another process would hold it
    start = threading.Barrier(8)
    results = []

    def take() -> None:
        start.wait()
        results.append(lock.acquire())

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 8
    assert other.acquire() is False
    lock.release()
    assert other.acquire() is True
    other.release()


def test_prefix_find_keeps_items_that_continue_with_the_last_code_point(client: Client) -> None:
    notes = client.store("notes")
    top = "\U0010ffff"
    inside = {
        notes.add(1, index=["a" + top]),
        notes.add(2, index=["a" + top + "z"]),
        notes.add(3, index=["a"]),
    }
    notes.add(4, index=["b"])  # the upper bound of prefix "a" itself: outside
    notes.add(5, index=["`" + top])  # sorts just below "a": outside
    assert {r.key for r in notes.find("a", prefix=True)} == inside
    at_top = {notes.add(6, index=[top]), notes.add(7, index=[top + top + "x"])}
    assert {r.key for r in notes.find(top, prefix=True)} == at_top, "no upper bound at all"
    assert {r.key for r in notes.find("a" + top, prefix=True)} == inside - {
        r.key for r in notes.find("a")
    }
