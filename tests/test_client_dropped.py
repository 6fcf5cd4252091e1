"""A store dropped on the server stays dropped for the client: never a reset,
never re-created by sync; the other stores go on; recreate_store() brings it
back with this client's records."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest

from idsync_client import Client, ResetRequired, StoreDropped
from idsync_client.transport import HttpTransport

from .conftest import Api, fast_policy, live_keys


def fresh(api: Api) -> str:
    name = f"d-{uuid.uuid4().hex[:10]}"
    api.create_store(name)
    return name



def still_dropped(api: Api, store: str) -> bool:
    response = api.call("GET", f"/v1/stores/{store}")
    return response.status_code == 410 and response.json()["error"]["code"] == "store_dropped"


def until(condition: Callable[[], bool], seconds: float = 15.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def test_transport_raises_store_dropped_not_reset(server, api: Api) -> None:
    name = fresh(api)
    epoch = api.call("GET", f"/v1/stores/{name}").json()["epoch"]
    assert api.call("DELETE", f"/v1/stores/{name}").status_code in (200, 204)
    transport = HttpTransport(server.url)
    for call in (
        lambda: transport.pull(name, None),
        lambda: transport.snapshot(name, None, 0),
        lambda: transport.push(name, "c", []),
        lambda: transport.create_store(name),
    ):
        with pytest.raises(StoreDropped) as caught:
            call()
        assert not isinstance(caught.value, ResetRequired)
        assert caught.value.code == "store_dropped"
        assert caught.value.epoch == epoch
    assert still_dropped(api, name)


def test_foreground_sync_stops_a_dropped_store_and_recreate_brings_it_back(
    tmp_path, server, api: Api
) -> None:
    gone, kept = fresh(api), fresh(api)
    with Client(tmp_path / "a.db", server.url, retry=fast_policy()) as client:
        synced = client.store(gone).add({"v": "synced"})
        client.store(kept).add({"v": 1})
        client.sync()
        assert api.call("DELETE", f"/v1/stores/{gone}").status_code in (200, 204)
        pending = client.store(gone).add({"v": "pending"})
        other = client.store(kept).add({"v": 2})

        with pytest.raises(StoreDropped):
            client.sync()
        # Not re-created, not reset; the other store went on.
        assert still_dropped(api, gone)
        assert client.status.dropped == (gone,)
        assert client.status.resets == 0
        assert other in live_keys(api, kept)
        # The dropped store's data stays in the file, its change still pending.
        assert client.db.pending_count(gone) == 1
        assert client.store(gone).get(synced) is not None
        assert client.store(gone).get(pending) is not None

        # Later rounds leave it alone (no request for it) and succeed.
        client.store(kept).add({"v": 3})
        report = client.sync()
        assert report.pushed == 1
        assert still_dropped(api, gone)
        assert client.status.dropped == (gone,)
        assert client.flush(5.0) is False  # its pending change is not sent
        assert still_dropped(api, gone)

        report = client.recreate_store(gone)
        assert client.status.dropped == ()
        assert live_keys(api, gone) == {synced, pending}
        assert client.db.pending_count(gone) == 0
        assert report.resent == 1  # the change acknowledged before the drop
        client.store(gone).add({"v": "after"})
        client.sync()
        assert len(live_keys(api, gone)) == 3


def test_background_sync_sets_a_dropped_store_aside_for_good(tmp_path, server, api: Api) -> None:
    gone, kept = fresh(api), fresh(api)
    client = Client(tmp_path / "b.db", server.url, retry=fast_policy(), long_poll=1.0)
    try:
        client.store(gone).add({"v": "synced"})
        client.store(kept).add({"v": 1})
        client.sync()
        client.start()
        assert api.call("DELETE", f"/v1/stores/{gone}").status_code in (200, 204)
        client.store(gone).add({"v": "pending"})
        assert until(lambda: client.status.dropped == (gone,))
        key = client.store(kept).add({"v": 2})
        assert until(lambda: key in live_keys(api, kept))
        # A few rounds later the store is still dropped and its change still pending.
        later = client.store(kept).add({"v": 3})
        assert until(lambda: later in live_keys(api, kept))
        assert still_dropped(api, gone)
        assert client.db.pending_count(gone) == 1
        assert client.status.resets == 0

        client.recreate_store(gone)
        assert len(live_keys(api, gone)) == 2
        after = client.store(gone).add({"v": "after"})
        assert until(lambda: after in live_keys(api, gone))
    finally:
        client.close()


def test_a_dropped_store_seen_in_the_live_wait(tmp_path, server, api: Api) -> None:
    """The drop arrives as a store error in the /v1/wait answer (nothing pending)."""
    gone, kept = fresh(api), fresh(api)
    client = Client(tmp_path / "c.db", server.url, retry=fast_policy(), long_poll=1.0)
    try:
        client.store(gone).add({"v": 1})
        client.store(kept).add({"v": 1})
        client.sync()
        client.start()
        assert until(lambda: client.status.state == "online")
        assert api.call("DELETE", f"/v1/stores/{gone}").status_code in (200, 204)
        assert until(lambda: client.status.dropped == (gone,))
        assert still_dropped(api, gone)
        key = client.store(kept).add({"v": 2})
        assert until(lambda: key in live_keys(api, kept))
    finally:
        client.close()
