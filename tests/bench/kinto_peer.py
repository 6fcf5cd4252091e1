"""Kinto, the closest Python peer: installed in its own virtualenv, run on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import venv
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


def ensure_kinto() -> Path:
    """A virtualenv with kinto and kinto-http (made once, then reused); its Python."""
    env = CACHE / "kinto-venv"
    python = env / "bin" / "python"
    if not (env / "bin" / "kinto").exists():
        print("bench: installing kinto and kinto-http into", env, flush=True)
        venv.create(env, with_pip=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "kinto", "kinto-http"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    return python


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure_kinto(count: int, workdir: Path) -> dict[str, float]:
    """Run Kinto (memory backend) and the driver; the driver's figures."""
    python = ensure_kinto()
    ini = workdir / "kinto.ini"
    ini.write_text(INI)
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
    print(measure_kinto(int(sys.argv[1]), Path(sys.argv[2])))
