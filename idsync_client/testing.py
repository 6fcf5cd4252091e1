"""A kit for testing apps that embed idsync: break the network in one line.

::

    from idsync_client import Client
    from idsync_client.testing import Network, ServerProcess

    def test_my_app_works_offline(tmp_path):
        with ServerProcess(tmp_path / "server.db") as server, \\
             Client(tmp_path / "app.db", server.url) as client:
            net = Network(client)
            net.offline()                        # connection refused from now on
            client.store("notes").add({"t": 1})  # still works, locally
            net.online()
            net.lose_next_response()             # server commits, the answer is lost
            net.fail_next(503, retry_after=1)    # one 503 with Retry-After
            net.timeout_next()                   # one read timeout
            net.slow(0.2)                        # every request takes 0.2 s more
            client.sync()

    def test_two_devices_converge(tmp_path):
        with server_and_client(tmp_path) as (server, laptop), \\
             Client(tmp_path / "phone.db", server.url) as phone:
            phone.store("notes")                 # a client syncs the stores it opened
            phone.start()
            key = laptop.store("notes").add({"t": 1})
            wait_until_synced([laptop, phone])   # both at the server's head
            assert phone.store("notes").get(key) is not None

Faults apply to the requests of that one client, at the HTTP layer (a
``requests`` transport adapter), so the real server and the real client code
run unchanged. ``Network.log`` records what happened to each request.

Apps can also enable the fixtures ``idsync_server`` and ``idsync_client``
with ``pytest_plugins = ["idsync_client.pytest_plugin"]``.

``ServerProcess`` lives in the server package
(``from idsync_server_ref.process import ServerProcess``); it is re-exported
here on first use, so importing this kit does not import the server.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from . import jsoncodec
from .client import Client
from .errors import IdsyncError, StoreNotFound
from .protocol import ERRORS, Cursor
from .transport import HttpTransport, KeepAliveAdapter

if TYPE_CHECKING:
    from idsync_server_ref.process import ServerProcess

__all__ = ["Fault", "Network", "ServerProcess", "server_and_client", "wait_until_synced"]


def __getattr__(name: str) -> Any:
    """``ServerProcess``, imported from the server package when first asked for."""
    if name == "ServerProcess":
        from idsync_server_ref.process import ServerProcess

        globals()[name] = ServerProcess
        return ServerProcess
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class Fault:
    """One planned fault: ``kind`` is ``lose``, ``status`` or ``timeout``."""

    kind: str
    status: int = 503
    retry_after: float | None = None
    code: str | None = None


class _FaultAdapter(KeepAliveAdapter):
    def __init__(self, network: Network) -> None:
        super().__init__()
        self.network = network

    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        return self.network._send(super().send, request, *args, **kwargs)


class Network:
    """Controls the network between one :class:`~idsync_client.Client` and its server."""

    def __init__(self, client: Client) -> None:
        if client.transport is None:
            raise ValueError("the client has no server to cut off")
        self.client = client
        self._lock = threading.Lock()
        self._offline = False
        self._delay = 0.0
        self._faults: list[Fault] = []
        self.log: list[tuple[str, str, str]] = []
        adapter = _FaultAdapter(self)
        client.transport.session.mount("http://", adapter)
        client.transport.session.mount("https://", adapter)

    # -- one line each --------------------------------------------------------

    def offline(self) -> None:
        """Every request fails as with a refused connection, until :meth:`online`;
        an answer still on its way (a long-poll sent before) is lost."""
        self._offline = True

    def online(self) -> None:
        """Undo :meth:`offline` and nudge background sync to try now."""
        self._offline = False
        self.client.kick()

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """``with net.down():`` the network is down inside the block."""
        self.offline()
        try:
            yield
        finally:
            self.online()

    def lose_next_response(self, count: int = 1) -> None:
        """The next ``count`` requests reach the server, but their answers are lost."""
        self._plan(Fault("lose"), count)

    def fail_next(
        self,
        status: int = 503,
        *,
        retry_after: float | None = None,
        code: str | None = None,
        count: int = 1,
    ) -> None:
        """The next ``count`` requests get ``status`` (and Retry-After), never reaching the server."""
        self._plan(Fault("status", status, retry_after, code), count)

    def timeout_next(self, count: int = 1) -> None:
        """The next ``count`` requests time out (after reaching the server)."""
        self._plan(Fault("timeout"), count)

    def slow(self, seconds: float) -> None:
        """Add ``seconds`` of latency to every request (0 to stop)."""
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        self._delay = seconds

    def heal(self) -> None:
        """Drop every planned fault, latency and the offline state."""
        with self._lock:
            self._faults.clear()
        self._delay = 0.0
        self.online()

    def _plan(self, fault: Fault, count: int) -> None:
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self._faults.extend([fault] * count)

    # -- the adapter's hook -----------------------------------------------------

    def _send(
        self, send: Any, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        what = f"{request.method} {request.path_url}"
        if self._delay:
            time.sleep(self._delay)
        if self._offline:
            self.log.append((what, "offline", ""))
            raise requests.ConnectionError(f"[idsync.testing] network is down: {what}")
        # Planned faults are for sync requests: the client's one-off question
        # about the server's limits does not use them up.
        health = request.path_url.endswith("/v1/health")
        with self._lock:
            fault = self._faults.pop(0) if self._faults and not health else None
        if fault is None:
            response: requests.Response = send(request, *args, **kwargs)
            if self._offline:
                # The network went down while the answer was on its way (a
                # long-poll sent before offline()): it never arrives.
                self.log.append((what, "offline", str(response.status_code)))
                raise requests.ConnectionError(f"[idsync.testing] network went down: {what}")
            self.log.append((what, "ok", str(response.status_code)))
            return response
        if fault.kind == "status":
            self.log.append((what, "status", str(fault.status)))
            return self._fake_response(request, fault)
        response = send(request, *args, **kwargs)  # the server does the work...
        self.log.append((what, fault.kind, str(response.status_code)))
        if fault.kind == "timeout":
            raise requests.ReadTimeout(f"[idsync.testing] read timed out: {what}")
        raise requests.ConnectionError(f"[idsync.testing] response lost: {what}")

    @staticmethod
    def _fake_response(request: requests.PreparedRequest, fault: Fault) -> requests.Response:
        code = fault.code or next(
            (c for c, spec in ERRORS.items() if spec.status == fault.status), "internal_error"
        )
        retryable = ERRORS[code].retryable if code in ERRORS else fault.status >= 500
        response = requests.Response()
        response.status_code = fault.status
        response.reason = "Injected"
        response.request = request
        response.url = request.url or ""
        response.headers["Content-Type"] = "application/json"
        if fault.retry_after is not None:
            response.headers["Retry-After"] = f"{fault.retry_after:g}"
        response._content = jsoncodec.dumps(
            {
                "error": {
                    "code": code,
                    "message": "injected by idsync.testing",
                    "retryable": retryable,
                    "details": {},
                }
            }
        ).encode()
        return response


# -- waiting for convergence ---------------------------------------------------


def _clients(clients: Client | Iterable[Client]) -> list[Client]:
    group = [clients] if isinstance(clients, Client) else list(clients)
    if not group:
        raise ValueError("no client to wait for")
    for client in group:
        if not isinstance(client, Client):
            raise TypeError(f"expected a Client, got {type(client).__name__}")
        if client.transport is None:
            raise ValueError(f"client {client.path.name} has no server to sync with")
        if not client.syncing_in_background:
            raise ValueError(
                f"client {client.path.name} is not syncing in the background: call"
                " client.start() first (client.sync() itself returns when it is done)"
            )
    return group


def _lagging(
    client: Client, probe: HttpTransport, heads: dict[tuple[str, str], Cursor | str]
) -> list[str]:
    """What keeps ``client`` from being synced now; empty when it is."""
    name = client.path.name
    lagging = []
    pending = client.db.pending_count()
    if pending:
        lagging.append(f"{name}: {pending} change(s) pending")
    for store in client.stores:
        key = (probe.base_url, store)
        if key not in heads:
            try:
                answer = probe.request("GET", f"/v1/stores/{store}")
                heads[key] = Cursor.decode(answer["head_cursor"])
            except StoreNotFound:
                heads[key] = "not on the server yet"
            except (IdsyncError, KeyError, ValueError) as exc:
                heads[key] = f"server's head unknown ({exc})"
        head = heads[key]
        if isinstance(head, str):
            lagging.append(f"{name}, store {store!r}: {head}")
            continue
        local = client.db.cursor(store)
        mine = Cursor.decode(local) if local else None
        if mine is None:
            lagging.append(f"{name}, store {store!r}: never pulled (server at seq {head.seq})")
        elif mine.epoch != head.epoch:
            lagging.append(f"{name}, store {store!r}: on another history than the server's")
        elif mine.seq < head.seq:
            lagging.append(f"{name}, store {store!r}: pulled to seq {mine.seq} of {head.seq}")
    return lagging


def wait_until_synced(
    clients: Client | Iterable[Client], timeout: float = 10.0, *, interval: float = 0.02
) -> None:
    """Wait until the clients are synced with their server, or raise TimeoutError.

    Synced means that, at one check: no client has a change pending in its
    outbox (rejected changes are not pending), and for every store of every
    client (``client.stores``) the server has the store and the client's
    cursor is on the server's history (same epoch) at or past the server's
    head sequence, asked of the server in that check. So each client holds
    every change any client had pushed by then, and clients synced together
    hold the same records. A store a client has not opened (nor synced
    before) is not its to sync: open it on every client that should have it.

    The clients must be syncing in the background (``client.start()``):
    this only waits, nudging them (``client.kick()``) every ``interval``
    seconds, and asks the server for its heads on a connection of its own,
    so a :class:`Network`'s planned faults are not used up by the asking.
    ``TimeoutError`` after ``timeout`` seconds names what was still pending
    or behind; ``ValueError`` for a client without a server or not started.
    """
    group = _clients(clients)
    if timeout <= 0 or interval <= 0:
        raise ValueError("timeout and interval must be > 0")
    probes: dict[str, HttpTransport] = {}
    checks: list[tuple[Client, HttpTransport]] = []
    for client in group:
        assert client.transport is not None
        url = client.transport.base_url
        checks.append((client, probes.setdefault(url, HttpTransport(url, client.transport.token))))
    deadline = time.monotonic() + timeout
    pause = threading.Event()  # never set: a bounded wait between checks
    try:
        while True:
            heads: dict[tuple[str, str], Cursor | str] = {}
            lagging = [line for client, probe in checks for line in _lagging(client, probe, heads)]
            if not lagging:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"not synced after {timeout:g} s: " + "; ".join(lagging))
            for client in group:
                client.kick()
            pause.wait(interval)
    finally:
        for probe in probes.values():
            probe.close()


@contextlib.contextmanager
def server_and_client(
    folder: str | Path, *, start: bool = True, server_args: Iterable[str] = (), **client_options: Any
) -> Iterator[tuple[ServerProcess, Client]]:
    """A reference server and a client connected to it, in one line; both stopped after.

    ``with server_and_client(tmp_path) as (server, client):`` starts a server
    on a free port of 127.0.0.1 with its database ``server.sqlite3`` in
    ``folder``, and opens ``client.sqlite3`` there as a :class:`Client` of it,
    syncing in the background unless ``start=False``. ``server_args`` are
    ``idsync-server`` flags; ``client_options`` go to :class:`Client`.
    """
    from idsync_server_ref.process import ServerProcess

    folder = Path(folder)
    with (
        ServerProcess(folder / "server.sqlite3", *server_args) as server,
        Client(folder / "client.sqlite3", server.url, **client_options) as client,
    ):
        if start:
            client.start()
        yield server, client
