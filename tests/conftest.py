"""Shared fixtures: a real reference server process, fresh stores, HTTP helpers."""

from __future__ import annotations

import contextlib
import itertools
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from idsync_client import Client, RetryPolicy
from idsync_server_ref.process import ServerProcess

_store_numbers = itertools.count(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--gauntlet",
        choices=("short", "full"),
        default="short",
        help="size of the reliability campaigns in tests/reliability (default: short)",
    )


class Api:
    """A thin HTTP helper over one server: JSON in, (status, JSON) out."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.trust_env = False

    def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        if body is not None:
            kwargs["json"] = body
        return self.session.request(method, self.url + path, timeout=30, **kwargs)

    def create_store(self, name: str, recreate: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "recreate": True} if recreate else {"name": name}
        response = self.call("POST", "/v1/stores", body)
        assert response.status_code == 201, response.text
        return response.json()

    def push(self, store: str, client_id: str, changes: list[dict[str, Any]]) -> list[dict]:
        response = self.call(
            "POST", f"/v1/stores/{store}/push", {"client_id": client_id, "changes": changes}
        )
        assert response.status_code == 200, response.text
        return response.json()["outcomes"]

    def pull_all(self, store: str, cursor: str | None = None) -> tuple[list[dict], str]:
        changes: list[dict] = []
        while True:
            params = {"cursor": cursor} if cursor else {}
            response = self.call("GET", f"/v1/stores/{store}/changes", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            changes += page["changes"]
            cursor = page["cursor"]
            if not page["more"]:
                return changes, cursor


def fast_policy(max_attempts: int = 3) -> RetryPolicy:
    """A retry policy for tests: few attempts and no sleeping between them."""
    return RetryPolicy(max_attempts=max_attempts, sleep=lambda s: None)


def backup_sqlite(database: Path, copy: Path) -> None:
    """A consistent copy of a live SQLite database (SQLite's backup API)."""
    source, target = sqlite3.connect(database), sqlite3.connect(copy)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()


def restore_sqlite(copy: Path, database: Path) -> None:
    """Put an older copy in place of a (stopped) server's database; the newer
    history's write-ahead log goes too."""
    for suffix in ("-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(copy, database)


class RestorableServer:
    """A server process on its own SQLite file, which a test backs up and
    later puts back in place (an operator restoring an older copy)."""

    def __init__(self, folder: Path) -> None:
        self.database = folder / "server.sqlite3"
        self.copy = folder / "server-copy.sqlite3"
        self.process = ServerProcess(self.database)

    @property
    def url(self) -> str:
        """The running server's base URL."""
        return self.process.url

    def backup(self) -> None:
        """Take the copy that :meth:`restore` puts back."""
        backup_sqlite(self.database, self.copy)

    def restore(self, start: bool = True) -> None:
        """Stop the server, put the copy in place, and start it again unless
        ``start`` is false (the test starts it when it wants)."""
        self.process.stop()
        restore_sqlite(self.copy, self.database)
        if start:
            self.process.start()


@contextlib.contextmanager
def clients(folder: Path, url: str, *names: str) -> Iterator[tuple[Client, ...]]:
    """One client per name, each on ``folder/<name>.db`` with :func:`fast_policy`;
    all closed on exit."""
    with contextlib.ExitStack() as stack:
        yield tuple(
            stack.enter_context(Client(folder / f"{name}.db", url, retry=fast_policy()))
            for name in names
        )


def live_keys(api: Api, store: str) -> set[str]:
    """The keys of a store's live records on the server, every snapshot page."""
    keys: set[str] = set()
    params: dict[str, Any] = {"after": 0}
    while True:
        response = api.call("GET", f"/v1/stores/{store}/snapshot", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        keys |= {r["key"] for r in page["records"]}
        if not page["more"]:
            return keys
        params = {"at": page["at"], "after": page["after"]}


def wait_for(condition: Callable[[], bool], seconds: float = 15.0) -> bool:
    """Poll ``condition`` until it holds or ``seconds`` pass; its last value."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def add(n: int, key: str | None = None, value: Any = None, index: list[str] | None = None) -> dict:
    """An add change as a client sends it."""
    return {
        "n": n,
        "op": "add",
        "key": key or str(uuid.uuid4()),
        "index": index or [],
        "value": {"n": n} if value is None else value,
    }


def delete(n: int, key: str) -> dict:
    """A delete change as a client sends it."""
    return {"n": n, "op": "delete", "key": key}


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One reference server process for the session, on a real SQLite file."""
    db = tmp_path_factory.mktemp("server") / "server.sqlite3"
    with ServerProcess(db) as proc:
        yield proc


@pytest.fixture
def api(server: ServerProcess) -> Api:
    return Api(server.url)


@pytest.fixture
def store(api: Api) -> str:
    """A fresh, empty store on the session's server."""
    name = f"t{next(_store_numbers)}-{uuid.uuid4().hex[:8]}"
    api.create_store(name)
    return name


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "db.sqlite3"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """A throwaway PostgreSQL cluster for the session (skips when PostgreSQL is not installed)."""
    from .pg import PgCluster, find_binaries

    pytest.importorskip("psycopg", reason="the postgresql extra (psycopg) is not installed")
    bin_dir = find_binaries()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or under"
            " /usr/lib/postgresql/*/bin: install the postgresql package"
        )
    cluster = PgCluster(bin_dir).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: Any) -> str:
    """A fresh PostgreSQL database with the current schema, for one test."""
    return str(pg_cluster.database())


@pytest.fixture
def restorable(tmp_path: Path) -> Iterator[RestorableServer]:
    """A running :class:`RestorableServer` in ``tmp_path``, stopped after the test."""
    server = RestorableServer(tmp_path)
    server.process.start()
    try:
        yield server
    finally:
        server.process.stop()
