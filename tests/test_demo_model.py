"""The notes app's logic, without a display."""

from __future__ import annotations

import pytest

from demo_app.model import (
    NotesModel,
    NoteSummary,
    clean_tag,
    describe_error,
    describe_status,
)
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
    stopping = SyncStatus(state="offline", last_error="HTTP 503: the server is stopping")
    assert "saved" in describe_status(stopping).error


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


# -- records the app did not write ------------------------------------------


def test_records_other_programs_wrote_are_skipped_or_shown_never_fatal(model: NotesModel) -> None:
    mine = model.create_note("Mine", "text")
    model.add_tag(mine, "work")
    store = model.store
    store.add({"title": "Buy milk"}, index=["tag:home"])  # the README's record: no note, no tag
    store.add("just text", index=["kind:note"])  # a "note" whose value is not an object
    store.add([1, 2], index=["kind:note", "tag:Two Words"])
    store.add({"created": "yesterday"}, index=["kind:note"], key="odd-created")
    store.add({"created": [2026]}, index=["kind:note"], key="huge-created")
    store.add(None, index=["tag:", "tag:   ", f"note:{mine}"])  # empty tags, null value
    store.add({"tag": 5}, index=[f"note:{mine}", "tag:5"])  # a tag record of odd shape
    store.add(7, index=["note:no-such-note", "tag:ghost"])
    store.set_attr("odd-created", "title", {"rich": ["text"]})  # a title that is not a string
    # Another program, not through add() (which keeps @attr: items for attributes):
    db = model.client.db
    with db.transaction():
        db.add(store.name, "foreign", ("@attr:huge-created/body",), '"not an attribute value"')

    listed = {n.id: n for n in model.notes()}
    assert mine in listed and listed[mine].title == "Mine"
    assert listed["odd-created"].title == '{"rich": ["text"]}' and listed["odd-created"].created == 0
    assert listed["huge-created"].created == 0
    assert model.note("huge-created").body == "not an attribute value"
    assert model.tags(mine) == ("5", "work")
    assert model.all_tags() == ["5", "Two Words", "ghost", "home", "work"]
    assert [n.id for n in model.notes(tag="home")] == []  # the README record is not a note
    assert [n.id for n in model.notes(tag="5")] == [mine]
    assert [n.id for n in model.notes(tag="Two Words")] == []
    model.remove_tag(mine, "5")
    assert model.tags(mine) == ("work",)
    model.delete_note("odd-created")
    assert "odd-created" not in {n.id for n in model.notes()}


def test_the_readme_example_then_the_demo_on_the_same_store(tmp_path, monkeypatch) -> None:
    """Records of another shape in the demo's store (the README's dozen lines, run on
    the store ``notes``) do not stop the demo; the README itself uses a store of its own."""
    import re
    from pathlib import Path

    from idsync_server_ref.process import ServerProcess

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", readme, re.S)
    assert example, "the README has no Python example"
    code = example.group(1)
    assert 'client.store("todo")' in code and '"notes"' not in code
    monkeypatch.chdir(tmp_path)
    with ServerProcess(tmp_path / "server.db") as server:
        code = code.replace('client.store("todo")', 'client.store("notes")')
        exec(code.replace("http://127.0.0.1:8765", server.url), {})
        for path in ("myapp.sqlite3", "demo.sqlite3"):  # the same file, and a new one
            m = NotesModel(Client(tmp_path / path, server.url, retry=RetryPolicy(sleep=lambda s: None)))
            try:
                m.client.sync()
                assert "home" in m.all_tags()
                assert {n.title for n in m.notes()} <= {"A real note"}
                assert m.notes(tag="home") == []
                note = m.create_note("A real note")
                assert m.notes()[0].title == "A real note"
                m.client.sync()
                assert m.note(note).title == "A real note"
            finally:
                m.close()


# -- typed text is never thrown away -----------------------------------------


def test_switching_notes_keeps_typed_text(model: NotesModel) -> None:
    first = model.create_note("First", "one")
    assert model.keep_text(first, "First, edited", "one and more") == first
    assert model.note(first).title == "First, edited" and model.note(first).body == "one and more"
    assert model.keep_text(first, "First, edited", "one and more") == first  # nothing new
    # The note was deleted meanwhile (here or elsewhere): the text becomes a new note.
    model.delete_note(first)
    again = model.keep_text(first, "First, edited", "typed after the delete")
    assert again is not None and again != first
    assert model.note(again).body == "typed after the delete"
    assert model.keep_text(None, "", "") is None  # an empty editor keeps nothing
    assert model.keep_text(None, "", "words") is not None


# -- list lines ----------------------------------------------------------------


def test_long_titles_are_cut_in_the_list_and_whole_in_the_editor(model: NotesModel) -> None:
    title = "A very long title " * 10
    note = model.create_note(title)
    [line] = model.notes()
    assert line.title == title and model.note(note).title == title
    assert len(line.label()) <= 2 + 40 and line.label().endswith("…")
    assert "\n" not in NoteSummary(note, "two\nlines", (), 0).label()


def test_notes_waiting_to_sync_are_marked(tmp_path, server, store) -> None:
    m = NotesModel(Client(tmp_path / "p.db", server.url, retry=RetryPolicy(sleep=lambda s: None)), store)
    try:
        note = m.create_note("Waiting")
        [line] = m.notes()
        assert line.pending and line.label().startswith("• ")
        m.client.sync()
        [line] = m.notes()
        assert not line.pending and line.label().startswith("  ")
        m.save(note, "Edited", "")
        assert m.notes()[0].pending
        m.client.sync()
        m.add_tag(note, "work")  # a tag waiting to sync marks its note too
        assert m.notes()[0].pending
    finally:
        m.close()


# -- conflicts -----------------------------------------------------------------


def test_a_lost_offline_edit_is_noticed_and_can_be_restored(tmp_path, server, store) -> None:
    policy = RetryPolicy(sleep=lambda s: None)
    a = NotesModel(Client(tmp_path / "a.db", server.url, retry=policy), store)
    b = NotesModel(Client(tmp_path / "b.db", server.url, retry=policy), store)
    try:
        note = a.create_note("Plan", "v1")
        a.client.sync()
        b.client.sync()
        a.save(note, "Plan from a (offline)", "v1")
        b.save(note, "Plan from b", "v1")
        a.client.sync()
        b.client.sync()  # B's title is logged last
        a.drain_updates()
        a.client.sync()
        assert "conflicts" in a.drain_updates()
        [notice] = a.conflicts()
        assert b.conflicts() == []
        assert (notice.note_id, notice.field) == (note, "title")
        assert notice.lost == "Plan from a (offline)" and notice.kept == "Plan from b"
        assert notice.message() == (
            "Your edit of the title ('Plan from a (offline)') was replaced by 'Plan from b',"
            " written on another device that had not seen yours."
        )
        assert a.note(note).title == "Plan from b"
        a.restore(notice.id)
        assert a.conflicts() == [] and a.note(note).title == "Plan from a (offline)"
        for m in (a, b):
            m.client.sync()
        assert b.note(note).title == "Plan from a (offline)"
        assert b.conflicts() == []  # a restore is an edit made after seeing B's value
        with pytest.raises(KeyError):
            a.restore(notice.id)
    finally:
        a.close()
        b.close()


def test_dismissing_a_notice_keeps_the_other_value(tmp_path, server, store) -> None:
    policy = RetryPolicy(sleep=lambda s: None)
    a = NotesModel(Client(tmp_path / "a.db", server.url, retry=policy), store)
    b = NotesModel(Client(tmp_path / "b.db", server.url, retry=policy), store)
    try:
        note = a.create_note("T", "body a")
        a.client.sync()
        b.client.sync()
        a.save(note, "T", "body from a")
        b.save(note, "T", "body from b")
        for m in (a, b, a):
            m.client.sync()
        [notice] = a.conflicts()
        assert notice.field == "body"
        a.dismiss_conflict(notice.id)
        assert a.conflicts() == [] and a.note(note).body == "body from b"
    finally:
        a.close()
        b.close()


# -- progress of a first sync -------------------------------------------------


def test_progress_in_words() -> None:
    from demo_app.model import describe_progress
    from idsync_client.progress import SyncProgress

    line = describe_progress(SyncProgress("notes", "pull", 5000, 20000))
    assert line.text == "Downloading notes: 5,000 of 20,000 (25%)"
    assert line.fraction == 0.25
    line = describe_progress(SyncProgress("notes", "snapshot", 1000, None))
    assert line.text == "Loading notes: 1,000 received"
    assert line.fraction is None


def test_the_model_follows_a_first_sync_of_a_large_store(tmp_path, server, store) -> None:
    import threading

    from .conftest import Api, add

    api = Api(server.url)
    for start in range(0, 12000, 1000):
        api.push(store, "seed", [add(n) for n in range(start + 1, start + 1001)])
    m = NotesModel(
        Client(tmp_path / "p.db", server.url, retry=RetryPolicy(sleep=lambda s: None)), store
    )
    lines: list[object] = []
    done = threading.Event()

    def after_the_model(progress) -> None:
        # Listeners run in the order they registered: the model has seen this one.
        lines.append(m.progress_line())
        if progress.done:
            done.set()

    m.client.on_progress(after_the_model)
    try:
        m.client.sync()
        assert done.wait(5)
        assert "progress" in m.drain_updates()
        assert lines[-1] is None  # hidden once done
        shown = lines[:-1]
        assert len(shown) >= 2
        fractions = [line.fraction for line in shown]
        assert fractions == sorted(fractions) and 0 < fractions[0] < 1
        assert shown[0].text == "Downloading notes: 5,000 of 12,000 (42%)"
    finally:
        m.close()
