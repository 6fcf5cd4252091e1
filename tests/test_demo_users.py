"""The notes app with several users: signing in, a shared store, a private one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from demo_app.model import NotesModel
from idsync_client import Client, PermanentError, RetryPolicy
from idsync_server_ref.process import ServerProcess

from .test_server_auth import make_users


def _fast() -> RetryPolicy:
    return RetryPolicy(max_attempts=2, sleep=lambda _: None)


@pytest.fixture
def users(tmp_path: Path) -> Iterator[tuple[ServerProcess, dict[str, str | None]]]:
    """A server with users (tests/test_server_auth.py's), and their tokens."""
    db = tmp_path / "server.sqlite3"
    tokens = make_users(db)
    with ServerProcess(db, "--rate-limit", "0") as server:
        yield server, tokens


def _sync(model: NotesModel) -> None:
    # A refused store or token raises; the status says what went wrong.
    with contextlib.suppress(PermanentError):
        model.client.sync()


def test_a_second_user_sees_the_shared_store_and_not_the_private_one(users, tmp_path) -> None:
    server, tokens = users
    with Client(tmp_path / "alice.db", server.url, token=tokens["owner"], retry=_fast()) as alice:
        shared = NotesModel(alice, store="alice.notes")
        private = NotesModel(alice, store="alice.private")
        shared.create_note("Team plan", "for everyone")
        private.create_note("Diary", "mine only")
        alice.sync()
        headers = {"Authorization": f"Bearer {tokens['owner']}"}
        granted = requests.put(
            f"{server.url}/v1/stores/alice.notes/access/wendy",
            json={"role": "writer"},
            headers=headers,
            timeout=10,
        )
        assert granted.ok, granted.text
        shared.close()
        private.close()

    with Client(tmp_path / "wendy.db", server.url, token=tokens["writer"], retry=_fast()) as wendy:
        shared = NotesModel(wendy, store="alice.notes")
        private = NotesModel(wendy, store="alice.private")
        _sync(shared)
        assert [n.title for n in shared.notes()] == ["Team plan"]
        assert private.notes() == []
        line = private.status_line()
        assert "no access" in line.error, line
        # Nothing of Alice's private store reached Wendy's file, and the
        # server did not let her create a store of that name either.
        assert len(wendy.store("alice.private")) == 0
        shared.close()
        private.close()
    listed = requests.get(f"{server.url}/v1/stores", headers=headers, timeout=10).json()
    assert sorted(s["name"] for s in listed["stores"]) == ["alice.notes", "alice.private"]


def test_signing_in_with_a_token_resumes_sync(users, tmp_path) -> None:
    server, tokens = users
    with Client(tmp_path / "a.db", server.url, token=tokens["revoked"], retry=_fast()) as client:
        model = NotesModel(client, store="alice.notes")
        model.create_note("Written before signing in")
        _sync(model)
        assert model.needs_sign_in
        assert "Sign in" in model.status_line().error
        with pytest.raises(ValueError):
            model.sign_in("   ")
        model.sign_in(tokens["owner"])
        client.sync()
        assert not model.needs_sign_in
        assert model.status_line().pending == "All changes synced"
        model.close()

