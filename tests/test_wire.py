"""The answer types: what the server builds, the client parses back; malformed answers refused."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
import responses

from idsync_client import Client, PermanentError, RetryPolicy, jsoncodec
from idsync_client.protocol import Cursor, Outcome
from idsync_client.wire import (
    FindAnswer,
    MalformedAnswer,
    PullAnswer,
    PushAnswer,
    SnapshotAnswer,
    WaitAnswer,
    WireError,
)

EPOCH = "0123456789abcdef"
CURSOR = Cursor(EPOCH, 9, "a1")
RECORD = '{"key":"k/1","index":["tag:a"],"value":{"big":12345678901234567890123},"seq":3}'
ADD = '{"seq":8,"op":"add","key":"k","index":["tag:a"],"value":[1,1.0,true,null]}'
DELETE = '{"seq":9,"op":"delete","key":"k"}'


def roundtrip(text: str) -> Any:
    return jsoncodec.loads(text)


def test_pull_answer_round_trips_spliced_items_exactly() -> None:
    text = PullAnswer.to_json([ADD, DELETE], CURSOR, True)
    answer = PullAnswer.parse(roundtrip(text))
    assert answer.cursor == CURSOR.encode()
    assert answer.more is True
    assert answer.changes == [jsoncodec.loads(ADD), jsoncodec.loads(DELETE)]
    # The stored text goes out as it is: no re-encoding on the server.
    assert ADD in text and DELETE in text
    empty = PullAnswer.parse(roundtrip(PullAnswer.to_json([], Cursor(EPOCH, 0), False)))
    assert (empty.changes, empty.cursor, empty.more) == ([], f"{EPOCH}.0", False)


def test_snapshot_and_find_answers_round_trip() -> None:
    snap = SnapshotAnswer.parse(roundtrip(SnapshotAnswer.to_json([RECORD], CURSOR, 3, False)))
    assert snap.records == [jsoncodec.loads(RECORD)]
    assert snap.records[0]["value"]["big"] == 12345678901234567890123
    assert (snap.at, snap.after, snap.more) == (CURSOR.encode(), 3, False)
    found = FindAnswer.parse(roundtrip(FindAnswer.to_json([RECORD, RECORD], 7, True)))
    assert (len(found.records), found.after, found.more) == (2, 7, True)


def test_wait_and_push_answers_round_trip() -> None:
    envelope = {"code": "reset_required", "message": "m", "retryable": False, "details": {}}
    wait = WaitAnswer.parse(roundtrip(WaitAnswer.to_json({"b", "a"}, {"c": envelope})))
    assert wait.changed == ["a", "b"]
    assert wait.errors == {"c": WireError("reset_required", "m", {})}
    outcomes = [Outcome(1, "applied", 5), Outcome(2, "rejected", None, "key_exists", "x")]
    assert PushAnswer.parse(roundtrip(PushAnswer.to_json(outcomes)), sent=2).outcomes == outcomes


def pull_page(**changes: Any) -> dict[str, Any]:
    page: dict[str, Any] = {"changes": [json.loads(ADD)], "cursor": CURSOR.encode(), "more": False}
    page.update(changes)
    return page


MALFORMED: list[tuple[type, Any]] = [
    (PullAnswer, []),
    (PullAnswer, "text"),
    (PullAnswer, {"changes": [], "more": False}),
    (PullAnswer, {"cursor": CURSOR.encode(), "more": False}),
    (PullAnswer, pull_page(more="no")),
    (PullAnswer, pull_page(more=1)),
    (PullAnswer, pull_page(changes={"seq": 1})),
    (PullAnswer, pull_page(cursor="garbage")),
    (PullAnswer, pull_page(cursor=12)),
    (PullAnswer, pull_page(cursor=None)),
    (PullAnswer, pull_page(changes=[{"seq": 1, "op": "upsert", "key": "k"}])),
    (PullAnswer, pull_page(changes=[{"seq": 1, "op": ["add"], "key": "k"}])),
    (PullAnswer, pull_page(changes=[json.loads(ADD), {"seq": 2, "op": {"a": 1}, "key": "d"}])),
    (PullAnswer, pull_page(changes=[{"seq": 1, "op": "add", "key": "k", "index": []}])),
    (PullAnswer, pull_page(changes=[{"seq": "1", "op": "delete", "key": "k"}])),
    (PullAnswer, pull_page(changes=[{"seq": True, "op": "delete", "key": "k"}])),
    (PullAnswer, pull_page(changes=[{"seq": 1, "op": "delete"}])),
    (PullAnswer, pull_page(changes=[{"seq": 1, "op": "add", "key": "k", "index": [1]}])),
    # One bad item behind good ones (pages are checked column by column).
    (PullAnswer, pull_page(changes=[json.loads(ADD), {"seq": 0, "op": "delete", "key": "k"}])),
    (PullAnswer, pull_page(changes=[json.loads(ADD), {"seq": 2, "op": "add", "key": "k"}])),
    (PullAnswer, pull_page(changes=[{"seq": 2, "op": "delete", "key": "d"}, "add"])),
    (PullAnswer, pull_page(changes=[json.loads(ADD), {**json.loads(ADD), "index": "tag:x"}])),
    (PullAnswer, pull_page(changes=[json.loads(ADD), {**json.loads(ADD), "index": ["a", None]}])),
    (PullAnswer, pull_page(changes=[json.loads(ADD), {**json.loads(ADD), "key": 7}])),
    (PullAnswer, pull_page(changes=[json.loads(ADD), {**json.loads(ADD), "seq": 2.0}])),
    (PullAnswer, pull_page(changes=[json.loads(ADD), {**json.loads(ADD), "seq": False}])),
    (
        SnapshotAnswer,
        {
            "records": [{"key": "a", "index": [], "value": 1, "seq": 1}, {"key": "b", "seq": 2}],
            "at": CURSOR.encode(),
            "after": 0,
            "more": False,
        },
    ),
    (SnapshotAnswer, {"records": [], "at": CURSOR.encode(), "more": False}),
    (SnapshotAnswer, {"records": [], "at": "x.1", "after": 0, "more": False}),
    (SnapshotAnswer, {"records": [], "at": CURSOR.encode(), "after": -1, "more": False}),
    (SnapshotAnswer, {"records": [], "at": CURSOR.encode(), "after": 1.5, "more": False}),
    (SnapshotAnswer, {"records": [{"key": "k"}], "at": CURSOR.encode(), "after": 0, "more": 0}),
    (SnapshotAnswer, {"records": [{"key": "k"}], "at": CURSOR.encode(), "after": 0, "more": False}),
    (FindAnswer, {"records": None, "after": 0, "more": False}),
    (FindAnswer, {"records": [], "after": "0", "more": False}),
    (WaitAnswer, {"changed": []}),
    (WaitAnswer, {"changed": "notes", "errors": {}}),
    (WaitAnswer, {"changed": [1], "errors": {}}),
    (WaitAnswer, {"changed": [], "errors": {"a": "boom"}}),
    (WaitAnswer, {"changed": [], "errors": {"a": {"code": 410, "message": "m"}}}),
    (PushAnswer, {"outcome": []}),
    (PushAnswer, {"outcomes": [{"n": 1, "status": "fine"}]}),
    (PushAnswer, {"outcomes": [{"status": "applied", "seq": 1}]}),
]


@pytest.mark.parametrize(("kind", "obj"), MALFORMED, ids=lambda v: str(v)[:60])
def test_a_malformed_answer_raises_the_documented_error(kind: Any, obj: Any) -> None:
    with pytest.raises(MalformedAnswer) as caught:
        kind.parse(obj)
    assert isinstance(caught.value, PermanentError)
    assert caught.value.code == "malformed_answer"
    assert "malformed" in str(caught.value)


def test_a_push_answer_with_the_wrong_count_is_malformed() -> None:
    with pytest.raises(MalformedAnswer, match="1 outcomes for 2 changes"):
        PushAnswer.parse({"outcomes": [{"n": 1, "status": "applied", "seq": 1}]}, sent=2)


URL = "http://idsync.test"


@pytest.fixture
def client(tmp_path):
    policy = RetryPolicy(max_attempts=3, sleep=lambda s: None, rng=random.Random(1))
    with Client(tmp_path / "c.db", URL, retry=policy) as c:
        yield c


@responses.activate
def test_a_client_given_a_malformed_page_fails_cleanly_and_changes_nothing(client) -> None:
    notes = client.store("notes")
    bad = pull_page(cursor="not-a-cursor")
    responses.add(responses.GET, f"{URL}/v1/stores/notes/changes", json=bad)
    with pytest.raises(PermanentError) as caught:
        client.sync()
    assert caught.value.code == "malformed_answer"
    assert len(responses.calls) == 1  # a permanent error: not retried at once
    assert notes.get("k") is None
    assert client.db.cursor("notes") is None
    assert client.status.state == "online"  # the server answered
    assert "malformed" in (client.status.last_error or "")


@responses.activate
def test_a_client_given_a_malformed_snapshot_keeps_its_records(client) -> None:
    notes = client.store("notes")
    good = pull_page()
    responses.add(responses.GET, f"{URL}/v1/stores/notes/changes", json=good)
    client.sync()
    assert notes.get("k") is not None
    before = client.db.cursor("notes")
    responses.replace(
        responses.GET,
        f"{URL}/v1/stores/notes/changes",
        status=410,
        json={"error": {"code": "reset_required", "message": "m", "retryable": False}},
    )
    # The wait for all stores says "changed" without a page: the pull follows.
    responses.add(responses.POST, f"{URL}/v1/wait", json={"changed": ["notes"], "errors": {}})
    snapshot = {"records": [{"key": "z", "value": 1}], "at": CURSOR.encode(), "after": 0}
    responses.add(responses.GET, f"{URL}/v1/stores/notes/snapshot", json=snapshot)
    with pytest.raises(MalformedAnswer):
        client.sync()
    assert notes.get("k") is not None and notes.get("z") is None
    assert client.db.cursor("notes") == before


def test_the_server_answers_parse_as_their_types(server, api, store) -> None:
    from idsync_client.transport import HttpTransport

    from .conftest import add

    api.push(store, "writer", [add(1, "a", index=["tag:x"]), add(2, "b", index=["tag:xy"])])
    transport = HttpTransport(server.url)
    try:
        page = transport.pull(store, None)
        assert [c["key"] for c in page.changes] == ["a", "b"] and not page.more
        snap = transport.snapshot(store, None, 0)
        assert [r["key"] for r in snap.records] == ["a", "b"] and snap.at == page.cursor
        found = transport.find(store, "tag:x", prefix=True)
        assert sorted(r["key"] for r in found.records) == ["a", "b"]
        assert [r["key"] for r in transport.find(store, "tag:x").records] == ["a"]
        waited = transport.wait({store: None, "no-such-store": None}, 0)
        assert waited.changed == [store]
        assert waited.errors["no-such-store"].code == "store_not_found"
    finally:
        transport.close()
