"""The HTTP server: the ASGI app on uvicorn, with guards on every connection.

uvicorn's httptools (llhttp) parser frames requests; what it does not do is
added here, in the one protocol class uvicorn lets us choose:

- a connection limit: past it, a new connection gets ``503 server_busy``
  (our JSON envelope, ``Retry-After``) and is closed;
- deadlines: a request's headers must arrive within ``header_timeout`` of
  the connection opening (first request) or of their first byte (later
  ones; between requests uvicorn closes a connection idle for
  ``timeout_keep_alive``), and its body within ``body_timeout`` of its
  headers; a slow client is dropped and no one else waits on it;
- a cap on the bytes of a request's headers;
- a request that frames its body two ways (Content-Length and
  Transfer-Encoding) is refused before the app sees it;
- the parser's own 400s carry our JSON envelope;
- a response's status line and headers go out in the same send as its
  body (uvicorn writes them apart: two sends, two segments per answer);
- a connection's parked long-polls learn at once that it closed
  (:class:`.asgi.Hangup`), with no task per request watching for it.

The listening socket is bound before anything else starts
(:func:`listen_socket`), so a port in use is a clear error at start.
Stopping (SIGTERM, SIGINT) answers waiting long-polls at once
(``503 shutting_down``) before uvicorn waits for open requests to end.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from types import FrameType
from typing import Any, ClassVar, cast

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from .asgi import HANGUP_KEY, Hangup, HttpError, Response
from .config import ServerConfig
from .observe import REQUEST_ID_HEADER, ObservedApp
from .target import log_safe

#: How long a refused connection stays open so that the client reads the 503.
_REFUSED_LINGER = 1.0


@dataclass(frozen=True)
class Guards:
    """Per-connection limits of the HTTP server."""

    max_connections: int = 10_000
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    max_header_bytes: int = 64 * 1024


def error_response_bytes(err: HttpError) -> bytes:
    """A whole HTTP/1.1 error response in our envelope, closing the connection.

    It carries a request id as every answer does (no request was parsed to
    take one from: a fresh one).
    """
    err.headers.append(("Connection", "close"))
    err.headers.append((REQUEST_ID_HEADER, uuid.uuid4().hex))
    response = Response.error(err)
    headers, payload = response.encode()
    status = f"HTTP/1.1 {response.status} {HTTPStatus(response.status).phrase}\r\n"
    lines = [status.encode("ascii")]
    lines += [name + b": " + value + b"\r\n" for name, value in headers]
    return b"".join(lines) + b"\r\n" + payload


class HeadWithBody:
    """A response cycle's transport that sends the head with the body's first bytes.

    uvicorn writes the status line and headers as soon as the app starts its
    response, then the body: held together, a small answer is one send and
    one segment, which counts when one write answers thousands of clients.
    The head waits for nothing else: the body's first write, a close or
    :meth:`flush` sends it. Everything else goes to the real transport.
    """

    __slots__ = ("_cycle", "_head", "_held", "_transport")

    def __init__(self, transport: asyncio.Transport, cycle: RequestResponseCycle) -> None:
        self._transport = transport
        self._cycle = cycle
        self._head: bytes | None = None
        self._held = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Hold the response's head (its first write once started); send the rest."""
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head + bytes(data))
        elif not self._held and self._cycle.response_started:
            # "100 Continue" is written before the response starts: never held.
            self._held = True
            self._head = bytes(data)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Send a held head now."""
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)

    def close(self) -> None:
        """Send a held head, then close the connection."""
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the guards described in this module."""

    guards: ClassVar[Guards] = Guards()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused = False
        self._deadline: asyncio.TimerHandle | None = None
        self._reading_headers = True
        self._header_bytes = 0
        self._bad_request: str | None = None
        # A 400 held back until the requests read before the bad one are answered.
        self._held_reject: str | None = None
        # Tells this connection's parked long-polls that it closed.
        self._hangup = Hangup()

    # -- connection limit ---------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.guards.max_connections:
            self._refuse(transport)
            return
        super().connection_made(transport)
        self._arm(self.guards.header_timeout)

    def _refuse(self, transport: asyncio.Transport) -> None:
        self._refused = True
        self.transport = transport
        transport.write(
            error_response_bytes(
                HttpError("server_busy", "the server has all the connections it takes")
            )
        )
        if transport.can_write_eof():
            transport.write_eof()
        # Closing at once could reset the connection before the client reads the 503.
        self.loop.call_later(_REFUSED_LINGER, transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if not self._refused:
            super().connection_lost(exc)
            self._hangup.fire()

    # -- deadlines and header size --------------------------------------------

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        # Too slow: drop the connection. An app reading the body sees a disconnect.
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self._refused or self._held_reject is not None:
            return  # nothing after a request that did not parse is read
        if self._reading_headers:
            self._header_bytes += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # as uvicorn does: no upgrade, the request is served as HTTP/1.1
        except httptools.HttpParserError as exc:
            # The parser's reason (e.g. "Content-Length can't be present with
            # Transfer-Encoding") is more use to a client than "invalid request".
            self.logger.warning("invalid HTTP request: %s", log_safe(str(exc)))
            self._reject(self._bad_request or f"invalid HTTP request: {exc}")
            return
        if (
            self._reading_headers
            and self._header_bytes > self.guards.max_header_bytes
            and not self.transport.is_closing()
        ):
            self._reject(f"the request headers are over {self.guards.max_header_bytes} bytes")

    def _reject(self, message: str) -> None:
        self._disarm()
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not cycle.response_complete:
            # The request whose body was being read is the broken one (a bad
            # chunk): its app hears a disconnect instead of waiting for a body
            # that will not come, and this 400 answers it.
            cycle.disconnected = True
            cycle.message_event.set()
        if self._answering():
            # Answers go out in the order the requests came (pipelining): the
            # requests read before this one are answered first, then this 400.
            self._held_reject = message
            return
        self.transport.write(error_response_bytes(HttpError("invalid_request", message)))
        self.transport.close()

    def _answering(self) -> bool:
        """True while a request read earlier on this connection is not yet answered."""
        cycle = self.cycle
        answering = cycle is not None and not cycle.response_complete and not cycle.disconnected
        return bool(self.pipeline) or answering

    def on_response_complete(self) -> None:
        transport = self.cycle.transport if self.cycle is not None else None
        if isinstance(transport, HeadWithBody):
            transport.flush()
        super().on_response_complete()
        if self._held_reject is not None and not self._answering():
            message, self._held_reject = self._held_reject, None
            if not self.transport.is_closing():
                self._reject(message)

    def send_400_response(self, msg: str) -> None:
        """A 400 from uvicorn in our JSON envelope."""
        self._reject(self._bad_request or msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_headers = True
        self._header_bytes = 0
        if self._deadline is None:  # a later request on this connection: its first byte
            self._arm(self.guards.header_timeout)

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._header_bytes = 0
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.guards.max_header_bytes:
            # Raising stops the parser; data_received then answers 400 (our envelope).
            self._bad_request = f"the request headers are over {self.guards.max_header_bytes} bytes"
            raise ValueError(self._bad_request)
        names = {name for name, _ in self.headers}
        if b"content-length" in names and b"transfer-encoding" in names:
            # Framed two ways: a proxy in front may have read it the other way.
            self._bad_request = "both Content-Length and Transfer-Encoding were given"
            raise ValueError(self._bad_request)
        codings = b",".join(value for name, value in self.headers if name == b"transfer-encoding")
        if codings and codings.split(b",")[-1].strip().lower() != b"chunked":
            # The body's length cannot be known (RFC 9112, 6.3): refuse, do not
            # read "until the end" while the client waits for an answer.
            self._bad_request = "a Transfer-Encoding must end with chunked"
            raise ValueError(self._bad_request)
        self._arm(self.guards.body_timeout)
        # uvicorn hands this scope to the app's task, which has not run yet.
        extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
        extensions[HANGUP_KEY] = self._hangup
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.scope is self.scope:  # not an upgrade
            cycle.transport = cast(asyncio.Transport, HeadWithBody(self.transport, cycle))

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()


def protocol_class(guards: Guards) -> type[GuardedHttpProtocol]:
    """A protocol class bound to ``guards`` (uvicorn builds one per connection)."""
    return type("IdsyncHttpProtocol", (GuardedHttpProtocol,), {"guards": guards})


class IdsyncServer(uvicorn.Server):
    """uvicorn's server, telling when it listens and answering long-polls on stop."""

    def __init__(
        self, config: uvicorn.Config, app: ObservedApp, on_listening: Callable[[int], None]
    ) -> None:
        super().__init__(config)
        self.app = app
        self.on_listening = on_listening
        app.watch_connections(lambda: len(self.server_state.connections))

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Listen, then report the port (the one picked, for port 0)."""
        self.app.notifier.attach(asyncio.get_running_loop())
        await super().startup(sockets)
        if self.started:
            self.on_listening(self.servers[0].sockets[0].getsockname()[1])

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Answer waiting long-polls first, then let uvicorn close connections."""
        self.app.begin_shutdown()
        await super().shutdown(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Stop on the first signal, stop hard on a second SIGINT.

        Unlike uvicorn's own, the signal is not raised again after the stop,
        so a clean stop ends the process with status 0.
        """
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True


class ListenError(Exception):
    """The address cannot be listened on (in use, not ours, not an address)."""


def listen_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port``, so that a bad address fails before serving.

    ListenError names the address and the reason (e.g. the port is in use).
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def build_server(
    app: ObservedApp, config: ServerConfig, on_listening: Callable[[int], None]
) -> IdsyncServer:
    """The HTTP server for ``app`` as ``config`` says; ``run(sockets=[...])`` serves
    until a signal (see :func:`listen_socket`)."""
    guards = Guards(
        max_connections=config.max_connections,
        header_timeout=config.header_timeout,
        body_timeout=config.body_timeout,
    )
    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        http=protocol_class(guards),
        loop="asyncio",
        lifespan="off",
        ws="none",
        interface="asgi3",
        # Our own access log escapes what it takes from requests; uvicorn's does not.
        access_log=False,
        log_config=None,
        proxy_headers=False,
        server_header=False,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=5,
        backlog=2048,
    )
    return IdsyncServer(uv_config, app, on_listening)
