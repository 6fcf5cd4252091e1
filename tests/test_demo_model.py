"""The notes app's logic, without a display."""

from __future__ import annotations

import pytest

from demo_app.model import NotesModel, clean_tag, describe_error, describe_status
from idsync_client import Client, RetryPolicy, SyncStatus


@pytest.fixture
def model(tmp_path):
    m = NotesModel(Client(tmp_path / "notes.db"))
    yield m
    m.close()


def test_create_edit_tag_and_delete(model: NotesModel) -> None:
    first = model.create_note("Groceries", "milk")
    second = model.create_note("Standup")
    model.add_tag(first, " Home ")
    model.add_tag(first, "home")  # twice is once
    model.add_tag(second, "work")
    assert model.note(first).tags == ("home",)
    assert model.save(first, "Groceries list", "milk, eggs") is True
    assert model.save(first, "Groceries list", "milk, eggs") is False
    assert model.note(first).title == "Groceries list" and model.note(first).body == "milk, eggs"
    assert [n.title for n in model.notes()] == ["Standup", "Groceries list"]
    assert [n.id for n in model.notes(tag="home")] == [first]
    assert [n.id for n in model.notes(search="grocer")] == [first]
    assert model.all_tags() == ["home", "work"]
    model.remove_tag(first, "home")
    assert model.note(first).tags == () and model.all_tags() == ["work"]
    model.delete_note(second)
    assert model.note(second) is None and [n.id for n in model.notes()] == [first]
    assert model.all_tags() == []
    assert len(model.store) == 1 + 2  # the note record, its title and its body


def test_updates_are_queued_for_the_ui(model: NotesModel) -> None:
    model.drain_updates()
    model.create_note("x")
    assert "notes" in model.drain_updates()
    assert model.drain_updates() == set()


@pytest.mark.parametrize("bad", ["", "   ", "two words", "x" * 41])
def test_bad_tags_are_refused(model: NotesModel, bad: str) -> None:
    note = model.create_note("n")
    with pytest.raises(ValueError):
        model.add_tag(note, bad)
    assert model.note(note).tags == ()
    assert clean_tag("Work") == "work"


def test_saving_a_deleted_note_is_an_error(model: NotesModel) -> None:
    note = model.create_note("n")
    model.delete_note(note)
    with pytest.raises(KeyError):
        model.save(note, "t", "b")


def test_status_in_words() -> None:
    line = describe_status(
        SyncStatus(state="offline", pending=3, last_error="cannot reach the server (refused)")
    )
    assert line.state == "Offline" and line.pending == "3 changes waiting"
    assert "saved" in line.error and line.last_sync == "Never synced"
    assert (
        describe_status(SyncStatus(state="online", pending=1, last_sync=0.5)).pending
        == "1 change waiting"
    )
    assert describe_status(SyncStatus(state="local", pending=4)).pending == "No server configured"
    assert "token" in describe_error("HTTP 401: a valid bearer token is required (unauthorized)")
    assert describe_error(None) == ""


def test_two_models_converge_on_concurrent_edits(tmp_path, server, store) -> None:
    policy = RetryPolicy(sleep=lambda s: None)
    a = NotesModel(Client(tmp_path / "a.db", server.url, retry=policy), store)
    b = NotesModel(Client(tmp_path / "b.db", server.url, retry=policy), store)
    try:
        note = a.create_note("Plan", "v1")
        a.client.sync()
        b.client.sync()
        a.save(note, "Plan", "from a")
        b.save(note, "Plan", "from b")
        for m in (a, b, a, b):
            m.client.sync()
        assert a.note(note) == b.note(note)
        assert a.note(note).body in ("from a", "from b")
    finally:
        a.close()
        b.close()


def test_work_offline_toggle_stops_and_starts_sync(tmp_path, server, store) -> None:
    import threading

    from .conftest import Api

    m = NotesModel(
        Client(tmp_path / "t.db", server.url, retry=RetryPolicy(sleep=lambda s: None)), store
    )
    synced = threading.Event()
    m.client.on_status(lambda s: s.state == "online" and s.pending == 0 and synced.set())
    try:
        m.set_working_offline(True)
        note = m.create_note("written offline")
        assert m.client.status.state == "idle" and m.client.status.pending > 0
        m.set_working_offline(False)  # background sync starts and uploads by itself
        assert synced.wait(15), m.client.status
        record = Api(server.url).call("GET", f"/v1/stores/{store}/records/{note}")
        assert record.status_code == 200
    finally:
        m.close()
