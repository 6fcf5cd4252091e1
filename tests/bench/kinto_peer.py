"""Kinto, the closest Python peer: installed in its own virtualenv, run on 127.0.0.1."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import venv
from collections.abc import Iterator
from pathlib import Path

import requests

CACHE = Path.home() / ".cache" / "idsync-bench"
DRIVER = Path(__file__).with_name("kinto_driver.py")

INI = """\
[server:main]
use = egg:waitress#main
host = 127.0.0.1
port = %(http_port)s

[app:main]
use = egg:kinto
kinto.storage_backend = kinto.core.storage.memory
kinto.storage_url =
kinto.cache_backend = kinto.core.cache.memory
kinto.cache_url =
kinto.permission_backend = kinto.core.permission.memory
kinto.permission_url =
kinto.userid_hmac_secret = benchmark-only-secret
multiauth.policies = basicauth
kinto.bucket_create_principals = system.Authenticated

[loggers]
keys = root

[handlers]
keys = console

[formatters]
keys = plain

[logger_root]
level = WARNING
handlers = console

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = plain

[formatter_plain]
format = %(message)s
"""


def ensure_kinto(postgres: bool = False) -> Path:
    """A virtualenv with kinto and kinto-http (made once, then reused); its Python."""
    env = CACHE / "kinto-venv"
    python = env / "bin" / "python"
    marker = env / ".with-postgresql"
    if not (env / "bin" / "kinto").exists() or (postgres and not marker.exists()):
        print("bench: installing kinto and kinto-http into", env, flush=True)
        venv.create(env, with_pip=True)
        package = "kinto[postgresql]" if postgres else "kinto"
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", package, "kinto-http"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if postgres:
            marker.touch()
    return python


def _pg_binary(name: str) -> str:
    candidates = [shutil.which(name), *sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))]
    found = next((c for c in candidates if c), None)
    if found is None:
        raise RuntimeError(f"{name} not found: apt-get install postgresql")
    return found


@contextlib.contextmanager
def postgres_cluster(workdir: Path) -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (Debian's initdb and pg_ctl); its URL."""
    data = workdir / "pg"
    data.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        workdir.chmod(0o755)  # the postgres user must reach its data folder
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run(
        [*as_user, _pg_binary("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    pg_ctl = _pg_binary("pg_ctl")
    subprocess.run(
        [*as_user, pg_ctl, "-D", str(data), "-w", "-l", str(data / "log"), "-o", options, "start"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-m", "fast", "stop"],
            stdout=subprocess.DEVNULL,
            check=False,
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure_kinto(count: int, workdir: Path, postgres: bool = False) -> dict[str, float]:
    """Run Kinto (memory backend, or PostgreSQL) and the driver; the driver's figures."""
    python = ensure_kinto(postgres)
    if not postgres:
        return _measure(python, INI, count, workdir)
    with postgres_cluster(workdir) as url:
        ini_text = INI
        for kind in ("storage", "permission"):
            ini_text = ini_text.replace(
                f"kinto.{kind}_backend = kinto.core.{kind}.memory\nkinto.{kind}_url =",
                f"kinto.{kind}_backend = kinto.core.{kind}.postgresql\nkinto.{kind}_url = {url}",
            )
        return _measure(python, ini_text, count, workdir, migrate=True)


def _measure(
    python: Path, ini_text: str, count: int, workdir: Path, migrate: bool = False
) -> dict[str, float]:
    ini = workdir / "kinto.ini"
    ini.write_text(ini_text)
    if migrate:
        subprocess.run(
            [str(python.parent / "kinto"), "migrate", "--ini", str(ini)],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    port = _free_port()
    server = subprocess.Popen(
        [str(python.parent / "kinto"), "start", "--ini", str(ini), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(url + "/v1/", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        else:
            raise RuntimeError("kinto did not start")
        out = subprocess.run(
            [str(python), str(DRIVER), url, str(count)],
            check=True,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        server.terminate()
        server.wait(timeout=20)


if __name__ == "__main__":  # pragma: no cover - manual check
    print(measure_kinto(int(sys.argv[1]), Path(sys.argv[2]), "--postgres" in sys.argv))
