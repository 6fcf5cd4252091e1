"""A server restored from an older copy of its database never accepts a cursor it did not issue.

A real server process on a real file: copy the file while it runs (SQLite's
backup API), write more, stop, put the copy back, start again. Cursors past
the restored head, and cursors whose seq now names another entry, are
answered 410 reset_required; cursors within the restored history still work.
"""

from __future__ import annotations

from pathlib import Path

from idsync_server_ref.process import ServerProcess

from .conftest import Api, add, backup_sqlite, restore_sqlite


def _pull(api: Api, cursor: str | None, limit: int = 100):
    params: dict[str, object] = {"limit": limit}
    if cursor:
        params["cursor"] = cursor
    return api.call("GET", "/v1/stores/notes/changes", params=params)


def _assert_reset(response) -> None:
    assert response.status_code == 410, response.text
    assert response.json()["error"]["code"] == "reset_required"


def test_cursors_after_a_restore_from_an_older_copy(tmp_path: Path) -> None:
    db, copy = tmp_path / "server.sqlite3", tmp_path / "copy.sqlite3"
    server = ServerProcess(db)
    with server:
        api = Api(server.url)
        api.create_store("notes")
        api.push("notes", "a", [add(n, f"k{n}") for n in range(1, 6)])
        within = _pull(api, None, limit=3).json()["cursor"]  # seq 3, in the copy
        backup_sqlite(db, copy)  # while the server runs
        api.push("notes", "a", [add(n, f"k{n}") for n in range(6, 9)])
        _, head = api.pull_all("notes", within)
        assert head == api.call("GET", "/v1/stores/notes").json()["head_cursor"]
        assert head.split(".")[1] == "8"
        past_copy = _pull(api, None, limit=6).json()["cursor"]
        assert past_copy.split(".")[1] == "6"
    restore_sqlite(copy, db)
    with ServerProcess(db) as server:
        api = Api(server.url)
        info = api.call("GET", "/v1/stores/notes").json()
        assert info["head_seq"] == 5
        # Past the head: not issued on this history.
        _assert_reset(_pull(api, head))
        _assert_reset(api.call("GET", "/v1/stores/notes/snapshot", params={"at": head}))
        # Within the restored history: still good.
        response = _pull(api, within)
        assert response.status_code == 200, response.text
        assert [c["key"] for c in response.json()["changes"]] == ["k4", "k5"]
        # Other writes pass the old cursors' seqs: they name other entries now.
        api.push("notes", "b", [add(n, f"new{n}") for n in range(1, 5)])
        assert api.call("GET", "/v1/stores/notes").json()["head_seq"] == 9
        for old in (past_copy, head):
            _assert_reset(_pull(api, old))  # never a silent gap
        changes, cursor = api.pull_all("notes", within)
        assert [c["key"] for c in changes] == ["k4", "k5", "new1", "new2", "new3", "new4"]
        assert cursor == api.call("GET", "/v1/stores/notes").json()["head_cursor"]
        # A client told to reset loads a snapshot and continues from its cursor.
        snapshot = api.call("GET", "/v1/stores/notes/snapshot").json()
        assert [r["key"] for r in snapshot["records"]][-1] == "new4"
        assert _pull(api, snapshot["at"]).json()["changes"] == []
