"""Storage faults: the server's disk fills up or fails, a client's disk fills up.

Each fault is real, made by the kernel or the database, not by a mock:

- ``file size limit``: the server process may not write any file past
  64 KiB (``RLIMIT_FSIZE``, set from outside with ``prlimit``): SQLite's
  writes fail with EFBIG, a disk I/O error. Needs no privileges; Linux only.
- ``tmpfs``: the server's SQLite file (or a PostgreSQL tablespace holding
  the test database, or a client's file) lives on a small tmpfs mounted
  for the test, filled with a file: writes fail with ENOSPC, "database or
  disk is full" (PostgreSQL: "could not extend file"). Needs root and a
  kernel that lets it mount; skipped otherwise.
- ``page limit``: a client's file may not grow (SQLite ``max_page_count``):
  a genuine SQLITE_FULL, without privileges.

Each round fills the disk, writes until the fault shows (bounded), checks
the answer (server: ``503 storage_unavailable`` or ``storage_busy`` in the
error envelope with ``Retry-After``, never a 500; client:
:class:`~idsync_client.LocalStorageError`), frees the space and waits
(with a deadline) until every outbox has drained. At the end the set check
holds: nothing acknowledged is missing, nothing is there twice, every
client equals the server, ``integrity_check`` is ok.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import random
import resource
import sqlite3
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import psycopg
import pytest
import requests

from idsync_client import Client, IdsyncError, LocalStorageError, RetryPolicy
from idsync_server_ref.process import ServerProcess

from ..conftest import Api, wait_for
from .figures import CampaignFigures, record
from .setcheck import Ledger, check

pytestmark = pytest.mark.skipif(not hasattr(resource, "prlimit"), reason="needs Linux prlimit")

STORE = "faults"
_numbers = itertools.count(1)


def rounds(full: bool) -> int:
    """Fault episodes per campaign."""
    return 60 if full else 3


def megabytes(short: int, full: int, is_full: bool) -> int:
    """A tmpfs's size: each episode writes until the disk is full, so the
    data grows with the episodes (a disk full of data stays full)."""
    return full if is_full else short


class Disk(Protocol):
    """A place that can be made full and freed again."""

    def fill(self) -> None: ...
    def free(self) -> None: ...


class FileSizeLimit:
    """The process ``pid`` may write no file past ``limit`` bytes (EFBIG).

    The database file is larger already: it cannot grow, and a checkpoint
    cannot copy pages into it; the WAL, which SQLite writes from its start
    again after a checkpoint, meets the limit within a few commits.
    """

    def __init__(self, pid: int, limit: int = 64 * 1024) -> None:
        self.pid = pid
        self.limit = limit

    def fill(self) -> None:
        _, hard = resource.prlimit(self.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(self.pid, resource.RLIMIT_FSIZE, (self.limit, hard))

    def free(self) -> None:
        _, hard = resource.prlimit(self.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(self.pid, resource.RLIMIT_FSIZE, (hard, hard))


class Tmpfs:
    """A small tmpfs at ``path``; :meth:`fill` writes a file until ENOSPC."""

    def __init__(self, path: Path, megabytes: int, owner: int | None = None) -> None:
        path.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m,mode=0755", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
        self.path = path
        if owner is not None:
            os.chown(path, owner, owner)
        self.filler = path / "filler"

    def fill(self) -> None:
        with self.filler.open("ab", buffering=0) as out:
            for size in (1 << 20, 1 << 16, 1 << 12, 1 << 9):  # down to the last bytes
                chunk = b"\0" * size
                for _ in range(1 << 13):  # bounded: 8 GiB at most
                    try:
                        out.write(chunk)
                    except OSError as exc:
                        assert exc.errno == errno.ENOSPC, exc
                        break

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True, timeout=60)


class Traffic:
    """Writers against one server: an HTTP pusher (sees every answer) and clients.

    Every answer other than 200 must be a 503 ``storage_unavailable`` or
    ``storage_busy`` error envelope with Retry-After; anything else counts
    as unexpected. A batch without an answer is sent again, under the same
    change numbers, until it is answered.
    """

    def __init__(self, url: str, folder: Path, clients: int, seed: int) -> None:
        self.url = url
        self.ledger = Ledger()
        self.rng = random.Random(seed)
        self.http = requests.Session()
        self.http.trust_env = False
        self.client_id = f"pusher-{uuid.uuid4().hex[:8]}"
        self.n = 0
        self.in_doubt: list[list[dict[str, Any]]] = []
        self.answers: Counter[str] = Counter()
        self.unexpected: list[str] = []
        policy = RetryPolicy(max_attempts=1, rng=random.Random(seed))
        self.paths = [folder / f"client{i}.db" for i in range(clients)]
        self.clients = [Client(p, url, retry=policy) for p in self.paths]
        self.client_errors = 0

    def close(self) -> None:
        for client in self.clients:
            client.close()

    def _batch(self, size: int) -> list[dict[str, Any]]:
        batch = []
        for _ in range(size):
            self.n += 1
            value = {"n": self.n, "pad": "p" * self.rng.randint(500, 4000)}
            batch.append(
                {"n": self.n, "op": "add", "key": str(uuid.uuid4()), "index": ["by:http"],
                 "value": value}
            )  # fmt: skip
        return batch

    def push(self, batch: list[dict[str, Any]]) -> bool:
        """Push ``batch``; True when answered 200 (then it is acknowledged)."""
        body = {"client_id": self.client_id, "changes": batch}
        response = self.http.post(f"{self.url}/v1/stores/{STORE}/push", json=body, timeout=60)
        if response.status_code == 200:
            outcomes = response.json()["outcomes"]
            assert [o["status"] for o in outcomes] == ["applied"] * len(batch), outcomes
            for change in batch:
                self.ledger.added(STORE, change["key"], change["value"])
            self.answers["200"] += 1
            return True
        self.answers[str(response.status_code)] += 1
        try:
            code = response.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            code = None
        if (
            response.status_code != 503
            or code not in ("storage_unavailable", "storage_busy")
            or "Retry-After" not in response.headers
        ):
            self.unexpected.append(f"{response.status_code} {response.text[:300]}")
        return False

    def push_new(self, size: int) -> bool:
        batch = self._batch(size)
        if self.push(batch):
            return True
        self.in_doubt.append(batch)
        return False

    def client_writes(self) -> None:
        """Each client adds (and sometimes deletes) locally, then tries to sync."""
        for client in self.clients:
            notes = client.store(STORE)
            value = {"c": client.path.name, "pad": "q" * self.rng.randint(100, 2000)}
            key = notes.add(value, index=["by:client"])
            self.ledger.added(STORE, key, value)
            if self.rng.random() < 0.3:
                notes.delete(key)
                self.ledger.deleted(STORE, key)
            try:
                client.sync()
            except IdsyncError:
                self.client_errors += 1

    def recover(self, seconds: float = 60.0) -> None:
        """Send every batch in doubt again and sync every client until its
        outbox is empty (within ``seconds``)."""
        deadline = time.monotonic() + seconds

        def drained() -> bool:
            self.in_doubt = [b for b in self.in_doubt if not self.push(b)]
            for client in self.clients:
                with contextlib.suppress(IdsyncError):
                    client.sync()
            return not self.in_doubt and all(c.db.pending_count() == 0 for c in self.clients)

        assert wait_for(drained, max(1.0, deadline - time.monotonic())), (
            f"not recovered: {len(self.in_doubt)} batches in doubt, "
            f"{[c.db.pending_count() for c in self.clients]} pending"
        )


def server_campaign(
    name: str, backend: str, url: str, disk: Disk, episodes: int, folder: Path,
    sqlite_files: list[Path], before_fill: Callable[[], None] = lambda: None,
) -> CampaignFigures:  # fmt: skip
    """Fill and free the server's disk ``episodes`` times under traffic; the set check.

    ``before_fill`` runs before each fill (see :func:`truncate_wal`)."""
    started = time.monotonic()
    traffic = Traffic(url, folder, clients=2, seed=len(name))
    refused = 0
    try:
        for _ in range(episodes):
            traffic.client_writes()
            assert traffic.push_new(5), "the server refuses writes with space to spare"
            before_fill()
            disk.fill()
            try:
                for _ in range(200):  # until the server refuses one; bounded
                    if not traffic.push_new(20):
                        refused += 1
                        break
                else:
                    pytest.fail("the server never met the full disk")
                traffic.client_writes()  # saved locally; their sync fails or waits
                # A write while it is full is refused again; nothing is half applied.
                refused += not traffic.push_new(20)
            finally:
                disk.free()
            traffic.recover()
        traffic.client_writes()
        traffic.recover()
        found = check(traffic.ledger, url, [STORE], traffic.paths, sqlite_files)
    finally:
        traffic.close()
    row = record(
        CampaignFigures(
            campaign=name,
            backend=backend,
            injected=episodes,
            acknowledged=found.acknowledged,
            lost=found.lost,
            duplicated=found.duplicated,
            unexpected_5xx=len(traffic.unexpected),
            seconds=time.monotonic() - started,
            extra={
                "refused_writes": refused,
                "answers": dict(traffic.answers),
                "client_sync_errors": traffic.client_errors,
            },
        )
    )
    assert not traffic.unexpected, traffic.unexpected[:5]
    assert found.ok, found.problems
    return row


# -- the server on SQLite ---------------------------------------------------


def _new_server(database: str | Path) -> ServerProcess:
    server = ServerProcess(database).start()
    Api(server.url).create_store(STORE)
    return server


def test_server_sqlite_file_size_limit(tmp_path: Path, full: bool) -> None:
    db = tmp_path / "server.sqlite3"
    server = _new_server(db)
    try:
        assert server.proc is not None
        disk = FileSizeLimit(server.proc.pid)
        server_campaign(
            "server disk: file size limit (EFBIG)", "sqlite", server.url, disk,
            rounds(full), tmp_path, [db],
        )  # fmt: skip
        assert server.proc.poll() is None, "the server died"
    finally:
        server.kill()
    log = "".join(server.log_lines)
    # The log names the failure, not the rollback that SQLite made unneeded.
    assert "cannot rollback" not in log, log[-2000:]
    assert "disk I/O error" in log or "database or disk is full" in log, log[-2000:]


def truncate_wal(db: Path) -> None:
    """Checkpoint ``db`` and truncate its WAL, as a second connection may:
    the next commit needs new space, so a full disk shows at once (a WAL
    SQLite reuses from its start takes many commits to meet it, and the
    data would outgrow the disk over the episodes)."""
    with contextlib.closing(sqlite3.connect(db, timeout=10)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def test_server_sqlite_on_a_full_tmpfs(tmp_path: Path, full: bool) -> None:
    disk = Tmpfs(tmp_path / "disk", megabytes(32, 128, full))
    server: ServerProcess | None = None
    try:
        db = disk.path / "server.sqlite3"
        server = _new_server(db)
        server_campaign(
            "server disk: tmpfs full (ENOSPC)", "sqlite", server.url, disk, rounds(full),
            tmp_path, [db], before_fill=lambda: truncate_wal(db),
        )  # fmt: skip
        assert server.proc is not None and server.proc.poll() is None, "the server died"
        assert "database or disk is full" in "".join(server.log_lines)
    finally:
        if server is not None:
            server.kill()
        disk.close()


# -- the server on PostgreSQL -----------------------------------------------


@pytest.fixture
def pg_on_tmpfs(pg_cluster: Any, full: bool) -> Iterator[tuple[str, Tmpfs]]:
    """A database whose tables live in a tablespace on a small tmpfs."""
    n = next(_numbers)
    disk = Tmpfs(Path(pg_cluster.base) / f"disk{n}", megabytes(24, 96, full), owner=65534)
    (disk.path / "pg").mkdir()
    os.chown(disk.path / "pg", 65534, 65534)
    space, name = f"faultspace{n}", f"faults{n}"
    admin = pg_cluster.url("postgres")
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE TABLESPACE {space} LOCATION '{disk.path / 'pg'}'")  # type: ignore[arg-type]
            conn.execute(f"CREATE DATABASE {name} TEMPLATE idsync_template TABLESPACE {space}")  # type: ignore[arg-type]
        yield pg_cluster.url(name), disk
    finally:
        with contextlib.suppress(psycopg.Error), psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]
            conn.execute(f"DROP TABLESPACE IF EXISTS {space}")  # type: ignore[arg-type]
        disk.close()


def test_server_postgresql_tablespace_on_a_full_tmpfs(
    pg_on_tmpfs: tuple[str, Tmpfs], tmp_path: Path, full: bool
) -> None:
    url, disk = pg_on_tmpfs
    server = _new_server(url)
    try:
        server_campaign(
            "server disk: tablespace on a full tmpfs", "postgresql", server.url, disk,
            rounds(full), tmp_path, [],
        )  # fmt: skip
        assert server.proc is not None and server.proc.poll() is None, "the server died"
        assert "No space left on device" in "".join(server.log_lines)
    finally:
        server.kill()


# -- a client's disk --------------------------------------------------------


class PageLimit:
    """The client's file may not grow (SQLite ``max_page_count``, every connection)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def fill(self) -> None:
        db = self.client.db.db
        pages = db.execute_sql("PRAGMA page_count").fetchone()[0]
        db.pragma("max_page_count", pages, permanent=True)

    def free(self) -> None:
        self.client.db.db.pragma("max_page_count", 1 << 30, permanent=True)


def client_campaign(
    name: str, client: Client, disk: Disk, server: ServerProcess, store: str, episodes: int,
    folder: Path,
) -> None:  # fmt: skip
    """Fill and free ``client``'s disk ``episodes`` times while another client
    writes on the server; the set check."""
    started = time.monotonic()
    ledger = Ledger()
    rng = random.Random(len(name))
    refused_writes = refused_pulls = 0
    policy = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.05, rng=rng)
    other_path = folder / "other.db"
    notes = client.store(store)

    def write(target: Client, size: int) -> str:
        value = {"pad": "w" * size, "at": time.monotonic()}
        key = target.store(store).add(value, index=["tag:w"])
        ledger.added(store, key, value)
        return key

    with Client(other_path, server.url, retry=policy) as other:
        for episode in range(episodes):
            write(client, 100)
            client.sync()
            # The next commit needs new space (see truncate_wal).
            client.db.db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            disk.fill()
            try:
                for _ in range(500):  # until the local file is full; bounded
                    try:
                        write(client, rng.randint(2000, 20000))
                    except LocalStorageError as exc:
                        assert "full" in str(exc) or "disk" in str(exc), exc
                        refused_writes += 1
                        break
                else:
                    pytest.fail("the client never met the full disk")
                # Sync goes on (the push needs no room); a pull that needs it fails cleanly.
                for _ in range(5):
                    write(other, rng.randint(2000, 8000))
                other.sync()
                try:
                    client.sync()
                except LocalStorageError:
                    refused_pulls += 1
                with pytest.raises(LocalStorageError):
                    write(client, 50_000)
            finally:
                disk.free()
            assert wait_for(lambda: _synced(client), 30), (
                f"episode {episode}: the client did not catch up ({client.db.file_bytes():,} bytes,"
                f" {client.db.pending_count()} pending, last error {client.status.last_error})"
            )
        for c in (other, client, other):
            c.sync()
        found = check(ledger, server.url, [store], [client.path, other_path])
    record(
        CampaignFigures(
            campaign=name,
            injected=episodes,
            acknowledged=found.acknowledged,
            lost=found.lost,
            duplicated=found.duplicated,
            seconds=time.monotonic() - started,
            extra={"refused_writes": refused_writes, "refused_pulls": refused_pulls,
                   "records": len(notes)},
        )
    )  # fmt: skip
    assert found.ok, found.problems


def _synced(client: Client) -> bool:
    with contextlib.suppress(IdsyncError):
        client.sync()
    return client.db.pending_count() == 0


def test_client_file_page_limit(
    server: ServerProcess, store: str, tmp_path: Path, full: bool
) -> None:
    policy = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.05, rng=random.Random(2))
    with Client(tmp_path / "client.db", server.url, retry=policy) as client:
        client_campaign(
            "client disk: page limit (SQLITE_FULL)", client, PageLimit(client), server, store,
            rounds(full), tmp_path,
        )  # fmt: skip


def test_client_file_on_a_full_tmpfs(
    server: ServerProcess, store: str, tmp_path: Path, full: bool
) -> None:
    disk = Tmpfs(tmp_path / "disk", megabytes(4, 96, full))
    policy = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.05, rng=random.Random(3))
    try:
        with Client(disk.path / "client.db", server.url, retry=policy) as client:
            client_campaign(
                "client disk: tmpfs full (ENOSPC)", client, disk, server, store, rounds(full),
                tmp_path,
            )  # fmt: skip
    finally:
        disk.close()
