"""Conflict notices: a value this device set lost to another device's, told once."""

from __future__ import annotations

from pathlib import Path

import pytest

from idsync_client import Client, ConflictEvent, RetryPolicy


def make_client(path: Path, url: str) -> Client:
    return Client(path, url, retry=RetryPolicy(sleep=lambda s: None))


def watch(client: Client, store: str) -> list[ConflictEvent]:
    seen: list[ConflictEvent] = []
    client.store(store).on_conflict(seen.append)
    return seen


def test_an_offline_edit_that_loses_is_told_once_with_both_values(tmp_path, server, store):
    with make_client(tmp_path / "a.db", server.url) as a, make_client(
        tmp_path / "b.db", server.url
    ) as b:
        a_seen, b_seen = watch(a, store), watch(b, store)
        a.store(store).set_attr("n1", "title", "first")
        a.sync()
        b.sync()
        # Both edit while offline; A uploads first, so B's value is logged last.
        a.store(store).set_attr("n1", "title", "from a")
        b.store(store).set_attr("n1", "title", "from b")
        a_key = a.store(store).find("@attr:n1/title").__next__().key
        a.sync()
        b.sync()
        assert a_seen == []
        a.sync()  # A pulls B's value: its own one lost
        assert a.store(store).get_attr("n1", "title") == "from b"
        [event] = a_seen
        assert (event.store, event.entity, event.name) == (store, "n1", "title")
        assert event.winning_value == "from b" and event.winning_origin == "remote"
        assert event.losing_value == "from a" and event.losing_origin == "local"
        assert event.losing_key == a_key
        assert event.losing_seq is not None and event.winning_seq is not None
        assert event.winning_seq > event.losing_seq
        for client in (a, b, a, b):
            client.sync()
        assert len(a_seen) == 1, "told more than once"
        assert b_seen == [], "the winning side is told nothing"


def test_no_notice_for_a_local_overwrite_or_an_edit_made_after_seeing_it(
    tmp_path, server, store
):
    with make_client(tmp_path / "a.db", server.url) as a, make_client(
        tmp_path / "b.db", server.url
    ) as b:
        a_seen, b_seen = watch(a, store), watch(b, store)
        notes = a.store(store)
        notes.set_attr("n1", "title", "one")
        a.sync()
        notes.set_attr("n1", "title", "two")  # replaced by a later local write
        a.sync()
        b.sync()
        b.store(store).set_attr("n1", "title", "three")  # B saw "two": an ordinary edit
        b.sync()
        a.sync()
        assert notes.get_attr("n1", "title") == "three"
        assert a_seen == [] and b_seen == []


def test_no_notice_when_another_device_unsets_then_sets_again(tmp_path, server, store):
    with make_client(tmp_path / "a.db", server.url) as a, make_client(
        tmp_path / "b.db", server.url
    ) as b:
        a_seen = watch(a, store)
        a.store(store).set_attr("n1", "title", "mine")
        a.sync()
        b.store(store)
        b.sync()
        assert b.store(store).delete_attr("n1", "title")  # B saw "mine" and unset it
        b.store(store).set_attr("n1", "title", "new")
        b.sync()
        a.sync()
        assert a.store(store).get_attr("n1", "title") == "new" and a_seen == []


def test_a_loss_found_after_a_restart_is_told(tmp_path, server, store):
    path = tmp_path / "a.db"
    with make_client(path, server.url) as a:
        a.store(store).set_attr("n1", "title", "mine")
        a.sync()  # uploaded and acknowledged, then the app exits
    with make_client(tmp_path / "b.db", server.url) as b:
        b.store(store).set_attr("n1", "title", "theirs")  # B has not seen "mine"
        b.sync()  # B's value is logged last; B deletes "mine" as the loser
    with make_client(path, server.url) as a:
        seen = watch(a, store)
        a.sync()
        assert [(e.losing_value, e.winning_value) for e in seen] == [("mine", "theirs")]
        assert a.store(store).get_attr("n1", "title") == "theirs"
        a.sync()
        assert len(seen) == 1


def test_a_clean_up_cut_short_is_finished_and_told_once_at_the_next_start(
    tmp_path, server, store
):
    path = tmp_path / "a.db"
    with make_client(path, server.url) as a:
        a.store(store).set_attr("n1", "title", "mine")
        a.sync()
    with make_client(tmp_path / "b.db", server.url) as b:
        assert b._engine is not None
        b._engine.page_hooks.clear()  # B leaves the loser for A to find
        b.store(store).set_attr("n1", "title", "theirs")
        b.sync()
    with make_client(path, server.url) as a:
        seen = watch(a, store)
        # The page is committed, its clean-up never runs (as if killed there).
        assert a._engine is not None
        a._engine.page_hooks.clear()
        a.sync()
        assert len(list(a.store(store).find("@attr:n1/title"))) == 2 and seen == []
    with make_client(path, server.url) as a:
        seen = watch(a, store)
        a.sync()
        assert [(e.losing_value, e.winning_value) for e in seen] == [("mine", "theirs")]
        assert len(list(a.store(store).find("@attr:n1/title"))) == 1
        with make_client(tmp_path / "b.db", server.url) as b:
            b.store(store)
            b.sync()  # B's own clean-up deletes the loser too (a duplicate delete)
            assert b.rejected() == []
        a.sync()  # that delete arrives: the loss was told already
        assert len(seen) == 1


def test_a_loss_that_a_snapshot_reload_brings_is_told(tmp_path, server, store) -> None:
    with make_client(tmp_path / "a.db", server.url) as a:
        seen = watch(a, store)
        a.store(store).set_attr("n1", "title", "mine")
        a.sync()  # this process has checked the store once already
        with make_client(tmp_path / "b.db", server.url) as b:
            assert b._engine is not None
            b._engine.page_hooks.clear()  # B leaves the loser on the server
            b.store(store).set_attr("n1", "title", "theirs")
            b.sync()
        assert a._engine is not None
        a._engine.reset(store)  # the server's values arrive by snapshot, not by page
        assert seen == []
        a.sync()
        assert [(e.losing_value, e.winning_value) for e in seen] == [("mine", "theirs")]
        assert a.store(store).get_attr("n1", "title") == "theirs"
        a.sync()
        assert len(seen) == 1


def test_an_edit_split_from_its_delete_by_a_page_is_no_conflict(tmp_path, server, store):
    """A knowing edit whose add and delete arrive in two pages is told as nothing."""
    with make_client(tmp_path / "a.db", server.url) as a, make_client(
        tmp_path / "b.db", server.url
    ) as b:
        a_seen, b_seen = watch(a, store), watch(b, store)
        a.store(store).set_attr("n1", "title", "one")
        a.sync()
        b.sync()
        b.store(store).set_attr("n1", "title", "two")  # add, then delete "one"
        b.sync()
        assert a._engine is not None
        a._engine.page_size = 1  # every change in a page of its own
        a.sync()
        assert a.store(store).get_attr("n1", "title") == "two"
        assert a_seen == [] and b_seen == []


def test_unsubscribe_and_bad_callbacks(tmp_path, server, store) -> None:
    with make_client(tmp_path / "a.db", server.url) as a:
        with pytest.raises(TypeError):
            a.store(store).on_conflict("not callable")  # type: ignore[arg-type]
        seen: list[ConflictEvent] = []
        kept: list[ConflictEvent] = []  # the control: this one stays subscribed
        stop = a.store(store).on_conflict(seen.append)
        a.store(store).on_conflict(kept.append)
        stop()
        stop()  # twice is harmless
        a.store(store).set_attr("n1", "title", "mine")
        a.sync()
        with make_client(tmp_path / "b.db", server.url) as b:
            b.store(store).set_attr("n1", "title", "theirs")
            b.sync()
        a.sync()
        assert seen == [] and a.store(store).get_attr("n1", "title") == "theirs"
        assert [(e.winning_value, e.losing_value) for e in kept] == [("theirs", "mine")]


def test_the_conflict_example_in_the_docs_runs(tmp_path, server, monkeypatch, capsys) -> None:
    import re

    doc = (Path(__file__).resolve().parent.parent / "docs" / "client.md").read_text()
    section = doc.split("### Conflict notices", 1)[1].split("\n## ", 1)[0]
    [example] = re.findall(r"```python\n(.*?)```", section, re.S)
    monkeypatch.chdir(tmp_path)
    exec(example.replace("http://127.0.0.1:8765", server.url), {})
    assert capsys.readouterr().out == "your title 'Lyon' became 'Porto'\n"
    with Client(tmp_path / "phone.db", server.url) as phone:
        phone.sync()
        assert phone.store("notes").get_attr("trip", "title") == "Lyon"  # restored everywhere
