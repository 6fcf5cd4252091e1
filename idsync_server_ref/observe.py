"""What wraps every request before the endpoints see it: request ids, the access
log, metrics and ``/metrics``, and the storage queue bound (back-pressure).

The endpoints in :mod:`.api` build answers; this layer watches them from the
outside, so it sees every request the same way, errors and refusals included.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from idsync_client.protocol import BACKOFF_HEADER

from .api import ServerApp
from .asgi import HttpError, Receive, Request, Response, Scope, Send
from .metrics import CONTENT_TYPE, ServerMetrics
from .target import log_safe, path_segments

access_log = logging.getLogger("idsync.server.access")

#: The response header naming the request (also in the access log).
REQUEST_ID_HEADER = "Idsync-Request-Id"
#: An incoming ``X-Request-Id`` is kept when it looks like this, else a new id is made.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
#: Routes that never touch storage: never refused for a full storage queue.
_NO_STORAGE = frozenset({"/v1/health", "/metrics"})
METRICS_PATH = "/metrics"


def request_id(scope: Scope) -> str:
    """The incoming ``X-Request-Id`` when sane (a proxy's id), else a fresh one."""
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _SANE_REQUEST_ID.fullmatch(text):
                return str(text)
            break
    return uuid.uuid4().hex


def pending_storage_calls(app: ServerApp) -> int:
    """Storage calls queued for a storage thread (running ones not counted)."""
    return app.executor._work_queue.qsize()


class ObservedApp:
    """``app`` with request ids, access log, metrics and the storage queue bound.

    ``max_storage_queue``: when this many storage calls already wait for a
    thread, a request that needs storage gets ``503 storage_busy`` with
    ``Retry-After`` and the back-off header at once instead of joining the
    queue. ``metrics``: serve ``/metrics`` (behind the token when one is set).
    """

    def __init__(self, app: ServerApp, max_storage_queue: int, metrics: bool = True) -> None:
        self.app = app
        self.notifier = app.notifier
        self.max_storage_queue = max_storage_queue
        self.serve_metrics = metrics
        self.metrics = ServerMetrics()
        self.metrics.gauge(
            "idsync_waiting_clients", "Long-polls waiting for changes.", lambda: app._waiting
        )
        self.metrics.gauge(
            "idsync_storage_queue",
            "Storage calls waiting for a storage thread.",
            lambda: pending_storage_calls(app),
        )
        self.metrics.counter(
            "idsync_woken_wait_looks",
            "Storage looks made for long-polls after a write woke them.",
            lambda: app.looks.looks,
        )
        self.metrics.counter(
            "idsync_woken_wait_pulls",
            "Storage pulls those looks made: one per store, cursor and page size at a time.",
            lambda: app.looks.pulls,
        )
        self._templates = [("/" + "/".join(pattern.parts), pattern) for pattern, _ in app._routes]

    def watch_connections(self, count: Callable[[], int]) -> None:
        """Report ``count()`` as the open connections gauge."""
        self.metrics.gauge("idsync_open_connections", "Open HTTP connections.", count)

    def begin_shutdown(self) -> None:
        """Answer every waiting long-poll now (see :meth:`ServerApp.begin_shutdown`)."""
        self.app.begin_shutdown()

    def route(self, scope: Scope) -> str:
        """The route template of a request, never its raw path."""
        raw = scope.get("raw_path") or scope.get("path", "").encode("utf-8")
        if raw == METRICS_PATH.encode():
            return METRICS_PATH
        try:
            segments = path_segments(raw)
        except HttpError:  # the endpoints answer it (400)
            return "other"
        for template, pattern in self._templates:
            if pattern.match(segments) is not None:
                return template
        return "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = request_id(scope)
        route = self.route(scope)
        status = 0
        header = (REQUEST_ID_HEADER.lower().encode(), rid.encode("ascii"))

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            if route == METRICS_PATH:
                await self._metrics(scope, receive, send_with_id)
            elif route not in _NO_STORAGE and (
                pending_storage_calls(self.app) >= self.max_storage_queue
            ):
                self.metrics.refused.inc()
                response = Response.error(
                    HttpError("storage_busy", "the server has too much database work queued")
                )
                response.headers.append((BACKOFF_HEADER, str(self.app.config.backoff_seconds)))
                await response.send(send_with_id, head=scope["method"] == "HEAD")
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            self.metrics.observe(route, scope.get("method", ""), status, elapsed)
            _log_access(scope, rid, status, elapsed)

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.serve_metrics:
            await Response.error(HttpError("not_found", "metrics are off")).send(send)
            return
        try:
            if scope["method"] not in ("GET", "HEAD"):
                error = HttpError("method_not_allowed", f"{scope['method']} is not allowed here")
                error.headers.append(("Allow", "GET, HEAD"))
                raise error
            await self.app.require_operator(Request(scope, receive, self.app.limits))
        except HttpError as err:
            await Response.error(err).send(send)
            return
        payload = self.metrics.exposition()
        headers = [
            (b"content-type", CONTENT_TYPE.encode()),
            (b"content-length", str(len(payload)).encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else payload}
        )


def _log_access(scope: Scope, rid: str, status: int, seconds: float) -> None:
    """One line per request; everything from the request escaped, no credentials."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    target = scope.get("raw_path") or b""
    if scope.get("query_string"):
        target += b"?" + scope["query_string"]
    agent = next((v for k, v in scope.get("headers", ()) if k == b"user-agent"), b"-")
    client = scope.get("client")
    fields = {
        "request_id": rid,
        "client": f"{client[0]}:{client[1]}" if client else "-",
        "method": log_safe(scope.get("method", "")),
        "target": log_safe(target.decode("latin-1")),
        "status": status or "-",
        "ms": round(seconds * 1000, 1),
        "agent": log_safe(agent.decode("latin-1"), 200),
    }
    access_log.info(
        "%(client)s %(method)s %(target)s %(status)s %(ms).1fms id=%(request_id)s %(agent)s",
        fields,
        extra={"http": fields},
    )
