"""The client against a server with users: token suppliers, 403s per store, rate limits."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from idsync_client import AuthError, Client, PermanentError, RetryPolicy, TemporaryError
from idsync_server_ref.process import ServerProcess

from .test_server_auth import make_users


def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not become true in time"
        time.sleep(0.02)


class Server:
    """A users-mode server and its tokens."""

    def __init__(self, proc: ServerProcess, tokens: dict[str, str | None]) -> None:
        self.proc = proc
        self.tokens = tokens
        self.session = requests.Session()
        self.session.trust_env = False

    def call(self, who: str, method: str, path: str, body: object = None) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        return self.session.request(
            method, self.proc.url + path, json=body, headers=headers, timeout=30
        )

    def keys(self, who: str, store: str) -> list[str]:
        response = self.call(who, "GET", f"/v1/stores/{store}/changes")
        assert response.status_code == 200, response.text
        return sorted(c["key"] for c in response.json()["changes"])


@pytest.fixture
def users_server(tmp_path: Path) -> Iterator[Server]:
    db = tmp_path / "server.sqlite3"
    tokens = make_users(db)
    with ServerProcess(db, "--rate-limit", "0") as proc:
        server = Server(proc, tokens)
        assert server.call("owner", "POST", "/v1/stores", {"name": "alice.notes"}).ok
        grant = server.call(
            "owner", "PUT", "/v1/stores/alice.notes/access/rita", {"role": "reader"}
        )
        assert grant.ok
        yield server
        server.session.close()


def test_a_token_supplier_is_asked_again_once_after_a_401(
    users_server: Server, tmp_path: Path
) -> None:
    handed: list[str] = []
    stale, fresh = users_server.tokens["revoked"], users_server.tokens["owner"]
    assert stale and fresh

    def supplier() -> str:
        token = stale if not handed else fresh  # the first one has been revoked
        handed.append(token)
        return token

    with Client(tmp_path / "c.sqlite3", users_server.proc.url, token=supplier) as client:
        key = client.store("alice.notes").add({"a": 1})
        client.sync()
    assert handed == [stale, fresh]
    assert users_server.keys("owner", "alice.notes") == [key]


def test_a_supplier_with_nothing_better_pauses_sync(users_server: Server, tmp_path: Path) -> None:
    calls: list[int] = []

    def supplier() -> str | None:
        calls.append(1)
        return users_server.tokens["expired"]

    with Client(tmp_path / "c.sqlite3", users_server.proc.url, token=supplier) as client:
        client.store("alice.notes").add({"a": 1})
        with pytest.raises(AuthError):
            client.sync()
        assert client.status.state == "auth_error" and len(calls) == 2
        client.set_token(users_server.tokens["owner"])
        client.sync()
        assert client.status.pending == 0


def test_a_supplier_that_fails_is_a_temporary_error_and_an_unusable_token_an_auth_error(
    users_server: Server, tmp_path: Path
) -> None:
    failing = [True]

    def supplier() -> str:
        if failing[0]:
            raise ZeroDivisionError("no token service")
        return "tök€n"

    policy = RetryPolicy(max_attempts=1)
    with Client(
        tmp_path / "c.sqlite3", users_server.proc.url, token=supplier, retry=policy
    ) as client:
        client.store("alice.notes").add({"a": 1})
        with pytest.raises(TemporaryError, match="token supplier failed") as failed:
            client.sync()
        assert isinstance(failed.value.__cause__, ZeroDivisionError)
        assert client.status.state == "offline"
        failing[0] = False
        with pytest.raises(AuthError, match="unusable token"):
            client.sync()
        assert client.status.state == "auth_error" and client.status.pending == 1
        client.set_token(users_server.tokens["owner"])
        client.sync()
        assert client.status.pending == 0


def test_background_sync_pauses_when_the_supplier_has_only_refused_tokens(
    users_server: Server, tmp_path: Path
) -> None:
    handed: list[str] = []

    def supplier() -> str:
        handed.append(f"idsync_{len(handed):043d}")  # well-formed, never issued
        return handed[-1]

    with Client(tmp_path / "c.sqlite3", users_server.proc.url, token=supplier) as client:
        client.store("alice.notes").add({"a": 1})
        client.start()
        wait_until(lambda: client.status.state == "auth_error")
        asked = len(handed)
        assert asked >= 2
        client.set_token(users_server.tokens["owner"])
        wait_until(lambda: client.status.pending == 0)
    assert len(users_server.keys("owner", "alice.notes")) == 1


def test_a_403_on_one_store_does_not_stop_the_others(users_server: Server, tmp_path: Path) -> None:
    # rita reads alice.notes (a push there is 403) and owns rita.mine.
    with Client(
        tmp_path / "c.sqlite3", users_server.proc.url, token=users_server.tokens["reader"]
    ) as client:
        client.store("alice.notes").add({"not": "allowed"})
        mine = client.store("rita.mine").add({"mine": True})
        with pytest.raises(PermanentError) as caught:
            client.sync()
        assert caught.value.code == "forbidden" and not isinstance(caught.value, AuthError)
        assert client.status.state != "auth_error"
        assert users_server.keys("reader", "rita.mine") == [mine]
        assert users_server.keys("owner", "alice.notes") == []  # nothing written
        # In the background too: the live channel and the pushes go on for rita.mine.
        client.start()
        later = client.store("rita.mine").add({"later": True})
        wait_until(lambda: later in users_server.keys("reader", "rita.mine"))
        pushed = users_server.call(
            "owner",
            "POST",
            "/v1/stores/alice.notes/push",
            {
                "client_id": "other",
                "changes": [{"n": 1, "op": "add", "key": "from-alice", "index": [], "value": {}}],
            },
        )
        assert pushed.ok
        wait_until(lambda: client.store("alice.notes").get("from-alice") is not None)
        assert client.status.state != "auth_error"


def test_a_store_one_may_not_see_is_set_aside_and_the_live_channel_goes_on(
    users_server: Server, tmp_path: Path
) -> None:
    sam = users_server.tokens["stranger"]
    assert users_server.call("stranger", "POST", "/v1/stores", {"name": "sam.own"}).ok
    with Client(tmp_path / "c.sqlite3", users_server.proc.url, token=sam, long_poll=2) as client:
        client.store("alice.notes")  # not visible to sam: 404, and creating it is 403
        own = client.store("sam.own")
        client.start()
        pushed = users_server.call(
            "stranger",
            "POST",
            "/v1/stores/sam.own/push",
            {
                "client_id": "other-device",
                "changes": [{"n": 1, "op": "add", "key": "news", "index": [], "value": {}}],
            },
        )
        assert pushed.ok
        wait_until(lambda: own.get("news") is not None)
        assert client.status.state != "auth_error"


def test_a_burst_over_the_rate_limit_gets_429_and_the_client_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "server.sqlite3"
    tokens = make_users(db)
    with ServerProcess(db, "--rate-limit", "20", "--rate-burst", "5") as proc:
        server = Server(proc, tokens)
        answers = [server.call("owner", "GET", "/v1/stores") for _ in range(15)]
        limited = [a for a in answers if a.status_code == 429]
        assert limited and answers[0].status_code == 200
        assert all(a.json()["error"]["code"] == "rate_limited" for a in limited)
        assert all(int(a.headers["Retry-After"]) >= 1 for a in limited)
        slept: list[float] = []

        def sleep(seconds: float) -> None:
            slept.append(seconds)
            time.sleep(seconds)

        policy = RetryPolicy(max_attempts=10, base_delay=0.05, max_delay=2.0, sleep=sleep)
        with Client(
            tmp_path / "c.sqlite3", proc.url, token=tokens["owner"], retry=policy, batch_size=3
        ) as client:
            notes = client.store("alice.limited")
            keys = [notes.add({"n": n}) for n in range(12)]
            client.sync()  # starts with the bucket empty
            assert client.status.pending == 0
        assert [s for s in slept if s >= 1.0], "the client did not wait for Retry-After"
        time.sleep(1.0)  # let the bucket refill before checking
        assert server.keys("owner", "alice.limited") == sorted(keys)


def test_refused_tokens_exhaust_the_address_before_any_look_up(tmp_path: Path) -> None:
    db = tmp_path / "server.sqlite3"
    tokens = make_users(db)
    with ServerProcess(db, "--rate-limit", "1", "--rate-burst", "3") as proc:
        server = Server(proc, {**tokens, "bad": "idsync_" + "x" * 43})
        statuses = [server.call("bad", "GET", "/v1/stores").status_code for _ in range(6)]
        assert statuses[:3] == [401, 401, 401] and 429 in statuses[3:]
        # The address is held back, good token or not, until its bucket refills.
        assert server.call("owner", "GET", "/v1/stores").status_code == 429
