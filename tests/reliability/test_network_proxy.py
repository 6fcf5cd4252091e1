"""The fault proxy does what each fault says, against a real server, and the
client survives each one alone: nothing lost, nothing applied twice."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest
import requests

from idsync_client import Client, RetryPolicy
from idsync_server_ref.process import ServerProcess

from ..conftest import Api, add
from .faultproxy import REQUEST_FAULTS, FaultPlan, FaultProxy
from .setcheck import Ledger, check


@pytest.fixture
def proxy(server: ServerProcess) -> FaultProxy:
    with FaultProxy(("127.0.0.1", server.port), seed=1) as proxy:
        yield proxy


def _http() -> requests.Session:
    http = requests.Session()
    http.trust_env = False
    return http


def _push(http: requests.Session, url: str, store: str, key: str) -> requests.Response:
    body = {"client_id": f"raw-{key}", "changes": [add(1, key)]}
    return http.post(f"{url}/v1/stores/{store}/push", json=body, timeout=(1, 1))


def _logged(api: Api, store: str) -> list[str]:
    changes, _ = api.pull_all(store)
    return [c["key"] for c in changes]


def test_a_clean_proxy_relays_requests_on_one_kept_alive_connection(proxy, api, store) -> None:
    http = _http()
    for _ in range(3):
        assert http.get(f"{proxy.url}/v1/health", timeout=5).status_code == 200
    key = str(uuid.uuid4())
    assert _push(http, proxy.url, store, key).status_code == 200
    assert _logged(api, store) == [key]
    assert proxy.connections == 1 and proxy.requests == 4 and proxy.injected == 0


def test_each_fault_does_what_it_says(proxy, api, store) -> None:
    http = _http()
    proxy.force("refuse")
    with pytest.raises(requests.ConnectionError):
        http.get(f"{proxy.url}/v1/health", timeout=5)

    # Reset mid-request: the server never gets a whole push.
    cut = str(uuid.uuid4())
    proxy.force("reset_request")
    with pytest.raises(requests.ConnectionError):
        _push(_http(), proxy.url, store, cut)

    # The answer lost after the commit: the client errs, the server has it.
    lost = str(uuid.uuid4())
    proxy.force("lose_answer")
    with pytest.raises(requests.ConnectionError):
        _push(_http(), proxy.url, store, lost)

    # Part of the answer, then the connection goes.
    half = str(uuid.uuid4())
    proxy.force("cut_response")
    with pytest.raises((requests.ConnectionError, requests.exceptions.ChunkedEncodingError)):
        _push(_http(), proxy.url, store, half)

    # A black hole: the client's read timeout ends it.
    proxy.force("black_hole")
    with pytest.raises(requests.ReadTimeout):
        _http().get(f"{proxy.url}/v1/health", timeout=(1, 0.5))

    proxy.force("delay")
    assert _http().get(f"{proxy.url}/v1/health", timeout=5).status_code == 200

    assert _logged(api, store) == [lost, half]
    assert {k: proxy.counts[k] for k in ("refuse", *REQUEST_FAULTS)} == dict.fromkeys(
        ("refuse", *REQUEST_FAULTS), 1
    )


def test_a_link_down_refuses_connects_and_resets_open_ones_then_comes_back(proxy) -> None:
    http = _http()
    assert http.get(f"{proxy.url}/v1/health", timeout=5).status_code == 200
    port = proxy.port
    proxy.down()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with pytest.raises(requests.ConnectionError):
        http.get(f"{proxy.url}/v1/health", timeout=5)  # the kept-alive one was reset
    proxy.up()
    assert proxy.port == port
    assert http.get(f"{proxy.url}/v1/health", timeout=5).status_code == 200
    assert proxy.counts["link_down"] == 1


def test_a_plan_with_more_than_certainty_is_refused() -> None:
    with pytest.raises(ValueError):
        FaultPlan(lose_answer=0.6, black_hole=0.6)


@pytest.mark.parametrize("kind", REQUEST_FAULTS)
def test_the_client_survives_each_fault_on_its_push(
    kind: str, proxy, server, store, tmp_path: Path
) -> None:
    ledger = Ledger()
    policy = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05)
    with Client(tmp_path / "a.db", proxy.url, retry=policy, timeouts=(1.0, 1.0)) as client:
        notes = client.store(store)
        client.sync()  # the store and the limits are known: the next request is a push
        for i in range(3):
            ledger.added(store, notes.add({"i": i}), {"i": i})
        proxy.force(kind)
        client.sync()
        assert proxy.counts[kind] == 1
        assert client.status.pending == 0 and client.rejected() == []
    found = check(ledger, server.url, [store], clients=[tmp_path / "a.db"])
    assert found.ok, found.problems
