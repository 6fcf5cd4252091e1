"""ASGI plumbing: requests and responses as the endpoints in :mod:`.api` see them.

The HTTP parser (uvicorn's) frames requests; this module reads what the
endpoints need, strictly: the raw path split before decoding, the query from
its bytes, the body only after its declared size passed the limit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from idsync_client import jsoncodec
from idsync_client.protocol import ERRORS, ErrorBody, Limits

from .errors import RETRY_AFTER, HttpError, error_for
from .target import parse_query, path_segments

__all__ = [
    "HANGUP_KEY",
    "ClientGone",
    "Hangup",
    "HttpError",
    "Receive",
    "Request",
    "Response",
    "Scope",
    "Send",
    "bool_param",
    "error_envelope",
    "error_for",
    "float_param",
    "int_param",
]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class ClientGone(Exception):
    """The client hung up before its request was read: there is no one to answer."""


#: Where the HTTP server puts a connection's :class:`Hangup` in a request's
#: ``scope["extensions"]``.
HANGUP_KEY = "idsync.hangup"


class Hangup:
    """Tells, by callbacks on the event loop, that a connection closed.

    The HTTP server fires it when the connection is lost, so a parked
    long-poll learns that its client left without a task reading
    ``receive()`` for it.
    """

    __slots__ = ("_callbacks", "closed")

    def __init__(self) -> None:
        self.closed = False
        self._callbacks: dict[Callable[[], None], None] = {}

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the connection closes; at once if it has."""
        if self.closed:
            callback()
        else:
            self._callbacks[callback] = None

    def unwatch(self, callback: Callable[[], None]) -> None:
        """Forget ``callback`` (no error if it was not watched)."""
        self._callbacks.pop(callback, None)

    def fire(self) -> None:
        """The connection closed: call every callback, once."""
        if self.closed:
            return
        self.closed = True
        callbacks, self._callbacks = self._callbacks, {}
        for callback in callbacks:
            callback()


def error_envelope(err: HttpError) -> dict[str, Any]:
    """The error envelope ``{"error": {code, message, retryable, details}}``."""
    spec = ERRORS[err.code]
    wire: dict[str, Any] = ErrorBody(err.code, err.message, spec.retryable, err.details).to_wire()
    return wire


@dataclass
class Response:
    """A response: status, JSON body text (already encoded) and extra headers."""

    status: int
    body: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(cls, obj: Any, status: int = 200) -> Response:
        """A response whose body is ``obj`` encoded as JSON."""
        return cls(status, jsoncodec.dumps(obj))

    @classmethod
    def error(cls, err: HttpError) -> Response:
        """The error envelope for ``err``, with Retry-After where it applies."""
        response = cls.json(error_envelope(err), ERRORS[err.code].status)
        response.headers.extend(err.headers)
        given = any(name.lower() == "retry-after" for name, _ in err.headers)
        if err.code in RETRY_AFTER and not given:
            response.headers.append(("Retry-After", str(RETRY_AFTER[err.code])))
        return response

    def encode(self) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """The header list and body bytes, Content-Type and Content-Length included."""
        payload = self.body.encode("utf-8")
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode("ascii")),
            *(
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in self.headers
            ),
        ]
        return headers, payload

    async def send(self, send: Send, head: bool = False) -> None:
        """Hand the response to the server; for HEAD, the headers alone."""
        headers, payload = self.encode()
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        # HEAD: the same headers, Content-Length included, and no body.
        await send({"type": "http.response.body", "body": b"" if head else payload})


class Request:
    """The parts of an ASGI request the endpoints use."""

    def __init__(self, scope: Scope, receive: Receive, limits: Limits) -> None:
        self.limits = limits
        self._receive = receive
        self.method: str = scope["method"]
        # The path as sent: routing splits it on "/" before decoding, so "%2F"
        # stays in its segment.
        self.raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        self.raw_query: bytes = scope.get("query_string", b"")
        self.headers: dict[str, str] = {}
        self.repeated: set[str] = set()
        for raw_name, raw_value in scope.get("headers", ()):
            name = raw_name.decode("latin-1").lower()
            if name in self.headers:
                self.repeated.add(name)
            else:
                self.headers[name] = raw_value.decode("latin-1")
        self.segments = path_segments(self.raw_path)
        self._query = parse_query(self.raw_query)
        #: The peer's address (before any proxy); rate limits key on it before auth.
        self.client_host: str = str((scope.get("client") or ("-",))[0])
        #: Who sent the request, once authenticated (an ``auth.Principal``).
        self.principal: object = None
        extensions = scope.get("extensions") or {}
        #: The connection's hang-up signal when the HTTP server gives one.
        self.hangup: Hangup | None = extensions.get(HANGUP_KEY)

    def header(self, name: str) -> str | None:
        """A request header by its HTTP name (any case), or None."""
        return self.headers.get(name.lower())

    def query(self, allowed: Iterable[str]) -> dict[str, str]:
        """The query parameters, each at most once and each one of ``allowed``."""
        allowed = set(allowed)
        unknown = set(self._query) - allowed
        if unknown:
            raise HttpError("invalid_request", f"unknown query parameters {sorted(unknown)}")
        result: dict[str, str] = {}
        for name, values in self._query.items():
            if len(values) != 1:
                raise HttpError("invalid_request", f"query parameter {name!r} given twice")
            result[name] = values[0]
        return result

    def declared_length(self) -> int | None:
        """The body's Content-Length, checked against the limit before any byte is read.

        A request that frames its body two ways (Content-Length and
        Transfer-Encoding) is refused: that is how requests are smuggled.
        """
        if "transfer-encoding" in self.headers and "content-length" in self.headers:
            raise framing_error("both Content-Length and Transfer-Encoding were given")
        text = self.header("Content-Length")
        if text is None:
            return None
        if "content-length" in self.repeated or not (text.isascii() and text.isdigit()):
            raise framing_error("bad Content-Length")
        length = int(text)
        if length > self.limits.max_body_bytes:
            raise too_large(length, self.limits.max_body_bytes)
        return length

    async def json_body(self) -> Any:
        """The body as JSON, after checking its type and size."""
        return parse_json_checked(await self.json_bytes())[0]

    async def json_bytes(self) -> bytes:
        """The body's bytes after checking its type and size; parse them with
        :func:`parse_json_checked`."""
        content_type = (self.header("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise HttpError("unsupported_media_type", "send the body as application/json")
        self.declared_length()
        return await self.read_body()

    async def read_body(self) -> bytes:
        """The whole body, never more than ``max_body_bytes`` of it (chunked ones too)."""
        limit = self.limits.max_body_bytes
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large(size, limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def disconnected(self) -> None:
        """Return when the client hangs up (the body must have been read)."""
        while (await self._receive())["type"] != "http.disconnect":
            pass


def parse_json_checked(data: bytes) -> tuple[Any, bool]:
    """A body's JSON, and whether its values need no range check
    (``jsoncodec.loads_checked``); 400 malformed_json if it is not JSON."""
    try:
        return jsoncodec.loads_checked(data)
    except jsoncodec.JSONDecodeError as exc:
        raise HttpError("malformed_json", f"the body is not valid JSON: {exc}") from None


def framing_error(message: str) -> HttpError:
    """A 400 for a request whose body cannot be framed safely; the connection closes."""
    error = HttpError("invalid_request", message)
    error.headers.append(("Connection", "close"))
    return error


def too_large(size: int, limit: int) -> HttpError:
    """The 413 for a body over the limit; the connection closes (the rest is unread)."""
    error = HttpError("body_too_large", f"body of {size} bytes is over the {limit} byte limit")
    error.headers.append(("Connection", "close"))
    return error


def int_param(params: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within ``[low, high]``, or a clear 400."""
    text = params.get(name)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()) or len(text) > 19:
        raise HttpError("invalid_request", f"{name} must be a whole number")
    value = int(text)
    if not low <= value <= high:
        raise HttpError("invalid_request", f"{name} must be between {low} and {high}")
    return value


def float_param(params: dict[str, str], name: str, high: float) -> float:
    """A non-negative number of seconds up to ``high`` (0 when absent)."""
    text = params.get(name)
    if text is None:
        return 0.0
    try:
        # Python's float() also takes "1_0" and padding spaces: not numbers here
        # (the integer parameters refuse them too).
        if "_" in text or text != text.strip():
            raise ValueError(text)
        value = float(text)
    except ValueError:
        raise HttpError("invalid_request", f"{name} must be a number of seconds") from None
    if not 0 <= value <= high:
        raise HttpError("invalid_request", f"{name} must be between 0 and {high:g} seconds")
    return value


def bool_param(params: dict[str, str], name: str) -> bool:
    """A flag given as ``1``/``0``/``true``/``false`` (false when absent)."""
    text = params.get(name, "0").lower()
    if text in ("1", "true"):
        return True
    if text in ("0", "false"):
        return False
    raise HttpError("invalid_request", f"{name} must be true or false")
