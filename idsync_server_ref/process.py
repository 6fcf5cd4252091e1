"""Run the reference server as a child process (for tests and demos).

The server is started on 127.0.0.1 with port 0; the port it picked is read
from the line it prints at start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType


class ServerProcess:
    """A reference server in a child process, on a free port of 127.0.0.1.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. The
    process can be killed (:meth:`kill`, SIGKILL) and started again on the
    same database file and port. ``env``: variables added to the child's
    environment (such as ``IDSYNC_KILL_AT``, see :mod:`idsync_client.killpoint`).
    """

    def __init__(
        self,
        database: str | Path,
        *extra_args: str,
        port: int = 0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        # A database URL is passed on as it is (Path would fold its "//").
        self.database: str | Path = database if "://" in str(database) else Path(database)
        self.extra_args = list(extra_args)
        self.port = port
        self.env = dict(env or {})
        self.proc: subprocess.Popen[str] | None = None
        self.log_lines: list[str] = []

    @property
    def url(self) -> str:
        """The server's base URL, e.g. ``http://127.0.0.1:41234``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> ServerProcess:
        """Start the server and wait until it listens; RuntimeError if it cannot."""
        cmd = [
            sys.executable,
            "-m",
            "idsync_server_ref",
            "--port",
            str(self.port),
            "--database",
            str(self.database),
            "--log-level",
            "WARNING",
            *self.extra_args,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.log_lines.append(line)
            if "listening on http://" in line:
                self.port = int(line.rsplit(":", 1)[1])
                threading.Thread(target=self._drain, daemon=True).start()
                return self
        self.kill()
        raise RuntimeError("server did not start:\n" + "".join(self.log_lines))

    def _drain(self) -> None:
        proc = self.proc
        if proc is None or proc.stdout is None:
            return
        for line in proc.stdout:
            self.log_lines.append(line)

    def kill(self) -> None:
        """SIGKILL the server (no clean shutdown) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the server with SIGTERM (clean shutdown); return its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        running = self.proc is not None and self.proc.poll() is None
        return self if running else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
