"""The HTTP endpoints of the reference server, as one WSGI application.

Every endpoint and its shapes are described in ``docs/protocol.md``.
"""

from __future__ import annotations

import hmac
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from idsync_client.protocol import (
    BACKOFF_HEADER,
    PROTOCOL_VERSION,
    Change,
    Cursor,
    parse_change,
    validate_client_id,
    validate_index_items,
    validate_key,
    validate_store_name,
)

from .config import ServerConfig
from .notify import ChangeNotifier
from .storage import Storage
from .wsgi import (
    HttpError,
    Request,
    Response,
    bool_param,
    error_for,
    float_param,
    int_param,
)

access_log = logging.getLogger("idsync.server.access")

Handler = Callable[..., Response]
_STORE = r"(?P<store>[^/]+)"


class ServerApp:
    """The reference server's WSGI application over a storage backend."""

    def __init__(
        self, storage: Storage, config: ServerConfig, notifier: ChangeNotifier | None = None
    ) -> None:
        self.storage = storage
        self.config = config
        self.limits = config.limits
        self.notifier = notifier or ChangeNotifier()
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        self._routes: list[tuple[re.Pattern[str], dict[str, Handler]]] = [
            (re.compile(r"/v1/health"), {"GET": self.health}),
            (re.compile(r"/v1/stores"), {"GET": self.list_stores, "POST": self.create_store}),
            (
                re.compile(rf"/v1/stores/{_STORE}"),
                {"GET": self.get_store, "DELETE": self.drop_store},
            ),
            (re.compile(rf"/v1/stores/{_STORE}/push"), {"POST": self.push}),
            (re.compile(rf"/v1/stores/{_STORE}/changes"), {"GET": self.pull}),
            (re.compile(rf"/v1/stores/{_STORE}/snapshot"), {"GET": self.snapshot}),
            (re.compile(rf"/v1/stores/{_STORE}/records"), {"GET": self.find}),
            (re.compile(rf"/v1/stores/{_STORE}/records/(?P<key>.+)"), {"GET": self.get_record}),
        ]

    # -- WSGI entry ---------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        started = time.perf_counter()
        with self._in_flight_lock:
            self._in_flight += 1
            overloaded = self._in_flight > self.config.backoff_threshold
        try:
            try:
                response = self._dispatch(Request(environ, self.limits))
            except Exception as exc:  # every failure becomes the error envelope
                response = Response.error(error_for(exc))
            if overloaded:
                response.headers.append((BACKOFF_HEADER, str(self.config.backoff_seconds)))
            access_log.info(
                "%s %s %d %.1fms",
                environ.get("REQUEST_METHOD"),
                environ.get("PATH_INFO"),
                response.status,
                (time.perf_counter() - started) * 1000,
            )
            return response.send(start_response)
        finally:
            with self._in_flight_lock:
                self._in_flight -= 1

    def _dispatch(self, request: Request) -> Response:
        for pattern, methods in self._routes:
            match = pattern.fullmatch(request.path)
            if match is None:
                continue
            handler = methods.get(request.method)
            if handler is None:
                raise HttpError("method_not_allowed", f"{request.method} is not allowed here")
            if handler != self.health:
                self._authorize(request)
            args = match.groupdict()
            if "store" in args:
                validate_store_name(args["store"])
            return handler(request, **args)
        raise HttpError("not_found", f"no endpoint at {request.path[:200]!r}")

    def _authorize(self, request: Request) -> None:
        token = self.config.auth_token
        if token is None:
            return
        given = request.header("Authorization") or ""
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            value.strip().encode("utf-8", "replace"), token.encode("utf-8")
        ):
            raise HttpError("unauthorized", "a valid bearer token is required")

    # -- endpoints ----------------------------------------------------------

    def health(self, request: Request) -> Response:
        """Liveness, protocol version and the limits in force."""
        request.query(())
        return Response.json(
            {"status": "ok", "protocol": PROTOCOL_VERSION, "limits": vars(self.limits)}
        )

    def list_stores(self, request: Request) -> Response:
        """All stores with their figures."""
        request.query(())
        return Response.json({"stores": [s.to_wire() for s in self.storage.list_stores()]})

    def create_store(self, request: Request) -> Response:
        """Create a store: body ``{"name": ...}``; 409 if it exists."""
        request.query(())
        body = request.json_body()
        if not isinstance(body, dict) or set(body) != {"name"}:
            raise HttpError("invalid_request", 'the body must be {"name": <store name>}')
        info = self.storage.create_store(validate_store_name(body["name"]))
        return Response.json(info.to_wire(), status=201)

    def get_store(self, request: Request, store: str) -> Response:
        """One store's figures: live records, log length, head cursor, epoch."""
        request.query(())
        return Response.json(self.storage.get_store(store).to_wire())

    def drop_store(self, request: Request, store: str) -> Response:
        """Delete a store and all it holds."""
        request.query(())
        self.storage.drop_store(store)
        self.notifier.forget(store)
        return Response.json({"dropped": store})

    def push(self, request: Request, store: str) -> Response:
        """Apply a client's numbered changes in one transaction; outcome per change."""
        request.query(())
        body = request.json_body()
        if not isinstance(body, dict) or set(body) != {"client_id", "changes"}:
            raise HttpError(
                "invalid_request", 'the body must be {"client_id": ..., "changes": [...]}'
            )
        client_id = validate_client_id(body["client_id"])
        raw_changes = body["changes"]
        if not isinstance(raw_changes, list):
            raise HttpError("invalid_request", "changes must be a list")
        if len(raw_changes) > self.limits.max_batch:
            raise HttpError(
                "batch_too_large",
                f"{len(raw_changes)} changes is over the limit of {self.limits.max_batch}",
            )
        changes = self._parse_changes(raw_changes)
        outcomes = self.storage.push(store, client_id, changes)
        head = max((o.seq or 0 for o in outcomes if o.status == "applied"), default=0)
        if head:
            self.notifier.notify(store, head)
        return Response.json({"outcomes": [o.to_wire() for o in outcomes]})

    def _parse_changes(self, raw_changes: list[Any]) -> list[Change]:
        changes = [parse_change(raw, self.limits) for raw in raw_changes]
        seen: set[int] = set()
        for change in changes:
            if change.n in seen:
                raise HttpError(
                    "invalid_change", f"change number {change.n} appears twice", n=change.n
                )
            seen.add(change.n)
        return changes

    def pull(self, request: Request, store: str) -> Response:
        """Changes after a cursor, in pages; optionally wait for the first one."""
        params = request.query(("cursor", "limit", "wait"))
        cursor = Cursor.decode(params["cursor"]) if params.get("cursor") else None
        limit = int_param(params, "limit", self.limits.default_page, 1, self.limits.max_page)
        wait = float_param(params, "wait", self.limits.max_wait_seconds)
        page = self.storage.pull(store, cursor, limit, self.limits.max_page_bytes)
        if not page.items_json and wait > 0 and self.notifier.wait(store, page.cursor.seq, wait):
            page = self.storage.pull(store, page.cursor, limit, self.limits.max_page_bytes)
        body = (
            f'{{"changes":[{",".join(page.items_json)}],'
            f'"cursor":"{page.cursor.encode()}","more":{"true" if page.more else "false"}}}'
        )
        return Response(200, body)

    def snapshot(self, request: Request, store: str) -> Response:
        """Live records at one cursor, in pages, consistent while writes go on."""
        params = request.query(("at", "after", "limit"))
        at = Cursor.decode(params["at"]) if params.get("at") else None
        after = int_param(params, "after", 0, 0, 2**63 - 1)
        limit = int_param(params, "limit", self.limits.default_page, 1, self.limits.max_page)
        page = self.storage.snapshot(store, at, after, limit, self.limits.max_page_bytes)
        body = (
            f'{{"records":[{",".join(page.records_json)}],"at":"{page.at.encode()}",'
            f'"after":{page.next_after},"more":{"true" if page.more else "false"}}}'
        )
        return Response(200, body)

    def get_record(self, request: Request, store: str, key: str) -> Response:
        """The live record with this key, or 404 record_not_found."""
        request.query(())
        record = self.storage.get_record(store, validate_key(key, self.limits))
        if record is None:
            raise HttpError("record_not_found", "no live record with that key")
        return Response(200, record)

    def find(self, request: Request, store: str) -> Response:
        """Live records by index item, exact or by prefix, paged."""
        params = request.query(("index", "prefix", "after", "limit"))
        if "index" not in params:
            raise HttpError("invalid_request", "give the index item to look for: ?index=...")
        item = params["index"]
        prefix = bool_param(params, "prefix")
        validate_index_items([item], self.limits)
        after = int_param(params, "after", 0, 0, 2**63 - 1)
        limit = int_param(params, "limit", self.limits.default_page, 1, self.limits.max_page)
        page = self.storage.find(store, item, prefix, after, limit)
        body = (
            f'{{"records":[{",".join(page.records_json)}],"after":{page.after},'
            f'"more":{"true" if page.more else "false"}}}'
        )
        return Response(200, body)
