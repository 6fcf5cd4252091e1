"""A server restored from an older copy while this client's cursor is still
inside the restored history: the client notices from push outcomes and pulled
changes alike, and re-sends its acknowledged changes the server lost."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from idsync_client import Client
from idsync_client.errors import ResetRequired
from idsync_client.localdb import LocalDB
from idsync_client.protocol import Outcome

from .conftest import RestorableServer, clients


def _server_values(url: str, store: str) -> list[str]:
    answer = requests.get(f"{url}/v1/stores/{store}/snapshot", timeout=10).json()
    return sorted(r["value"] for r in answer["records"])


def acknowledged_then_lost(restorable: RestorableServer, a: Client, b: Client) -> None:
    """Both clients hold "a0"; then a's "x1" is acknowledged at seq 2 (a push
    alone, never pulled) and lost: the server is restored from before it."""
    a.store("n").add("a0")
    b.store("n")
    a.sync()
    b.sync()
    restorable.backup()
    a.store("n").add("x1")
    assert a.flush(5)
    restorable.restore()


def test_flushed_add_lost_by_a_restore_is_sent_again(
    restorable: RestorableServer, tmp_path: Path
) -> None:
    with clients(tmp_path, restorable.url, "a", "b") as (a, b):
        acknowledged_then_lost(restorable, a, b)

        a.store("n").add("x2")  # the restored server logs it at seq 2 again
        report = a.sync()
        a.sync()
        b.sync()
        assert report.resets >= 1
        assert report.resent == 1
        assert sorted(r.value for r in a.store("n")) == ["a0", "x1", "x2"]
        seqs = [r.seq for r in a.store("n")]
        assert len(set(seqs)) == 3, seqs  # one change per sequence number
        assert sorted(r.value for r in b.store("n")) == ["a0", "x1", "x2"]
        assert _server_values(restorable.url, "n") == ["a0", "x1", "x2"]


def test_pulled_change_at_a_seq_holding_two_local_rows_resets(
    restorable: RestorableServer, tmp_path: Path
) -> None:
    """Only a pull after the restore (the push outcome came through flush):
    the pulled change sits at a seq where the file knows another change."""
    with clients(tmp_path, restorable.url, "a", "b") as (a, b):
        acknowledged_then_lost(restorable, a, b)
        b.store("n").add("y2")  # another client takes seq 2 on the restored server
        b.sync()
        report = a.sync()
        assert report.resets >= 1
        a.sync()
        assert sorted(r.value for r in a.store("n")) == ["a0", "x1", "y2"]
        assert _server_values(restorable.url, "n") == ["a0", "x1", "y2"]


def test_pull_check_compares_every_local_row_at_a_seq(tmp_path: Path) -> None:
    """Two local rows at one seq (the second logged there by a restored
    server): a pulled change equal to one of them still contradicts the other."""
    db = LocalDB(tmp_path / "c.db")
    try:
        for key in ("x1", "x2"):
            with db.transaction():
                db.add("n", key, (), '"v"')
            entries = db.pending("n", 10)
            db.settle("n", entries, [Outcome(entries[0].n, "applied", 2)])
        with pytest.raises(ResetRequired):
            pulled = [{"seq": 2, "op": "add", "key": "x2", "index": [], "value": "v"}]
            db.apply_pulled("n", pulled, "1.2", None)
        assert db.cursor("n") is None  # nothing applied
    finally:
        db.close_all()


def test_push_alone_notices_the_restore_and_resends(
    restorable: RestorableServer, tmp_path: Path
) -> None:
    """flush() pushes without pulling: the push outcome itself (logged at a
    seq where the file knows its lost change) starts the reload and re-send."""
    with clients(tmp_path, restorable.url, "a") as (a,):
        a.store("n").add("a0")
        a.sync()
        restorable.backup()
        a.store("n").add("x1")
        assert a.flush(5)
        restorable.restore()
        a.store("n").add("x2")
        assert a.flush(5)  # push only: x2 lands at seq 2, where x1 was
        assert a.status.resets == 1
        assert _server_values(restorable.url, "n") == ["a0", "x1", "x2"]
