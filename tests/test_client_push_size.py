"""Push batches fit the server's limits; any 413 splits; one oversize change blocks nothing."""

from __future__ import annotations

import json
import random

import responses

from idsync_client import Client, RetryPolicy
from idsync_client.testing import ServerProcess

URL = "http://idsync.test"
PUSH = f"{URL}/v1/stores/notes/push"
CHANGES = f"{URL}/v1/stores/notes/changes"
HEALTH = f"{URL}/v1/health"
WAIT = f"{URL}/v1/wait"


def fast_policy() -> RetryPolicy:
    return RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.05, rng=random.Random(3))


def empty_pull(request):
    return 200, {}, json.dumps({"changes": [], "cursor": "0123456789abcdef.0", "more": False})


def test_a_batch_over_the_http_layer_limit_does_not_wedge_the_outbox(tmp_path) -> None:
    # The server's own limit is 100 kB; its HTTP layer refuses bodies past
    # ~1.2 MB with a plain-text 413, as a proxy would.
    with (
        ServerProcess(tmp_path / "s.db", "--max-body-bytes", "100000") as server,
        Client(tmp_path / "c.db", server.url, retry=fast_policy()) as client,
    ):
        notes = client.store("notes")
        keys = [notes.add({"text": "x" * 60_000}) for _ in range(30)]  # 1.8 MB in all
        too_big = notes.add({"text": "y" * 150_000})  # alone over 100 kB
        keys.append(notes.add({"small": True}))
        report = client.sync()
        assert report.pushed == 31
        assert client.status.pending == 0
        [rejection] = client.rejected()
        assert (rejection.key, rejection.code) == (too_big, "body_too_large")
        assert "100000 byte limit" in rejection.message
        assert notes.get(too_big) is None, "its local effect is undone"
        later = notes.add({"later": 1})
        assert client.sync().pushed == 1
        pulled = Client(tmp_path / "other.db", server.url)
        with pulled:
            pulled.store("notes")
            pulled.sync()
            assert {r.key for r in pulled.store("notes")} == {*keys, later}


def _plain_413_push(limit: int, sizes: list[int]):
    def handler(request):
        sizes.append(len(request.body))
        if len(request.body) > limit:
            return 413, {"Content-Type": "text/plain"}, "Request Entity Too Large"
        body = json.loads(request.body)
        outcomes = [
            {"n": c["n"], "status": "applied", "seq": c["n"]} for c in body["changes"]
        ]
        return 200, {}, json.dumps({"outcomes": outcomes})

    return handler


@responses.activate
def test_a_plain_text_413_splits_the_batch(tmp_path) -> None:
    sizes: list[int] = []
    responses.add(responses.GET, HEALTH, status=404, body="not found")  # an older server
    responses.add_callback(responses.POST, PUSH, callback=_plain_413_push(400, sizes))
    responses.add_callback(responses.GET, CHANGES, callback=empty_pull)
    with Client(tmp_path / "c.db", URL, retry=fast_policy()) as client:
        notes = client.store("notes")
        for i in range(8):
            notes.add({"i": i, "pad": "p" * 60})
        lone = notes.add({"pad": "z" * 600})  # no batch can carry it
        notes.add({"after": True})
        report = client.sync()
        assert report.pushed == 9 and client.status.pending == 0
        assert [r.key for r in client.rejected()] == [lone]
        assert client.rejected()[0].code == "body_too_large"
        assert any(size > 400 for size in sizes), "a refused batch was tried"


@responses.activate
def test_batches_follow_the_limits_the_server_advertises(tmp_path) -> None:
    sizes: list[int] = []
    responses.add(
        responses.GET,
        HEALTH,
        json={"status": "ok", "limits": {"max_batch": 3, "max_body_bytes": 10_000}},
    )
    responses.add_callback(responses.POST, PUSH, callback=_plain_413_push(10_000, sizes))
    responses.add_callback(responses.GET, CHANGES, callback=empty_pull)
    # A store with a cursor hears its news from one wait for all stores.
    responses.add(responses.POST, WAIT, json={"changed": [], "errors": {}, "pages": {}})
    with Client(tmp_path / "c.db", URL, retry=fast_policy()) as client:
        notes = client.store("notes")
        for i in range(7):
            notes.add({"i": i})
        client.sync()
        notes.add({"i": 7})
        client.sync()
        pushes = [json.loads(c.request.body) for c in responses.calls if "push" in c.request.url]
        assert [len(p["changes"]) for p in pushes] == [3, 3, 1, 1]
        health = [c for c in responses.calls if c.request.url.endswith("/v1/health")]
        assert len(health) == 1, "the limits are asked once per client"
