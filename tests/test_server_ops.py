"""What an operator relies on: the storage queue bound, metrics, request ids and
the access log, configuration checked at start."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from idsync_client.protocol import Change
from idsync_server_ref.api import ServerApp
from idsync_server_ref.config import ServerConfig
from idsync_server_ref.http_server import build_server, listen_socket
from idsync_server_ref.observe import ObservedApp
from idsync_server_ref.process import ServerProcess
from idsync_server_ref.storage import SqliteStorage

from .conftest import Api, add

#: A generous liveness bound; the point is "at once", not a benchmark.
FAST = 2.0


class HeldStorage(SqliteStorage):
    """SQLite storage whose pushes wait until the test lets them go."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.release = threading.Event()
        self.entered = threading.Semaphore(0)

    def push(self, name: str, client_id: str, changes: Sequence[Change]) -> list[Any]:
        self.entered.release()
        assert self.release.wait(30)
        return super().push(name, client_id, changes)


@pytest.fixture
def held_server(tmp_path: Path) -> Iterator[tuple[str, HeldStorage]]:
    """An in-process server with one storage thread, a storage queue of 2 and held pushes."""
    storage = HeldStorage(tmp_path / "s.sqlite3")
    storage.create_store("busy")
    config = ServerConfig(port=0, threads=1, max_storage_queue=2)
    app = ServerApp(storage, config)
    ports: list[int] = []
    server = build_server(ObservedApp(app, config.max_storage_queue), config, ports.append)
    sock = listen_socket("127.0.0.1", 0)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not ports:
            assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{ports[0]}", storage
    finally:
        storage.release.set()
        server.should_exit = True
        thread.join(timeout=20)
        app.close()
        storage.close()


def _push(url: str, key: str) -> requests.Response:
    body = {"client_id": f"c-{key}", "changes": [add(1, key)]}
    return requests.post(f"{url}/v1/stores/busy/push", json=body, timeout=30)


def test_a_full_storage_queue_answers_503_at_once_and_health_still_answers(held_server) -> None:
    url, storage = held_server
    with ThreadPoolExecutor(max_workers=3) as pool:
        # One push holds the only storage thread ...
        first = pool.submit(_push, url, "a")
        assert storage.entered.acquire(timeout=10)
        # ... two more wait for it: the queue is full.
        queued = [pool.submit(_push, url, k) for k in ("b", "c")]
        deadline = time.monotonic() + 10
        while requests.get(f"{url}/metrics", timeout=5).text.count("idsync_storage_queue 2.0") == 0:
            assert time.monotonic() < deadline, "the pushes did not queue"
            time.sleep(0.02)
        for path in ("/v1/stores/busy/push", "/v1/stores/busy/changes", "/v1/stores"):
            started = time.monotonic()
            if path.endswith("push"):
                refused = _push(url, "d")
            else:
                refused = requests.get(url + path, timeout=30)
            assert time.monotonic() - started < FAST
            assert refused.status_code == 503, path
            assert refused.json()["error"]["code"] == "storage_busy"
            assert refused.headers["Retry-After"] == "1"
            assert refused.headers["Idsync-Backoff"] == "5"
        started = time.monotonic()
        health = requests.get(f"{url}/v1/health", timeout=30)
        assert health.status_code == 200 and time.monotonic() - started < FAST
        storage.release.set()
        assert first.result(timeout=30).status_code == 200
        assert [q.result(timeout=30).status_code for q in queued] == [200, 200]
    # The refused push changed nothing; the queued ones were applied.
    changes = requests.get(f"{url}/v1/stores/busy/changes", timeout=30).json()["changes"]
    assert sorted(c["key"] for c in changes) == ["a", "b", "c"]
    metrics = requests.get(f"{url}/metrics", timeout=30).text
    assert "idsync_storage_queue_refusals_total 3.0" in metrics


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', series))
        if series.split("{")[0] == name and found == labels:
            return float(value)
    raise AssertionError(f"no {name} {labels} in:\n{text}")


def test_metrics_count_requests_by_route_template(tmp_path) -> None:
    with ServerProcess(tmp_path / "s.sqlite3") as proc:
        api = Api(proc.url)
        api.create_store("secret-name")
        api.push("secret-name", "c1", [add(1, "a"), add(2, "b")])
        api.push("secret-name", "c1", [add(1, "a")])  # a re-send
        api.call("GET", "/v1/stores/secret-name/records/a")
        response = api.call("GET", "/metrics")
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.text
    assert "secret-name" not in text, "a raw path leaked into the labels"
    push = "/v1/stores/{store}/push"
    assert _metric(text, "idsync_http_requests_total", method="POST", route=push, status="200") == 2
    record = "/v1/stores/{store}/records/{key}"
    assert (
        _metric(text, "idsync_http_requests_total", method="GET", route=record, status="200") == 1
    )
    assert _metric(text, "idsync_http_request_duration_seconds_count", route=push) == 2
    # The re-sent change is answered "applied" again (same seq), and counted again.
    assert _metric(text, "idsync_push_applied_outcomes_total") == 3
    assert _metric(text, "idsync_waiting_clients") == 0
    assert _metric(text, "idsync_open_connections") >= 1
    assert _metric(text, "idsync_storage_errors_total") == 0


def test_metrics_need_the_token_and_can_be_turned_off(tmp_path) -> None:
    with ServerProcess(tmp_path / "s.sqlite3", "--auth-token", "t0ken") as proc:
        api = Api(proc.url)
        assert api.call("GET", "/metrics").status_code == 401
        ok = api.call("GET", "/metrics", headers={"Authorization": "Bearer t0ken"})
        assert ok.status_code == 200 and "idsync_http_requests_total" in ok.text
    with ServerProcess(tmp_path / "s.sqlite3", "--metrics", "off") as proc:
        assert Api(proc.url).call("GET", "/metrics").status_code == 404


def test_request_ids_and_the_json_access_log(tmp_path) -> None:
    args = ("--log-level", "INFO", "--log-format", "json", "--auth-token", "s3cret-token")
    with ServerProcess(tmp_path / "s.sqlite3", *args) as proc:
        api = Api(proc.url)
        auth = {"Authorization": "Bearer s3cret-token"}
        fresh = api.call("GET", "/v1/stores", headers=auth)
        given = api.call("GET", "/v1/stores", headers={**auth, "X-Request-Id": "proxy-42"})
        insane = api.call(
            "GET", "/v1/stores", headers={**auth, "X-Request-Id": "bad id <" + "x" * 80}
        )
        refused = api.call("GET", "/v1/stores")
        ids = [r.headers["Idsync-Request-Id"] for r in (fresh, given, insane, refused)]
        deadline = time.monotonic() + 10
        while sum('"idsync.server.access"' in line for line in proc.log_lines) < 4:
            assert time.monotonic() < deadline, "".join(proc.log_lines)
            time.sleep(0.02)
    assert re.fullmatch(r"[0-9a-f]{32}", ids[0]) and ids[1] == "proxy-42"
    assert re.fullmatch(r"[0-9a-f]{32}", ids[2]) and len(set(ids)) == 4
    entries = [json.loads(line) for line in proc.log_lines if line.startswith("{")]
    access = [e for e in entries if e["logger"] == "idsync.server.access"]
    assert [e["request_id"] for e in access] == ids
    assert [e["status"] for e in access] == [200, 200, 200, 401]
    assert all(e["client"].startswith("127.0.0.1:") for e in access)
    assert all(e["target"] == "/v1/stores" and e["method"] == "GET" for e in access)
    assert "s3cret-token" not in "".join(proc.log_lines)


def _run_server(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "idsync_server_ref", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("IDSYNC_PORT", "80x", "not a port number"),
        ("IDSYNC_PORT", "70000", "not a port number"),
        ("IDSYNC_THREADS", "many", "not a whole number"),
        ("IDSYNC_HEADER_TIMEOUT", "soon", "not a number"),
        ("IDSYNC_MAX_BATCH", "-1", "not a whole number"),
        ("IDSYNC_METRICS", "maybe", "not on or off"),
        ("IDSYNC_LOG_FORMAT", "xml", "log format"),
        ("IDSYNC_MAX_STORAGE_QUEUE", "0", "max_storage_queue"),
        ("IDSYNC_RATE_BURST", "lots", "not a whole number"),
        ("IDSYNC_RATE_LIMIT", "-5", "not a number"),
    ],
)
def test_bad_settings_exit_2_with_a_clear_message(
    tmp_path, variable: str, value: str, says: str
) -> None:
    import os

    env = dict(os.environ, **{variable: value})
    # The flag would win over the variable: --port only where the port is not tested.
    port = [] if variable == "IDSYNC_PORT" else ["--port", "0"]
    result = _run_server("--database", str(tmp_path / "s.sqlite3"), *port, env=env)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "s.sqlite3").exists(), "a bad setting still opened the database"


def test_a_port_in_use_exits_2_and_names_it(tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _run_server("--port", str(port), "--database", str(tmp_path / "s.sqlite3"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "in use" in result.stderr


def test_an_unwritable_database_path_exits_2(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = _run_server("--port", "0", "--database", str(blocker / "s.sqlite3"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot open" in result.stderr and str(blocker) in result.stderr


def test_version() -> None:
    result = _run_server("--version")
    assert result.returncode == 0
    assert re.fullmatch(r"idsync-server \d+\.\d+\.\d+\S*\n", result.stdout)


def test_every_flag_names_its_environment_variable() -> None:
    from idsync_server_ref.cli import build_parser

    parser = build_parser()
    flags = [
        action
        for action in parser._actions
        if action.option_strings and action.dest not in ("help", "version")
    ]
    assert len(flags) > 20
    for action in flags:
        variable = "IDSYNC_" + action.dest.upper()
        assert variable in (action.help or ""), (
            f"{action.option_strings[0]} does not name {variable}"
        )


DEPLOY = Path(__file__).resolve().parent.parent / "docs" / "deploy.md"


def _block(language: str) -> str:
    found = re.findall(rf"```{language}\n(.*?)```", DEPLOY.read_text(), re.S)
    assert len(found) == 1, f"one {language} block expected in docs/deploy.md"
    return found[0]


def test_the_systemd_unit_of_the_deploy_page_starts_and_stops(tmp_path) -> None:
    import os
    import shlex
    import signal

    unit = _block("ini")
    env = dict(os.environ)
    for line in unit.splitlines():
        if line.startswith("Environment="):
            name, _, value = line.removeprefix("Environment=").partition("=")
            env[name] = value
    env["IDSYNC_DATABASE"] = str(tmp_path / "server.sqlite3")  # not /var/lib here
    env["IDSYNC_PORT"] = "0"
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    command = shlex.split(exec_start.removeprefix("ExecStart="))
    assert command[0].endswith("/bin/idsync-server")
    command[0] = str(Path(sys.executable).parent / "idsync-server")
    proc = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, line
        port = int(line.rsplit(":", 1)[1])
        assert requests.get(f"http://127.0.0.1:{port}/v1/health", timeout=10).status_code == 200
        proc.send_signal(signal.SIGTERM)  # the unit's KillSignal
        assert proc.wait(timeout=15) == 0
        log = proc.stdout.read()
        entries = [json.loads(x) for x in log.splitlines() if x.startswith("{")]
        assert any(e["logger"] == "idsync.server.access" for e in entries), log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_container_command_of_the_deploy_page_parses(monkeypatch) -> None:
    from idsync_server_ref.cli import build_parser, config_from_args

    dockerfile = _block("dockerfile")
    env_line = next(line for line in dockerfile.splitlines() if line.startswith("ENV "))
    for pair in env_line.removeprefix("ENV ").split():
        name, _, value = pair.partition("=")
        monkeypatch.setenv(name, value)
    cmd = json.loads(
        next(line for line in dockerfile.splitlines() if line.startswith("CMD ")).removeprefix(
            "CMD "
        )
    )
    assert cmd[0] == "idsync-server"
    config = config_from_args(build_parser().parse_args(cmd[1:]))
    assert config.host == "0.0.0.0" and config.port == 8765 and config.log_format == "json"
    assert str(config.database) == "/data/server.sqlite3"


@pytest.mark.skipif(
    not (shutil.which("nginx") and shutil.which("openssl")), reason="needs nginx and openssl"
)
def test_the_nginx_block_of_the_deploy_page_proxies_with_tls(tmp_path) -> None:
    import signal

    import urllib3

    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=sync.example.com",
            "-keyout",
            str(tmp_path / "key.pem"),
            "-out",
            str(tmp_path / "cert.pem"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        tls_port = probe.getsockname()[1]
    with ServerProcess(tmp_path / "s.sqlite3") as server:
        block = (
            _block("nginx")
            .replace("/etc/ssl/certs/sync.example.com.pem", str(tmp_path / "cert.pem"))
            .replace("/etc/ssl/private/sync.example.com.key", str(tmp_path / "key.pem"))
            .replace("listen 443 ssl;", f"listen 127.0.0.1:{tls_port} ssl;")
            .replace("server 127.0.0.1:8765;", f"server 127.0.0.1:{server.port};")
        )
        conf = tmp_path / "nginx.conf"
        # nginx logs the id it made, to compare with the one the server answered.
        logging = f"log_format ids '$request_id';\naccess_log {tmp_path}/access.log ids;\n"
        conf.write_text(f"events {{}}\nhttp {{\n{logging}{block}}}\n")
        directives = f"pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;"
        check = subprocess.run(
            ["nginx", "-t", "-c", str(conf), "-p", str(tmp_path), "-g", directives],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert check.returncode == 0, check.stderr
        nginx = subprocess.Popen(
            ["nginx", "-c", str(conf), "-p", str(tmp_path), "-g", "daemon off; " + directives],
            stderr=subprocess.PIPE,
        )
        try:
            urllib3.disable_warnings()
            session = requests.Session()
            session.trust_env = False
            deadline = time.monotonic() + 20
            while True:
                try:
                    health = session.get(
                        f"https://127.0.0.1:{tls_port}/v1/health", verify=False, timeout=5
                    )
                    break
                except requests.ConnectionError:
                    assert time.monotonic() < deadline and nginx.poll() is None, (
                        "nginx did not start"
                    )
                    time.sleep(0.05)
            assert health.status_code == 200 and health.json()["status"] == "ok"
            # nginx's $request_id reaches the server and comes back as its request id.
            rid = health.headers["Idsync-Request-Id"]
            deadline = time.monotonic() + 10
            while rid not in (tmp_path / "access.log").read_text():
                assert time.monotonic() < deadline, "the server did not keep nginx's request id"
                time.sleep(0.05)
            metrics = session.get(f"https://127.0.0.1:{tls_port}/metrics", verify=False, timeout=5)
            assert metrics.status_code == 200  # allowed from 127.0.0.1 only
        finally:
            nginx.send_signal(signal.SIGQUIT)
            try:
                nginx.wait(timeout=15)
            except subprocess.TimeoutExpired:
                nginx.kill()
                nginx.wait()
