"""Every public write refuses, at the call and with nothing written, what the
server would refuse at sync (a write lost later is worse than an error now)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from idsync_client import Client, RetryPolicy
from idsync_client.protocol import ProtocolViolation
from idsync_client.store import Store
from idsync_client.testing import ServerProcess

LONG = "e" * 300  # the index item alone is over max_index_item_length (256)

BAD_WRITES: dict[str, Callable[[Store], Any]] = {
    "set_attr NUL entity": lambda s: s.set_attr("a\x00b", "title", 1),
    "set_attr NUL name": lambda s: s.set_attr("note", "ti\x00tle", 1),
    "set_attr long entity": lambda s: s.set_attr(LONG, "title", 1),
    "set_attr long name": lambda s: s.set_attr("note", LONG, 1),
    "delete_attr NUL entity": lambda s: s.delete_attr("a\x00b", "title"),
    "delete_attr long name": lambda s: s.delete_attr("note", LONG),
    "get_attr NUL entity": lambda s: s.get_attr("a\x00b", "title"),
    "attrs long entity": lambda s: s.attrs(LONG),
    "attrs NUL entity": lambda s: s.attrs("a\x00b"),
    "add NUL index": lambda s: s.add(1, index=["a\x00b"]),
    "add long index": lambda s: s.add(1, index=[LONG]),
    "add_many long index": lambda s: s.add_many([{"value": 1}, {"value": 2, "index": [LONG]}]),
    # A plain record there would count as an attribute value or a deletion.
    "add attribute item": lambda s: s.add({"title": "x"}, index=["@attr:note/title"]),
    "add deleted item": lambda s: s.add("junk", index=["tag", "@deleted:note"]),
    "add_many attribute item": lambda s: s.add_many([{"value": 1, "index": ["@attr:a/b"]}]),
}


@pytest.mark.parametrize("name", sorted(BAD_WRITES))
def test_refused_at_the_call_and_nothing_written(
    name: str, tmp_path: Path, server: ServerProcess
) -> None:
    with Client(
        tmp_path / "c.db", server.url, retry=RetryPolicy(max_attempts=2, sleep=lambda s: None)
    ) as client:
        store = client.store(f"v{uuid.uuid4().hex[:12]}")
        with pytest.raises(ProtocolViolation):
            BAD_WRITES[name](store)
        assert len(store) == 0
        assert client.status.pending == 0
        report = client.sync()
        assert report.rejected == [] and client.rejected() == []


def test_attribute_at_the_length_limit_syncs(tmp_path: Path, server: ServerProcess) -> None:
    entity = "e" * (256 - len("@attr:") - len("/t"))  # the item is exactly 256 characters
    with Client(tmp_path / "c.db", server.url) as client:
        store = client.store(f"v{uuid.uuid4().hex[:12]}")
        store.set_attr(entity, "t", 1)
        report = client.sync()
        assert report.pushed == 1 and report.rejected == []
        assert store.get_attr(entity, "t") == 1
