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

Faults apply to the requests of that one client, at the HTTP layer (a
``requests`` transport adapter), so the real server and the real client code
run unchanged. ``Network.log`` records what happened to each request.

``ServerProcess`` lives in the server package
(``from idsync_server_ref.process import ServerProcess``); it is re-exported
here on first use, so importing this kit does not import the server.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests

from . import jsoncodec
from .protocol import ERRORS
from .transport import KeepAliveAdapter

if TYPE_CHECKING:
    from idsync_server_ref.process import ServerProcess

    from .client import Client

__all__ = ["Fault", "Network", "ServerProcess"]


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
        """Every request fails as with a refused connection, until :meth:`online`."""
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
