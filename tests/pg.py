"""A throwaway PostgreSQL cluster for tests, from the server binaries on this machine.

``initdb`` and ``pg_ctl`` are looked up on PATH, then under Debian's
``/usr/lib/postgresql/<version>/bin`` (newest first). The cluster lives in a
temporary folder, listens on 127.0.0.1 on a free port (no Unix socket), runs
with ``fsync=off`` for speed, and is removed when stopped. PostgreSQL refuses
to run as root: when the tests run as root, the cluster runs as ``nobody``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import psycopg

_numbers = itertools.count(1)
TEMPLATE = "idsync_template"


def find_binaries() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or None when PostgreSQL is not installed."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
        reverse=True,
    )
    for initdb_path in candidates:
        if (initdb_path.parent / "pg_ctl").exists():
            return initdb_path.parent
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgCluster:
    """One PostgreSQL server in a temporary folder; :meth:`start`, :meth:`database`, :meth:`stop`."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.base = Path(tempfile.mkdtemp(prefix="idsync-pg-"))
        self.data = self.base / "data"
        self.port = 0
        # initdb and postgres refuse root: run them as an unprivileged user.
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            os.chown(self.base, 65534, 65534)  # nobody
            self._as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]

    def _run(self, *args: str) -> None:
        cmd = [*self._as_user, *args]
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=self.base, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")

    def start(self) -> PgCluster:
        """Create and start the cluster; RuntimeError (after cleaning up) if it cannot."""
        try:
            self._run(
                str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres",
                "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync",
            )  # fmt: skip
            self.port = _free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories=''"
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
                " -c max_connections=200"
            )
            self._run(
                str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-o", options,
                "-l", str(self.base / "server.log"), "-w", "-t", "60", "start",
            )  # fmt: skip
            self._make_template()
        except BaseException:
            self.stop()
            raise
        return self

    def url(self, dbname: str) -> str:
        """The URL of database ``dbname`` on this cluster."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _admin(self, sql: str) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def _make_template(self) -> None:
        # A database with the current schema: each test copies it.
        from idsync_server_ref.storage.postgresql import PostgresqlStorage

        self._admin(f"CREATE DATABASE {TEMPLATE}")
        PostgresqlStorage(self.url(TEMPLATE)).close()

    def database(self, empty: bool = False) -> str:
        """A new database (the schema already made unless ``empty``); its URL."""
        name = f"t{next(_numbers)}"
        template = "template0" if empty else TEMPLATE
        self._admin(f"CREATE DATABASE {name} TEMPLATE {template}")
        return self.url(name)

    def log(self) -> str:
        """The server's log so far."""
        with contextlib.suppress(OSError):
            return (self.base / "server.log").read_text(errors="replace")
        return ""

    def stop(self) -> None:
        """Stop the server at once and remove its folder."""
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                          "-w", "stop")  # fmt: skip
        shutil.rmtree(self.base, ignore_errors=True)
