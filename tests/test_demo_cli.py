"""``idsync-notes`` from the command line, on a machine without a display."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_without_a_display_it_says_so_and_keeps_the_server(tmp_path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(XDG_DATA_HOME=str(tmp_path), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "demo_app",
            "--with-server",
            "--server",
            f"http://127.0.0.1:{port}",
            "--db",
            str(tmp_path / "notes.db"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        text = "".join(lines)
        assert f"started the reference server at http://127.0.0.1:{port}" in text
        assert "no display" in text and "keeps running" in text
        assert requests.get(f"http://127.0.0.1:{port}/v1/health", timeout=5).ok
        assert (tmp_path / "idsync" / "server.sqlite3").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0
    try:
        requests.get(f"http://127.0.0.1:{port}/v1/health", timeout=2)
        still_up = True
    except requests.ConnectionError:
        still_up = False
    assert not still_up, "the server was not stopped with the app"


def test_without_a_display_or_server_it_fails_clearly(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    result = subprocess.run(
        [sys.executable, "-m", "demo_app", "--server", "none", "--db", str(tmp_path / "n.db")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 1 and "no display" in result.stdout
