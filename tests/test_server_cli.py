"""``idsync-server`` as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from idsync_server_ref.process import ServerProcess

from .conftest import Api


def test_help_lists_every_flag() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "idsync_server_ref", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in (
        "--host",
        "--port",
        "--database",
        "--auth-token",
        "--max-batch",
        "--max-value-bytes",
        "--max-wait-seconds",
        "--max-wait-stores",
        "--threads",
        "--max-connections",
        "--header-timeout",
        "--body-timeout",
    ):
        assert flag in out


@pytest.mark.parametrize(
    ("flag", "name"),
    [
        ("--max-batch", "max_batch"),
        ("--max-wait-stores", "max_wait_stores"),
        ("--threads", "threads"),
        ("--max-connections", "max_connections"),
        ("--header-timeout", "header_timeout"),
        ("--body-timeout", "body_timeout"),
    ],
)
def test_bad_limit_is_refused(flag: str, name: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "idsync_server_ref", flag, "0"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and name in result.stderr


def test_a_default_page_over_the_maximum_page_is_refused() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "idsync_server_ref", "--default-page", "6000", "--max-page", "5000"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "default_page" in result.stderr


def test_default_database_in_the_user_data_folder(tmp_path) -> None:
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "idsync_server_ref", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline(), proc.stdout.readline()]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert lines[0].startswith("idsync-server listening on http://127.0.0.1:")
    assert str(tmp_path / "idsync" / "server.sqlite3") in lines[1]
    assert (tmp_path / "idsync" / "server.sqlite3").exists()
    assert proc.returncode == 0


def test_sigterm_stops_cleanly_and_data_survives(tmp_path) -> None:
    db = tmp_path / "s.sqlite3"
    with ServerProcess(db) as proc:
        Api(proc.url).create_store("keep")
    assert proc.proc is not None and proc.proc.returncode == 0
    with ServerProcess(db) as proc:
        assert Api(proc.url).call("GET", "/v1/stores/keep").status_code == 200


def test_one_log_line_per_request(tmp_path) -> None:
    with ServerProcess(tmp_path / "s.sqlite3", "--log-level", "INFO") as proc:
        Api(proc.url).call("GET", "/v1/health")
        Api(proc.url).call("GET", "/v1/nothing")
    text = "".join(proc.log_lines)
    assert "GET /v1/health 200" in text and "GET /v1/nothing 404" in text
