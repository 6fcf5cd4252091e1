"""Client arguments are checked first: a bad one is a TypeError or ValueError
naming it, and nothing is created on disk nor any thread started."""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import pytest

from idsync_client import Client
from idsync_client.testing import ServerProcess

BAD: list[tuple[str, dict[str, Any], type[Exception]]] = [
    ("ftp server", {"server": "ftp://x"}, ValueError),
    ("server without host", {"server": "http://"}, ValueError),
    ("server not a string", {"server": 5}, TypeError),
    ("token int", {"server": "http://127.0.0.1:9", "token": 5}, TypeError),
    ("token with a line break", {"server": "http://127.0.0.1:9", "token": "a\nb"}, ValueError),
    ("token empty", {"server": "http://127.0.0.1:9", "token": ""}, ValueError),
    # An HTTP header carries Latin-1 at most; requests would fail at send time.
    ("token with a euro sign", {"server": "http://127.0.0.1:9", "token": "abc€"}, ValueError),
    ("token with an accent", {"server": "http://127.0.0.1:9", "token": "tökén"}, ValueError),
    ("token with a space", {"server": "http://127.0.0.1:9", "token": "a b"}, ValueError),
    ("server with a space", {"server": "http://exa mple.com"}, ValueError),
    ("server with a newline", {"server": "http://127.0.0.1:9\n"}, ValueError),
    ("limits str", {"limits": "x"}, TypeError),
    ("retry str", {"retry": "x"}, TypeError),
    ("long_poll negative", {"long_poll": -1}, ValueError),
    ("long_poll zero", {"long_poll": 0}, ValueError),
    ("long_poll nan", {"long_poll": math.nan}, ValueError),
    ("long_poll inf", {"long_poll": math.inf}, ValueError),
    ("long_poll str", {"long_poll": "10"}, TypeError),
    ("synchronous unknown", {"synchronous": "SOMETIMES"}, ValueError),
    ("synchronous int", {"synchronous": 2}, TypeError),
    ("batch_size zero", {"batch_size": 0}, ValueError),
    ("batch_size float", {"batch_size": 1.5}, TypeError),
    ("create_stores str", {"create_stores": "no"}, TypeError),
]


@pytest.mark.parametrize(("what", "kwargs", "error"), BAD, ids=[b[0] for b in BAD])
def test_bad_argument_is_refused_before_the_disk_is_touched(
    tmp_path: Path, what: str, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    folder = tmp_path / "profile"
    folder.mkdir()
    with pytest.raises(error):
        Client(folder / "c.db", **kwargs)
    assert list(folder.iterdir()) == []


def test_a_long_poll_above_the_server_maximum_is_clamped(
    tmp_path: Path, server: ServerProcess
) -> None:
    with Client(tmp_path / "c.db", server.url, long_poll=3600) as client:
        client.store("s").add("v")
        client.start()
        assert client.flush(5)
        deadline = threading.Event()
        # The wait is held within the server's max: the state reaches online, no error.
        for _ in range(50):
            if client.status.state == "online":
                break
            deadline.wait(0.1)
        assert client.status.state == "online", client.status
        assert client.status.last_error is None


def _idsync_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("idsync") and t.is_alive()]


@pytest.mark.parametrize("bad", ["5", -1, math.nan, True])
def test_close_and_flush_refuse_a_bad_timeout_before_starting_anything(
    tmp_path: Path, server: ServerProcess, bad: Any
) -> None:
    before = set(_idsync_threads())
    client = Client(tmp_path / "c.db", server.url)
    try:
        client.store("s").add("v")
        with pytest.raises((TypeError, ValueError)):
            client.flush(bad)
        with pytest.raises((TypeError, ValueError)):
            client.close(flush_timeout=bad)
        assert set(_idsync_threads()) <= before  # no flush thread was started
        assert client.status.state != "closed"
        client.store("s").add("w")  # still open
    finally:
        client.close()


def test_a_flush_timeout_beyond_what_the_platform_waits_counts_as_the_longest_wait(
    tmp_path: Path, server: ServerProcess
) -> None:
    with Client(tmp_path / "c.db", server.url) as client:
        client.store("s").add("v")
        assert client.flush(10**20) and client.flush(1e10)
    assert not [t for t in _idsync_threads() if t == "idsync-flush"]


def test_set_token_follows_the_token_rule(tmp_path: Path, server: ServerProcess) -> None:
    with Client(tmp_path / "c.db", server.url) as client:
        for bad in ("tök€n", "a\tb", ""):
            with pytest.raises(ValueError):
                client.set_token(bad)
        client.set_token("visible-ascii_token.1~+/=")
