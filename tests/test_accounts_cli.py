"""``idsync-server user|token|access``: each command has help, does what it says, and
the README's several-users commands work against a real server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from idsync_server_ref.process import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = [
    ["user", "add"],
    ["user", "list"],
    ["user", "remove"],
    ["token", "create"],
    ["token", "list"],
    ["token", "revoke"],
    ["access", "grant"],
    ["access", "revoke"],
    ["access", "list"],
]


def cli(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "idsync_server_ref", *args, "--database", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "idsync_server_ref", *command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and f"idsync-server {' '.join(command)}" in result.stdout


def test_the_server_help_points_at_the_account_commands() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "idsync_server_ref", "--help"], capture_output=True, text=True
    )
    assert "user|token|access" in result.stdout and "--insecure-no-auth" in result.stdout


def test_users_tokens_and_access_from_the_command_line(tmp_path: Path) -> None:
    db = tmp_path / "s.sqlite3"
    assert cli(db, "user", "add", "alice", "--admin").returncode == 0
    assert cli(db, "user", "add", "bob").returncode == 0
    taken = cli(db, "user", "add", "bob")
    assert taken.returncode == 1 and "user exists: bob" in taken.stderr
    bad = cli(db, "user", "add", "Bob.x")
    assert bad.returncode == 2 and "user name must match" in bad.stderr
    assert cli(db, "user", "list").stdout.split()[::3] == ["alice", "bob"]

    made = cli(db, "token", "create", "bob", "--device", "phone", "--expires-in-days", "1")
    token = made.stdout.strip()
    assert re.fullmatch(r"idsync_[A-Za-z0-9_-]{43}", token) and "not shown again" in made.stderr
    listed = cli(db, "token", "list", "bob").stdout
    assert "phone" in listed and "live" in listed and token not in listed
    token_id = listed.split()[0]
    assert cli(db, "token", "create", "nobody").returncode == 1

    for unreachable in ("Alice.Notes", "a b/../é"):  # no client could sync such a store
        refused = cli(db, "access", "grant", unreachable, "bob", "--role", "writer")
        assert refused.returncode == 2 and "store name" in refused.stderr
    assert cli(db, "access", "grant", "alice.notes", "bob", "--role", "writer").returncode == 0
    assert cli(db, "access", "list", "alice.notes").stdout.split() == [
        "alice",
        "owner",
        "bob",
        "writer",
    ]
    with ServerProcess(db) as server:
        headers = {"Authorization": f"Bearer {token}"}
        assert requests.get(server.url + "/v1/stores", headers=headers, timeout=10).ok
        assert cli(db, "token", "revoke", token_id).returncode == 0
        refused = requests.get(server.url + "/v1/stores", headers=headers, timeout=10)
        assert refused.status_code == 401
    assert "revoked" in cli(db, "token", "list").stdout
    assert "no longer has" in cli(db, "access", "revoke", "alice.notes", "bob").stdout
    assert cli(db, "access", "list", "alice.notes").stdout.split() == ["alice", "owner"]
    assert cli(db, "user", "remove", "bob").returncode == 0
    assert cli(db, "user", "remove", "bob").returncode == 1
    assert cli(db, "user", "list").stdout.split()[::3] == ["alice"]


def test_the_readme_several_users_commands(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Several users", 1)[1]
    script = re.search(r"```sh\n(.*?)```", section, re.S)
    assert script, "the several-users section has no commands"
    db = tmp_path / "server.sqlite3"
    env = dict(
        os.environ,
        IDSYNC_DATABASE=str(db),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    result = subprocess.run(
        ["bash", "-ec", script.group(1) + 'printf "%s\\n%s\\n" "$ALICE" "$BOB"\n'],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    alice, bob = result.stdout.split()[-2:]
    with ServerProcess(db) as server:
        session = requests.Session()
        session.trust_env = False

        def call(token: str, method: str, path: str, body: object = None) -> requests.Response:
            return session.request(
                method,
                server.url + path,
                json=body,
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            )

        for name in ("alice.shared", "alice.diary"):
            assert call(alice, "POST", "/v1/stores", {"name": name}).status_code == 201
        change = {"n": 1, "op": "add", "key": "k", "index": [], "value": {}}
        pushed = call(
            bob, "POST", "/v1/stores/alice.shared/push", {"client_id": "b", "changes": [change]}
        )
        assert pushed.status_code == 200
        diary = call(bob, "GET", "/v1/stores/alice.diary")
        assert diary.status_code == 404
        assert call(alice, "DELETE", "/v1/stores/alice.diary").status_code == 200
        assert call(bob, "GET", "/v1/stores/alice.diary").content == diary.content
        assert call(alice, "GET", "/v1/stores/alice.shared").json()["head_seq"] == 1
