"""The sockets of an HTTP adapter's connections, so that closing can cut them.

``requests`` closes only the idle connections of its pools; one in use by a
request (a long-poll, or any request to a server that stopped answering)
stays until its read timeout. A client that is closing cuts them instead:
``shutdown`` on the socket makes the blocked read return at once, and the
request fails on its own thread, which then ends.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool


class OpenSockets:
    """The sockets of open connections; :meth:`cut` shuts them all down.

    After :meth:`cut`, a socket that opens is shut down at once: a request
    that was connecting fails too.
    """

    def __init__(self) -> None:
        self._socks: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._cut = False

    def add(self, sock: socket.socket | None) -> None:
        """Track ``sock`` (cut at once if :meth:`cut` was called)."""
        if sock is None:
            return
        with self._lock:
            if not self._cut:
                self._socks.add(sock)
                return
        _shutdown(sock)

    def discard(self, sock: socket.socket | None) -> None:
        """Stop tracking ``sock`` (its connection closed)."""
        with self._lock:
            self._socks.discard(sock)

    def cut(self) -> None:
        """Shut down every tracked socket, and every one opened from now on."""
        with self._lock:
            self._cut = True
            socks, self._socks = list(self._socks), set()
        for sock in socks:
            _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # closed already, or never connected
        sock.shutdown(socket.SHUT_RDWR)


def pool_classes(sockets: OpenSockets) -> dict[str, type[HTTPConnectionPool]]:
    """Connection pool classes (by scheme) whose connections are tracked by ``sockets``."""

    class TrackedHTTPConnection(HTTPConnection):
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            sockets.add(sock)  # cut even while a TLS handshake hangs
            return sock

        def connect(self) -> None:
            super().connect()
            sockets.add(self.sock)

        def close(self) -> None:
            sock = self.sock
            super().close()
            sockets.discard(sock)

    class TrackedHTTPSConnection(HTTPSConnection):
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()
            sockets.add(sock)
            return sock

        def connect(self) -> None:
            super().connect()
            sockets.add(self.sock)  # the TLS socket wrapping the one above

        def close(self) -> None:
            sock = self.sock
            super().close()
            sockets.discard(sock)

    class TrackedHTTPPool(HTTPConnectionPool):
        ConnectionCls: Any = TrackedHTTPConnection

    class TrackedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls: Any = TrackedHTTPSConnection

    return {"http": TrackedHTTPPool, "https": TrackedHTTPSPool}
