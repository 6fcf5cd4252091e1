"""WSGI plumbing: requests and responses as the endpoints in :mod:`.api` see them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from idsync_client import jsoncodec
from idsync_client.protocol import ERRORS, ErrorBody, Limits

from .errors import RETRY_AFTER, HttpError, error_for
from .target import parse_query, path_segments

__all__ = [
    "HttpError",
    "Request",
    "Response",
    "bool_param",
    "error_for",
    "float_param",
    "int_param",
]

_REASONS = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    410: "Gone",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


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
        spec = ERRORS[err.code]
        body = ErrorBody(err.code, err.message, spec.retryable, err.details).to_wire()
        response = cls.json(body, spec.status)
        response.headers.extend(err.headers)
        if err.code in RETRY_AFTER:
            response.headers.append(("Retry-After", str(RETRY_AFTER[err.code])))
        return response

    def send(self, start_response: Any, head: bool = False) -> Iterable[bytes]:
        """Hand the response to the WSGI server; for HEAD, the headers alone."""
        payload = self.body.encode("utf-8")
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(payload))),
            *self.headers,
        ]
        start_response(f"{self.status} {_REASONS.get(self.status, 'Unknown')}", headers)
        # HEAD: the same headers, Content-Length included, and no body.
        return [b""] if head else [payload]


class Request:
    """The parts of a WSGI request the endpoints use."""

    def __init__(self, environ: dict[str, Any], limits: Limits) -> None:
        self.environ = environ
        self.limits = limits
        self.method: str = environ["REQUEST_METHOD"]
        # The raw target as sent (WSGI hands it over as latin-1 decoded bytes):
        # routing splits it on "/" before decoding, so "%2F" stays in its segment.
        target = environ.get("REQUEST_URI") or "/"
        if not target.startswith("/"):  # absolute form, "http://host/path?query"
            target = urlsplit(target).path or "/"
        self.raw_path: bytes = target.partition("?")[0].encode("latin-1")
        self.raw_query: bytes = environ.get("QUERY_STRING", "").encode("latin-1")
        self.segments = path_segments(self.raw_path)
        self._query = parse_query(self.raw_query)

    def header(self, name: str) -> str | None:
        """A request header by its HTTP name, or None."""
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        return self.environ.get(key)

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

    def json_body(self) -> Any:
        """The body as JSON, after checking its type and size."""
        content_type = (self.header("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise HttpError("unsupported_media_type", "send the body as application/json")
        try:
            length = int(self.header("Content-Length") or "0")
        except ValueError:
            raise HttpError("invalid_request", "bad Content-Length") from None
        if length > self.limits.max_body_bytes:
            raise HttpError(
                "body_too_large",
                f"body of {length} bytes is over the {self.limits.max_body_bytes} byte limit",
            )
        data = self.environ["wsgi.input"].read(length) if length > 0 else b""
        try:
            return jsoncodec.loads(data)
        except jsoncodec.JSONDecodeError as exc:
            raise HttpError("malformed_json", f"the body is not valid JSON: {exc}") from None


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
