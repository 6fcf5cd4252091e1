"""Whole-entity delete: one local transaction, and a marker every client
honours, so attribute records set offline by a device that had not seen the
delete are removed everywhere."""

from __future__ import annotations

import pytest

from idsync_client import Client

from .conftest import Api, fast_policy


def live_attribute_records(api: Api, store: str, entity: str) -> list[dict]:
    found: list[dict] = []
    after, more = 0, True
    while more:
        page = api.call("GET", f"/v1/stores/{store}/snapshot", params={"after": after}).json()
        found += [
            r for r in page["records"] if any(i.startswith(f"@attr:{entity}/") for i in r["index"])
        ]
        after, more = page["after"], page["more"]
    return found


def test_delete_entity_locally(tmp_path) -> None:
    with Client(tmp_path / "local.db") as client:
        notes = client.store("notes")
        notes.set_attr("n1", "title", "one")
        notes.set_attr("n1", "body", "text")
        notes.set_attr("n2", "title", "two")
        events = []
        notes.subscribe(events.append)
        assert notes.delete_entity("n1") is True
        assert notes.entities() == ["n2"]
        assert notes.attrs("n1") == {}
        assert notes.get_attr("n1", "title", "gone") == "gone"
        # One event: the marker added and both attribute records deleted at once.
        assert len(events) == 1 and len(events[0].deleted) == 2 and len(events[0].added) == 1
        with pytest.raises(ValueError, match="deleted"):
            notes.set_attr("n1", "title", "again")
        assert notes.delete_entity("n1") is False
        assert notes.attrs("n2") == {"title": "two"}
        with pytest.raises(ValueError):
            notes.delete_entity("a/b")


@pytest.mark.parametrize("first", ["deleter", "editor"])
def test_an_offline_edit_of_a_deleted_entity_is_removed_everywhere(
    tmp_path, server, api: Api, store: str, first: str
) -> None:
    a = Client(tmp_path / "a.db", server.url, retry=fast_policy())
    b = Client(tmp_path / "b.db", server.url, retry=fast_policy())
    try:
        a.store(store).set_attr("e1", "title", "v1")
        a.store(store).set_attr("e2", "title", "kept")
        a.sync()
        b.store(store)
        b.sync()
        assert b.store(store).attrs("e1") == {"title": "v1"}
        # Both offline: A deletes the entity, B edits it and adds an attribute.
        assert a.store(store).delete_entity("e1")
        b.store(store).set_attr("e1", "title", "v2")
        b.store(store).set_attr("e1", "colour", "red")
        order = [a, b] if first == "deleter" else [b, a]
        for client in order + order:  # each syncs twice: sends, then sees the other's
            client.sync()
        for client in (a, b):
            assert client.store(store).entities() == ["e2"]
            assert client.store(store).attrs("e1") == {}
            assert client.db.pending_count(store) == 0
            assert client.rejected() == []
        assert live_attribute_records(api, store, "e1") == []
        assert len(live_attribute_records(api, store, "e2")) == 1
    finally:
        a.close()
        b.close()


def test_a_client_that_first_syncs_after_the_delete_never_shows_the_entity(
    tmp_path, server, api: Api, store: str
) -> None:
    with Client(tmp_path / "a.db", server.url, retry=fast_policy()) as a:
        a.store(store).set_attr("e1", "title", "v1")
        a.sync()
        a.store(store).delete_entity("e1")
        a.sync()
    with Client(tmp_path / "b.db", server.url, retry=fast_policy()) as b:
        b.store(store)
        b.sync()
        assert b.store(store).entities() == []
        assert b.store(store).attrs("e1") == {}


def test_a_record_another_program_put_under_an_attribute_item_is_read_without_failing(
    tmp_path, server, api: Api, store: str
) -> None:
    """Another program (not this library) logs a plain value under
    ``@attr:x/y``: the entity is listed, its attribute read, nothing raises."""
    api.push(
        store,
        "other-program",
        [{"n": 1, "op": "add", "key": "foreign", "index": ["@attr:x/y"], "value": {"title": "hi"}}],
    )
    with Client(tmp_path / "c.db", server.url, retry=fast_policy()) as client:
        notes = client.store(store)
        client.sync()
        assert notes.entities() == ["x"]
        assert notes.attrs("x") == {"y": None}  # the value record has no "value" member
