"""The set check catches what it is for: a lost add, a twice-applied add, a
client that differs, an acknowledged delete that did not happen."""

from __future__ import annotations

from pathlib import Path

from idsync_client import Client

from ..conftest import Api, add, delete
from . import setcheck
from .setcheck import Ledger, check


def test_a_clean_run_passes_and_each_fault_is_counted(
    server, api: Api, store: str, tmp_path: Path
) -> None:
    ledger = Ledger()
    with Client(tmp_path / "a.db", server.url) as client:
        notes = client.store(store)
        kept = notes.add({"n": 1})
        gone = notes.add({"n": 2})
        notes.delete(gone)
        client.sync()
    ledger.added(store, kept, {"n": 1})
    ledger.added(store, gone, {"n": 2})
    ledger.deleted(store, gone)
    clean = check(ledger, server.url, [store], clients=[tmp_path / "a.db"])
    assert clean.ok, clean.problems
    assert clean.acknowledged == 3

    ledger.added(store, "never-sent", {"n": 3})  # the app was told, the server never got it
    ledger.added(store, kept, {"n": 1.0})  # same key, a value 1.0 the server does not hold
    api.push(store, "other", [add(1, key="twice")])
    api.push(store, "other2", [add(1, key="twice2"), delete(2, key="twice2")])
    ledger.deleted(store, "twice")  # acknowledged, never deleted
    found = check(ledger, server.url, [store], clients=[tmp_path / "a.db"])
    assert found.lost == 1 and found.wrong_value == 1 and found.undeleted == 1
    assert found.clients_differing == 1  # the client has not pulled "twice"
    assert not found.ok


def test_an_acknowledgement_file_cut_by_a_kill_keeps_only_whole_lines(tmp_path: Path) -> None:
    acks = tmp_path / "acks"
    acks.write_text('add k1 {"a":1}\ndelete k0\nadd k2 {"a":')
    ledger = Ledger()
    ledger.merge_file("s", acks)
    assert ledger.adds == {"s": {"k1": {"a": 1}}} and ledger.deletes == {"s": {"k0"}}


def test_an_add_logged_twice_is_counted_duplicated(
    server, api: Api, store: str, monkeypatch
) -> None:
    # A server never logs a key twice, so the fault is planted in what the
    # check reads: the store's log with its first add served again.
    api.push(store, "writer", [add(1, key="once"), add(2, key="also")])
    ledger = Ledger()
    ledger.added(store, "once", {"n": 1})
    ledger.added(store, "also", {"n": 2})
    clean = check(ledger, server.url, [store])
    assert clean.ok and clean.duplicated == 0, clean.problems

    real_log = setcheck.server_log
    monkeypatch.setattr(
        setcheck, "server_log", lambda *args: (lambda log: log + log[:1])(real_log(*args))
    )
    found = check(ledger, server.url, [store])
    assert found.duplicated == 1 and found.lost == 0 and not found.ok
    assert any("added 2 times" in problem for problem in found.problems)
