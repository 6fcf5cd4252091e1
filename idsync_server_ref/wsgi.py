"""WSGI plumbing: requests, responses, and the one table from errors to HTTP.

Endpoints (in :mod:`.api`) raise :class:`HttpError` or let storage and
protocol errors through; :func:`error_for` turns any of them into the single
error envelope with the status, ``retryable`` flag and ``Retry-After`` that
the protocol fixes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from idsync_client import jsoncodec
from idsync_client.protocol import ERRORS, ErrorBody, Limits, ProtocolViolation

from .storage import (
    ResetRequired,
    StorageBusy,
    StorageError,
    StoreExists,
    StoreNotFound,
)

log = logging.getLogger("idsync.server")

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

#: Seconds a client should wait before retrying, per retryable error code.
RETRY_AFTER = {"storage_busy": 1, "storage_unavailable": 5, "shutting_down": 2, "rate_limited": 1}


class HttpError(Exception):
    """An error answer: ``code`` is a key of the protocol's ERRORS table."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        if code not in ERRORS:
            raise ValueError(f"unknown error code {code!r}")
        self.code = code
        self.message = message
        self.details = details


def error_for(exc: BaseException) -> HttpError:
    """Map any exception raised while serving to the error the client gets."""
    if isinstance(exc, HttpError):
        return exc
    if isinstance(exc, ProtocolViolation):
        return HttpError(exc.code, exc.message, **exc.details)
    if isinstance(exc, StoreNotFound):
        return HttpError("store_not_found", f"no store named {str(exc)!r}")
    if isinstance(exc, StoreExists):
        return HttpError("store_exists", f"store {str(exc)!r} exists already")
    if isinstance(exc, ResetRequired):
        return HttpError("reset_required", str(exc))
    if isinstance(exc, StorageBusy):
        return HttpError("storage_busy", "the database is busy; retry shortly")
    if isinstance(exc, StorageError):
        log.error("storage failure: %s", exc)
        return HttpError("storage_unavailable", "the database failed; retry later")
    log.exception("unexpected error", exc_info=exc)
    return HttpError("internal_error", "unexpected server error")


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
        if err.code in RETRY_AFTER:
            response.headers.append(("Retry-After", str(RETRY_AFTER[err.code])))
        return response

    def send(self, start_response: Any) -> Iterable[bytes]:
        """Hand the response to the WSGI server."""
        payload = self.body.encode("utf-8")
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(payload))),
            *self.headers,
        ]
        start_response(f"{self.status} {_REASONS.get(self.status, 'Unknown')}", headers)
        return [payload]


class Request:
    """The parts of a WSGI request the endpoints use."""

    def __init__(self, environ: dict[str, Any], limits: Limits) -> None:
        self.environ = environ
        self.limits = limits
        self.method: str = environ["REQUEST_METHOD"]
        # WSGI hands the path over as latin-1 decoded bytes; keys are UTF-8.
        raw_path = environ.get("PATH_INFO", "")
        try:
            self.path = raw_path.encode("latin-1").decode("utf-8")
        except UnicodeError:
            raise HttpError("invalid_request", "the path is not valid UTF-8") from None
        self._query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)

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
