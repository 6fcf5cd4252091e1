"""A TCP fault proxy on 127.0.0.1 between idsync clients and a real server.

The proxy reads each HTTP/1.1 request from the client's connection (head and
``Content-Length`` body; requests does not pipeline), forwards it to the
server on a connection of its own, and relays the whole answer back. Before
each request it draws a fault with a seeded RNG:

- ``reset_request``: forward part of the request, then reset both sides
  (RST to the client; the server sees a request cut short);
- ``cut_response``: forward the request, relay part of the answer, then
  reset the client's connection;
- ``lose_answer``: forward the whole request, let the server answer (it has
  committed), drop the answer and reset the client's connection;
- ``black_hole``: read the request, never forward it, never answer, until
  the client gives up (its read timeout), the proxy heals, or a bound passes;
- ``delay``: hold the request for a bounded latency, then forward it.

On each new connection it may also ``refuse`` (RST at once). The link can go
down (:meth:`FaultProxy.down`: the listener closes, so connects are refused,
and every open connection is reset) and up again on the same port, by hand
or on a seeded schedule (:meth:`FaultProxy.flap`). :attr:`FaultProxy.counts`
counts what was injected, by kind.

Every wait is bounded and every thread is a daemon that ends at
:meth:`FaultProxy.close`.
"""

from __future__ import annotations

import contextlib
import functools
import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

#: The per-request faults, in the order they are drawn.
REQUEST_FAULTS = ("reset_request", "cut_response", "lose_answer", "black_hole", "delay")

#: The longest a black hole holds a request (the client's read timeout is shorter).
BLACK_HOLE_MAX = 30.0

#: A client connection idle this long is closed (the client reconnects).
IDLE_MAX = 60.0

_HEAD_MAX = 64 * 1024


@dataclass(frozen=True)
class FaultPlan:
    """How often each fault is drawn: per new connection (``refuse``), per request (others).

    The probabilities of the per-request faults add up to at most 1; the
    rest of the requests go through untouched. ``max_delay`` bounds a delay.
    """

    refuse: float = 0.0
    reset_request: float = 0.0
    cut_response: float = 0.0
    lose_answer: float = 0.0
    black_hole: float = 0.0
    delay: float = 0.0
    max_delay: float = 0.2

    def __post_init__(self) -> None:
        if sum(getattr(self, k) for k in REQUEST_FAULTS) > 1.0:
            raise ValueError("the per-request fault probabilities add up to more than 1")


#: No fault at all: a transparent proxy.
CLEAN = FaultPlan()


class _Cut(Exception):
    """The connection was cut (by a fault, the link going down, or the peer)."""


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with an RST rather than a FIN (SO_LINGER 0)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


def _head_end(buf: bytes) -> int:
    end = buf.find(b"\r\n\r\n")
    return -1 if end < 0 else end + 4


def _headers(head: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            fields[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return fields


class _Reader:
    """Reads HTTP messages from one socket, keeping what was read past a message."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def _more(self) -> bool:
        try:
            data = self.sock.recv(65536)
        except (TimeoutError, OSError):
            return False
        self.buf += data
        return bool(data)

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._more():
                raise _Cut("the peer closed mid-message")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def head(self) -> bytes | None:
        """The next message's head; None when the peer closed before sending one."""
        while _head_end(self.buf) < 0:
            if len(self.buf) > _HEAD_MAX:
                raise _Cut("a head too long")
            if not self._more():
                if self.buf:
                    raise _Cut("the peer closed mid-head")
                return None
        return self._take(_head_end(self.buf))

    def body(self, head: bytes, *, response: bool) -> bytes:
        """The body after ``head``: by Content-Length, chunked, or (answers) up to the close."""
        fields = _headers(head)
        if response:
            status = int(head.split(b" ", 2)[1])
            if status in (204, 304) or 100 <= status < 200:
                return b""
        if "content-length" in fields:
            return self._take(int(fields["content-length"]))
        if "chunked" in fields.get("transfer-encoding", "").lower():
            out = b""
            while True:
                while b"\r\n" not in self.buf:
                    if not self._more():
                        raise _Cut("the peer closed mid-chunk")
                line, _, _ = self.buf.partition(b"\r\n")
                size = int(line.split(b";")[0], 16)
                chunk = self._take(len(line) + 2 + size + 2)
                out += chunk
                if size == 0:
                    return out
        if not response:
            return b""
        while self._more():
            pass
        data, self.buf = self.buf, b""
        return data


class FaultProxy:
    """A fault-injecting TCP proxy from ``127.0.0.1:<port>`` to an upstream server.

    Use as a context manager or call :meth:`start` and :meth:`close`.
    ``seed`` makes the drawn faults repeatable (thread scheduling aside).
    """

    def __init__(
        self, upstream: tuple[str, int], *, seed: int = 0, plan: FaultPlan = CLEAN
    ) -> None:
        self.upstream = upstream
        self.port = 0
        self.plan = plan
        self.counts: Counter[str] = Counter()
        self.requests = 0
        self.connections = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._heal = threading.Event()  # set: release every held black hole
        self._listener: socket.socket | None = None
        self._link_up = threading.Event()
        self._open: set[socket.socket] = set()
        self._forced: list[str] = []
        self._threads: list[threading.Thread] = []

    # -- lifetime -----------------------------------------------------------

    @property
    def url(self) -> str:
        """The proxy's base URL for clients, e.g. ``http://127.0.0.1:41234``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        """Listen on a free port of 127.0.0.1 and start accepting."""
        self._listen()
        self._spawn(self._accept_loop, "faultproxy-accept")
        return self

    def close(self) -> None:
        """Stop: close the listener and every connection; wait for the threads (bounded)."""
        self._closed.set()
        self._heal.set()
        self._link_up.set()
        self._drop_listener()
        self._reset_open()
        for thread in list(self._threads):
            thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- controls -------------------------------------------------------------

    def set_plan(self, plan: FaultPlan) -> None:
        """Draw faults from ``plan`` from now on."""
        with self._lock:
            self.plan = plan
        if plan == CLEAN:
            return
        self._heal.clear()

    def force(self, kind: str, count: int = 1) -> None:
        """The next ``count`` requests (or connections, for ``refuse``) get ``kind``."""
        if kind not in (*REQUEST_FAULTS, "refuse"):
            raise ValueError(f"unknown fault {kind!r}")
        with self._lock:
            self._forced += [kind] * count
        self._heal.clear()

    def heal(self) -> None:
        """No more faults: a clean plan, the link up, every black hole released."""
        with self._lock:
            self.plan = CLEAN
            self._forced.clear()
        self._heal.set()
        self.up()

    def down(self) -> None:
        """The link goes down: connects are refused, open connections are reset."""
        with self._lock:
            if not self._link_up.is_set():
                return
            self._link_up.clear()
            self.counts["link_down"] += 1
        self._drop_listener()
        self._reset_open()

    def up(self) -> None:
        """The link comes back, on the same port."""
        with self._lock:
            if self._link_up.is_set() or self._closed.is_set():
                return
            self._listen()

    def flap(self, seed: int, up: tuple[float, float], down: tuple[float, float]) -> None:
        """Take the link down and up on a random schedule until :meth:`heal` or :meth:`close`.

        Each up period lasts between ``up[0]`` and ``up[1]`` seconds, each
        down period between ``down[0]`` and ``down[1]``.
        """
        rng = random.Random(seed)
        self._heal.clear()

        def schedule() -> None:
            while not (self._heal.is_set() or self._closed.is_set()):
                if self._heal.wait(rng.uniform(*up)):
                    break
                self.down()
                self._heal.wait(rng.uniform(*down))
                self.up()
            self.up()

        self._spawn(schedule, "faultproxy-flap")

    @property
    def injected(self) -> int:
        """Faults injected so far, every kind (link-down periods included)."""
        with self._lock:
            return sum(self.counts.values())

    # -- machinery --------------------------------------------------------------

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _listen(self) -> None:
        """Open the listener (on ``self.port`` once it is known); caller may hold the lock."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        listener.settimeout(0.1)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._link_up.set()

    def _drop_listener(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            # shutdown() stops the listening at once: a close() alone waits for
            # the accept thread's poll to let go of the socket.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()

    def _reset_open(self) -> None:
        with self._lock:
            victims, self._open = list(self._open), set()
        for sock in victims:
            # shutdown() wakes the thread blocked reading it (a close() from
            # this thread alone would leave it waiting for its timeout).
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            _reset(sock)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            listener = self._listener
            if listener is None or not self._link_up.is_set():
                self._link_up.wait(0.1)
                continue
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self.connections += 1
                if self._forced and self._forced[0] == "refuse":
                    self._forced.pop(0)
                    refuse = True
                else:
                    refuse = self._rng.random() < self.plan.refuse
                if refuse:
                    self.counts["refuse"] += 1
                else:
                    self._open.add(conn)
            if refuse:
                _reset(conn)
                continue
            self._spawn(functools.partial(self._serve, conn), "faultproxy-conn")

    def _draw(self) -> tuple[str | None, float]:
        with self._lock:
            self.requests += 1
            plan = self.plan
            if self._forced and self._forced[0] != "refuse":
                kind: str | None = self._forced.pop(0)
            else:
                kind, roll = None, self._rng.random()
                for name in REQUEST_FAULTS:
                    roll -= getattr(plan, name)
                    if roll < 0:
                        kind = name
                        break
            if kind is not None:
                self.counts[kind] += 1
            return kind, self._rng.random()

    def _serve(self, conn: socket.socket) -> None:
        reader = _Reader(conn)
        try:
            conn.settimeout(IDLE_MAX)  # the link may have gone down already: inside the try
            while not self._closed.is_set():
                head = reader.head()
                if head is None:
                    break
                conn.settimeout(IDLE_MAX)
                request = head + reader.body(head, response=False)
                kind, fraction = self._draw()
                if not self._exchange(conn, reader, request, kind, fraction):
                    break
        except (_Cut, OSError, ValueError):
            pass
        finally:
            with self._lock:
                self._open.discard(conn)
            _reset(conn)

    def _exchange(
        self,
        conn: socket.socket,
        reader: _Reader,
        request: bytes,
        kind: str | None,
        fraction: float,
    ) -> bool:
        """One request and its answer under fault ``kind``; False when the connection ends."""
        if kind == "black_hole":
            # Hold the request unanswered until the client gives up (it closes),
            # the proxy heals, or the bound passes.
            conn.settimeout(0.1)
            waited = 0.0
            while waited < BLACK_HOLE_MAX and not self._heal.is_set():
                try:
                    if not conn.recv(65536):
                        break
                except TimeoutError:
                    waited += 0.1
            return False
        if kind == "delay":
            self._heal.wait(fraction * self.plan.max_delay)
        upstream = socket.create_connection(self.upstream, timeout=IDLE_MAX)
        with self._lock:
            self._open.add(upstream)
        try:
            if kind == "reset_request":
                upstream.sendall(request[: int(len(request) * fraction)])
                return False
            upstream.sendall(request)
            answers = _Reader(upstream)
            head = answers.head()
            if head is None:
                raise _Cut("the server closed without answering")
            answer = head + answers.body(head, response=True)
            if kind == "lose_answer":
                return False  # the server committed; the client never hears
            if kind == "cut_response":
                conn.sendall(answer[: max(1, int(len(answer) * fraction))])
                return False
            conn.sendall(answer)
            return b"connection: close" not in head.lower()
        finally:
            with self._lock:
                self._open.discard(upstream)
            upstream.close()


__all__ = ["CLEAN", "REQUEST_FAULTS", "FaultPlan", "FaultProxy"]
