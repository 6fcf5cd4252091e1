"""Each row of the retry classification table, with exact HTTP failures (responses)."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import requests
import responses

from idsync_client import (
    AuthError,
    Client,
    PermanentError,
    RetryBudget,
    RetryPolicy,
    TemporaryError,
)
from idsync_client.errors import CLASSIFICATION, ResetRequired, classify_status

URL = "http://idsync.test"
PUSH = f"{URL}/v1/stores/notes/push"
CHANGES = f"{URL}/v1/stores/notes/changes"
SNAPSHOT = f"{URL}/v1/stores/notes/snapshot"


def envelope(code: str, retryable: bool = False, **details) -> dict:
    return {
        "error": {
            "code": code,
            "message": code.replace("_", " "),
            "retryable": retryable,
            "details": details,
        }
    }


def sync_calls() -> list:
    """Requests made, without the one-off GET /v1/health the client asks limits with."""
    return [c for c in responses.calls if not c.request.url.endswith("/v1/health")]


class FakeSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def sleeps() -> FakeSleep:
    return FakeSleep()


@pytest.fixture
def client(tmp_path, sleeps):
    policy = RetryPolicy(
        max_attempts=4, base_delay=0.5, max_delay=8, sleep=sleeps, rng=random.Random(7)
    )
    with Client(tmp_path / "c.db", URL, retry=policy) as c:
        yield c


# Like a real server, never two changes at one seq (a client takes a change
# logged at a seq it knows another one at for a restored server).
_SEQS = itertools.count(1)


def ok_push(request):
    body = json.loads(request.body)
    outcomes = [{"n": c["n"], "status": "applied", "seq": next(_SEQS)} for c in body["changes"]]
    return 200, {}, json.dumps({"outcomes": outcomes})


def empty_pull(request):
    return 200, {}, json.dumps({"changes": [], "cursor": "0123456789abcdef.0", "more": False})


@pytest.mark.parametrize(
    "failure",
    [
        requests.ConnectionError("refused"),
        requests.ConnectTimeout("connect timeout"),
        requests.ReadTimeout("read timeout"),
        408,
        429,
        500,
        502,
        503,
        504,
        507,
    ],
    ids=str,
)
@responses.activate
def test_temporary_failures_are_retried(client, sleeps, failure) -> None:
    if isinstance(failure, Exception):
        responses.add(responses.POST, PUSH, body=failure)
    else:
        responses.add(responses.POST, PUSH, status=failure, json=envelope("x", True))
    responses.add_callback(responses.POST, PUSH, callback=ok_push)
    responses.add_callback(responses.GET, CHANGES, callback=empty_pull)
    client.store("notes").add({"a": 1})
    report = client.sync()
    assert report.pushed == 1 and client.status.pending == 0
    assert len(sleeps.calls) == 1, "exactly one retry"
    assert client.status.state == "online"


@pytest.mark.parametrize("status", [400, 404, 409, 501])
@responses.activate
def test_permanent_failures_are_not_retried(client, sleeps, status) -> None:
    responses.add(responses.POST, PUSH, status=status, json=envelope("invalid_request"))
    client.store("notes").add({"a": 1})
    with pytest.raises(PermanentError) as caught:
        client.sync()
    assert caught.value.status == status
    assert sleeps.calls == []
    assert len(sync_calls()) == 1
    assert client.status.pending == 1, "the change stays in the outbox"


@responses.activate
def test_auth_failures_pause_and_are_not_retried(client, sleeps) -> None:
    responses.add(responses.POST, PUSH, status=401, json=envelope("unauthorized"))
    client.store("notes").add({"a": 1})
    with pytest.raises(AuthError):
        client.sync()
    assert client.status.state == "auth_error"
    assert sleeps.calls == [] and len(sync_calls()) == 1


@responses.activate
def test_a_403_is_that_stores_refusal_not_a_pause(client, sleeps) -> None:
    responses.add(responses.POST, PUSH, status=403, json=envelope("forbidden"))
    client.store("notes").add({"a": 1})
    with pytest.raises(PermanentError) as caught:
        client.sync()
    assert not isinstance(caught.value, AuthError) and caught.value.code == "forbidden"
    assert client.status.state != "auth_error"
    assert sleeps.calls == [] and len(sync_calls()) == 1


@responses.activate
def test_retry_after_is_honoured(client, sleeps) -> None:
    responses.add(
        responses.POST,
        PUSH,
        status=503,
        json=envelope("storage_busy", True),
        headers={"Retry-After": "7"},
    )
    responses.add(
        responses.POST,
        PUSH,
        status=429,
        json=envelope("rate_limited", True),
        headers={"Retry-After": "3"},
    )
    responses.add_callback(responses.POST, PUSH, callback=ok_push)
    responses.add_callback(responses.GET, CHANGES, callback=empty_pull)
    client.store("notes").add({"a": 1})
    client.sync()
    assert sleeps.calls[0] >= 7 and sleeps.calls[1] >= 3


@responses.activate
def test_gives_up_after_max_attempts(client, sleeps) -> None:
    responses.add(responses.POST, PUSH, status=503, json=envelope("storage_busy", True))
    client.store("notes").add({"a": 1})
    with pytest.raises(TemporaryError):
        client.sync()
    assert len(sync_calls()) == 4 and len(sleeps.calls) == 3
    assert client.status.state == "offline" and "503" in client.status.last_error


def test_backoff_is_capped_exponential_with_full_jitter() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=10.0, rng=random.Random(1))
    for attempt in range(1, 10):
        ceiling = min(10.0, 2 ** (attempt - 1))
        delays = [policy.delay(attempt, None) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert min(delays) < ceiling * 0.2 and max(delays) > ceiling * 0.8  # spread: full jitter


def test_retry_budget_stops_a_retry_storm() -> None:
    budget = RetryBudget(capacity=10, retry_cost=5)
    calls = []
    policy = RetryPolicy(max_attempts=10, budget=budget, sleep=lambda s: None)

    def down():
        calls.append(1)
        raise TemporaryError("down")

    with pytest.raises(TemporaryError):
        policy.call(down)
    assert len(calls) == 3, "two retries paid for, then the budget is empty"
    with pytest.raises(TemporaryError):
        policy.call(down)
    assert len(calls) == 4, "no retry at all with an empty budget"
    budget.earn()
    assert budget.tokens == 1


@responses.activate
def test_batch_too_large_is_split(tmp_path, sleeps) -> None:
    sizes = []

    def push(request):
        changes = json.loads(request.body)["changes"]
        sizes.append(len(changes))
        if len(changes) > 2:
            return 413, {}, json.dumps(envelope("batch_too_large"))
        return ok_push(request)

    responses.add_callback(responses.POST, PUSH, callback=push)
    responses.add_callback(responses.GET, CHANGES, callback=empty_pull)
    with Client(tmp_path / "c.db", URL, retry=RetryPolicy(sleep=sleeps)) as client:
        client.store("notes").add_many([{"value": i} for i in range(5)])
        assert client.sync().pushed == 5
    assert sizes == [5, 2, 3, 1, 2]  # halves until each part fits


@responses.activate
def test_invalid_change_is_rejected_and_the_rest_goes_through(tmp_path, sleeps) -> None:
    def push(request):
        changes = json.loads(request.body)["changes"]
        bad = [c for c in changes if c.get("value") == "bad"]
        if bad:
            return 422, {}, json.dumps(envelope("invalid_change", n=bad[0]["n"]))
        return ok_push(request)

    responses.add_callback(responses.POST, PUSH, callback=push)
    responses.add_callback(responses.GET, CHANGES, callback=empty_pull)
    with Client(tmp_path / "c.db", URL, retry=RetryPolicy(sleep=sleeps)) as client:
        notes = client.store("notes")
        notes.add("good")
        bad_key = notes.add("bad")
        notes.add("good too")
        report = client.sync()
        assert report.pushed == 2 and [r.key for r in report.rejected] == [bad_key]
        assert notes.get(bad_key) is None, "the rejected add is undone locally"
        [rejection] = client.rejected()
        assert rejection.code == "invalid_change" and rejection.value == "bad"
        assert client.status.rejected == 1
        assert client.dismiss(rejection.id) and client.rejected() == []
        assert client.status.rejected == 0


@responses.activate
def test_reset_required_reloads_the_snapshot(tmp_path, sleeps) -> None:
    responses.add(responses.GET, CHANGES, status=410, json=envelope("reset_required"))
    responses.add(
        responses.GET,
        SNAPSHOT,
        json={
            "records": [{"key": "s1", "index": ["tag:a"], "value": 1, "seq": 4}],
            "at": "0123456789abcdef.9",
            "after": 4,
            "more": False,
        },
    )
    responses.add_callback(
        responses.GET,
        CHANGES,
        callback=lambda r: (
            200,
            {},
            json.dumps({"changes": [], "cursor": "0123456789abcdef.9", "more": False}),
        ),
    )
    with Client(tmp_path / "c.db", URL, retry=RetryPolicy(sleep=sleeps)) as client:
        notes = client.store("notes")
        report = client.sync()
        assert report.resets == 1
        assert notes.get("s1").value == 1 and [r.key for r in notes.find("tag:a")] == ["s1"]
        assert client.db.cursor("notes") == "0123456789abcdef.9"


@responses.activate
def test_backoff_hint_is_obeyed(client, sleeps) -> None:
    responses.add_callback(
        responses.POST, PUSH, callback=lambda r: (200, {"Idsync-Backoff": "30"}, ok_push(r)[2])
    )
    client.store("notes").add(1)
    client.store("notes").add(2)
    engine = client._engine
    engine.batch_size = 1
    with pytest.raises(TemporaryError):
        engine.push("notes")
    assert len(sync_calls()) == 1, "no request while the hint lasts"
    assert sleeps.calls and all(s >= 8 for s in sleeps.calls)  # waits the hint (capped)


def test_classification_table_matches_the_code() -> None:
    assert classify_status(408) is TemporaryError and classify_status(429) is TemporaryError
    assert classify_status(503) is TemporaryError and classify_status(501) is PermanentError
    assert classify_status(401) is AuthError and classify_status(410) is ResetRequired
    assert classify_status(404) is PermanentError
    with open("docs/client.md") as doc:
        text = doc.read()
    for rule in CLASSIFICATION:
        assert rule.what in text, f"docs/client.md lacks the row {rule.what!r}"


def test_a_single_attempt_runs_without_tenacity_and_keeps_the_budget(monkeypatch) -> None:
    from idsync_client import retry

    def no_loop(*args: object, **kwargs: object) -> None:
        raise AssertionError("a retry loop for a single attempt")

    monkeypatch.setattr(retry.tenacity, "Retrying", no_loop)
    policy = RetryPolicy(max_attempts=5, sleep=lambda s: None)
    calls: list[int] = []

    def failing() -> None:
        calls.append(1)
        raise TemporaryError("down")

    with pytest.raises(TemporaryError, match="down"):
        policy.call(failing, max_attempts=1)
    assert calls == [1], "tried once"
    assert policy.budget.tokens == policy.budget.capacity - policy.budget.retry_cost
    assert policy.call(lambda: "ok", max_attempts=1) == "ok"
    assert policy.budget.tokens == policy.budget.capacity - policy.budget.retry_cost + 1
    with pytest.raises(PermanentError):
        policy.call(lambda: (_ for _ in ()).throw(PermanentError("no")), max_attempts=1)
    assert policy.budget.tokens == policy.budget.capacity - policy.budget.retry_cost + 1
