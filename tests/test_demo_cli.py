"""``idsync-notes`` from the command line, on a machine without a display."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def no_display_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(XDG_DATA_HOME=str(tmp_path), PYTHONUNBUFFERED="1")
    return env


def start_demo(tmp_path: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
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
        env=no_display_env(tmp_path),
    )


def server_is_up(port: int) -> bool:
    try:
        requests.get(f"http://127.0.0.1:{port}/v1/health", timeout=2)
        return True
    except requests.ConnectionError:
        return False


def test_without_a_display_it_says_so_and_keeps_the_server(tmp_path) -> None:
    port = free_port()
    proc = start_demo(tmp_path, port)
    try:
        assert proc.stdout is not None
        text = ""
        while "keeps running" not in text:  # the demo's own word that it waits now
            line = proc.stdout.readline()
            assert line, f"the demo ended early:\n{text}"
            text += line
        assert f"started the reference server at http://127.0.0.1:{port}" in text
        # No window, so nothing points at the window's log pane.
        assert "no display" in text and "Server log" not in text
        assert requests.get(f"http://127.0.0.1:{port}/v1/health", timeout=5).ok
        assert (tmp_path / "idsync" / "server.sqlite3").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0, proc.stdout.read() if proc.stdout else ""
    assert not server_is_up(port), "the server was not stopped with the app"


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


@pytest.mark.skipif(
    not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists(),
    reason="needs /proc/<pid>/task/<pid>/children (Linux)",
)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_the_server_starts_stops_both_cleanly(tmp_path, signum) -> None:
    """A signal that lands before the demo waits (here: while its server starts)."""
    port = free_port()
    proc = start_demo(tmp_path, port)
    server_pid = None
    try:
        deadline = time.monotonic() + 20
        while server_pid is None and time.monotonic() < deadline and proc.poll() is None:
            children = _children(proc.pid)
            server_pid = children[0] if children else None
            time.sleep(0.002)  # a poll interval, not a wait for success
        assert server_pid is not None, "the demo started no server"
        proc.send_signal(signum)  # the server process exists, and is not listening yet
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, proc.stdout.read() if proc.stdout else ""
    assert not Path(f"/proc/{server_pid}").exists() or _is_zombie(server_pid), (
        "the server was orphaned"
    )
    assert not server_is_up(port)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


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


def test_a_second_window_is_told_apart_by_its_file_or_title() -> None:
    from demo_app.__main__ import build_parser, window_title

    parse = build_parser().parse_args
    assert window_title(parse(["--db", "/tmp/second.sqlite3"])) == "idsync notes — second.sqlite3"
    assert window_title(parse(["--db", "/tmp/x.db", "--title", "Laptop"])) == "Laptop"
