"""docs/deploy.md, "Several processes on PostgreSQL", followed on a throwaway cluster:
the documented commands create the role and database, start three processes,
nginx spreads clients over them, and the backup commands produce a dump that
restores and an export that lists the records."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from idsync_client import Client, RetryPolicy
from idsync_server_ref.process import ServerProcess

from .conftest import Api, add

psycopg = pytest.importorskip("psycopg", reason="the postgresql extra (psycopg) is not installed")

DEPLOY = Path(__file__).resolve().parent.parent / "docs" / "deploy.md"
BIN = Path(sys.executable).parent
#: The documented PostgreSQL address, replaced by the throwaway cluster's.
DOC_PG = "127.0.0.1:5432"
DOC_PORTS = ("8765", "8766", "8767")


def block(name: str) -> str:
    """The fenced block whose info string is ``<language> <name>``."""
    found = re.findall(rf"```\w+ {name}\n(.*?)```", DEPLOY.read_text(), re.S)
    assert len(found) == 1, f"one {name} block expected in docs/deploy.md"
    return str(found[0])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_lines(text: str, cluster: Any, cwd: Path) -> None:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    for line in text.strip().splitlines():
        line = line.replace(DOC_PG, f"127.0.0.1:{cluster.port}").replace(
            "-p 5432", f"-p {cluster.port}"
        )
        result = subprocess.run(
            line, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"


def _start_documented(cluster: Any) -> Iterator[list[tuple[subprocess.Popen[str], int]]]:
    lines = block("pg-start").strip().splitlines()
    export = next(x for x in lines if x.startswith("export "))
    name, _, value = export.removeprefix("export ").partition("=")
    env = dict(os.environ)
    env[name] = shlex.split(value)[0].replace(DOC_PG, f"127.0.0.1:{cluster.port}")
    commands = [shlex.split(x) for x in lines if x.startswith("idsync-server ")]
    assert len(commands) == 3
    procs: list[tuple[subprocess.Popen[str], int]] = []
    try:
        for command in commands:
            assert command[-1] == "&" and command[command.index("--port") + 1] in DOC_PORTS
            command = command[:-1]
            command[0] = str(BIN / "idsync-server")
            command[command.index("--port") + 1] = "0"
            proc = subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if "listening on http://127.0.0.1:" not in line:
                proc.kill()
                raise AssertionError(line + proc.stdout.read())
            procs.append((proc, int(line.rsplit(":", 1)[1])))
            # Drain the JSON log so that the process never blocks on a full pipe.
            threading.Thread(target=proc.stdout.read, daemon=True).start()
        yield procs
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _nginx_conf(tmp_path: Path, ports: list[int], listen: int) -> Path:
    upstream = block("pg-upstream")
    for doc_port, port in zip(DOC_PORTS, ports, strict=True):
        upstream = upstream.replace(f"127.0.0.1:{doc_port};", f"127.0.0.1:{port};")
    # The /v1/ location of the page's main nginx block, as it is.
    main = re.findall(r"```nginx\n(.*?)```", DEPLOY.read_text(), re.S)[0]
    location = re.search(r"    location /v1/ \{.*?\n    \}\n", main, re.S)
    assert location is not None
    server = f"server {{\n    listen 127.0.0.1:{listen};\n{location.group(0)}}}\n"
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"events {{}}\nhttp {{\naccess_log off;\n{upstream}{server}}}\n")
    return conf


def _waiting(port: int) -> float:
    text = Api(f"http://127.0.0.1:{port}").call("GET", "/metrics").text
    line = next(x for x in text.splitlines() if x.startswith("idsync_waiting_clients "))
    return float(line.split()[1])


def _sync_through(url: str, path: Path, store: str, value: dict[str, Any]) -> Client:
    client = Client(path, url, retry=RetryPolicy(max_attempts=4, sleep=lambda s: None))
    client.store(store).add(value)
    client.sync()
    return client


@pytest.mark.skipif(
    not all(shutil.which(x) for x in ("psql", "pg_dump", "pg_restore")),
    reason="needs PostgreSQL's client programs (psql, pg_dump, pg_restore)",
)
def test_the_several_processes_section_runs_on_postgresql(pg_cluster, tmp_path) -> None:
    _run_lines(block("pg-create"), pg_cluster, tmp_path)
    starter = _start_documented(pg_cluster)
    procs = next(starter)
    clients: list[Client] = []
    try:
        ports = [port for _, port in procs]
        # A client through each process; every one sees every write.
        for i, port in enumerate(ports):
            clients.append(
                _sync_through(f"http://127.0.0.1:{port}", tmp_path / f"c{i}.db", "notes", {"i": i})
            )
        for client in clients:
            client.sync()
        for client in clients:
            assert sorted(r.value["i"] for r in client.store("notes")) == [0, 1, 2]

        # The connections stay within the documented bound: --threads + 2 a process.
        url = pg_cluster.url("idsync")
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'idsync'"
            ).fetchone()
        assert row is not None and 3 <= row[0] <= 3 * (8 + 2)

        if shutil.which("nginx"):
            _through_nginx(tmp_path, ports, procs)

        # The backup lines: a dump that restores, an export of the store.
        _run_lines(block("pg-backup"), pg_cluster, tmp_path)
        exported = [json.loads(x) for x in (tmp_path / "notes.ndjson").read_text().splitlines()]
        assert sum(1 for x in exported if x.get("value", {}) == {"i": 0}) == 1, exported
        with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE idsync_restored OWNER idsync")
        restore = subprocess.run(
            ["pg_restore", "-h", "127.0.0.1", "-p", str(pg_cluster.port), "-U", "idsync",
             "--no-owner", "-d", "idsync_restored", str(tmp_path / "idsync.dump")],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert restore.returncode == 0, restore.stderr
        original = Api(f"http://127.0.0.1:{ports[1]}").pull_all("notes")[0]
        with ServerProcess(pg_cluster.url("idsync_restored")) as restored:
            assert Api(restored.url).pull_all("notes")[0] == original
    finally:
        for client in clients:
            client.close()
        starter.close()


def _through_nginx(
    tmp_path: Path, ports: list[int], procs: list[tuple[subprocess.Popen[str], int]]
) -> None:
    listen = _free_port()
    conf = _nginx_conf(tmp_path, ports, listen)
    directives = f"pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;"
    check = subprocess.run(
        ["nginx", "-t", "-c", str(conf), "-p", str(tmp_path), "-g", directives],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    nginx = subprocess.Popen(
        ["nginx", "-c", str(conf), "-p", str(tmp_path), "-g", "daemon off; " + directives],
        stderr=subprocess.PIPE,
    )
    proxy = f"http://127.0.0.1:{listen}"
    try:
        api = Api(proxy)
        deadline = time.monotonic() + 20
        while True:
            try:
                assert api.call("GET", "/v1/health").status_code == 200
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline and nginx.poll() is None, "nginx did not start"
                time.sleep(0.05)
        # A wait through nginx (on whichever process) wakes for a push through another.
        cursor = api.pull_all("notes")[1]
        answer: list[requests.Response] = []
        waiter = threading.Thread(
            target=lambda: answer.append(
                api.call("POST", "/v1/wait", {"cursors": {"notes": cursor}, "wait": 20})
            )
        )
        waiter.start()
        deadline = time.monotonic() + 10
        while sum(_waiting(port) for port in ports) < 1:  # parked on one of the processes
            assert time.monotonic() < deadline, "the wait never parked"
            time.sleep(0.02)
        direct = Api(f"http://127.0.0.1:{ports[2]}")
        direct.push("notes", "direct", [add(1, "via-direct")])
        pushed = time.monotonic()
        waiter.join(timeout=25)
        assert answer and answer[0].json()["changed"] == ["notes"]
        assert time.monotonic() - pushed < 5
        # One process gone: clients through nginx carry on on the others.
        procs[0][0].kill()
        procs[0][0].wait(timeout=10)
        client = _sync_through(proxy, tmp_path / "via-nginx.db", "notes", {"i": "nginx"})
        try:
            for _ in range(3):
                client.sync()
            assert len(list(client.store("notes"))) == 5
        finally:
            client.close()
    finally:
        nginx.send_signal(signal.SIGQUIT)
        try:
            nginx.wait(timeout=15)
        except subprocess.TimeoutExpired:
            nginx.kill()
            nginx.wait()
