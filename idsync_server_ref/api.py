"""The HTTP endpoints of the reference server, as one ASGI application.

Every endpoint and its shapes are described in ``docs/protocol.md``. Storage
is synchronous and runs in a fixed pool of threads sized for the database;
a long-poll waits on the event loop and holds no thread. The looks of the
long-polls one write wakes are made together (:mod:`.look_batch`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from idsync_client.protocol import (
    BACKOFF_HEADER,
    INT64_MAX,
    PROTOCOL_VERSION,
    Change,
    Cursor,
    validate_client_id,
    validate_index_items,
    validate_key,
    validate_store_name,
)
from idsync_client.wire import FindAnswer, PullAnswer, PushAnswer, SnapshotAnswer, WaitAnswer

from . import metrics
from .account_api import AccountEndpoints, principal_of
from .asgi import (
    ClientGone,
    Hangup,
    HttpError,
    Receive,
    Request,
    Response,
    Scope,
    Send,
    bool_param,
    error_for,
    float_param,
    int_param,
    parse_json_checked,
)
from .auth import OWNER, READ, WRITE, Authenticator, Principal, may_create, require, visible_stores
from .config import DEFAULT_RATE, ServerConfig
from .look_batch import LookBatches
from .notify import ChangeNotifier, WaitAbandoned
from .push_body import parse_changes
from .ratelimit import RateLimiter, retry_after_header
from .storage import Storage, StoreNotFound
from .waiting import Look, PagePuller, look, parse_wait_body

access_log = logging.getLogger("idsync.server.access")

Handler = Callable[..., Awaitable[Response]]
T = TypeVar("T")

#: The access level each store endpoint needs, by handler name; a store
#: endpoint not named here needs the owner's.
STORE_ACCESS = {
    "get_store": READ,
    "pull": READ,
    "snapshot": READ,
    "find": READ,
    "get_record": READ,
    "push": WRITE,
    "drop_store": OWNER,
}


@dataclass(frozen=True)
class PathPattern:
    """A path template: literal segments, ``{name}`` (one segment, such as
    ``{store}``) and ``{key}`` (the rest of the path, so a key may hold "/"
    whether encoded or not)."""

    parts: tuple[str, ...]

    @property
    def pattern(self) -> str:
        """The template as a regular expression over the decoded path (for docs)."""
        def named(part: str) -> str:
            if part == "{key}":
                return "(?P<key>.+)"
            return f"(?P<{part[1:-1]}>[^/]+)" if part.startswith("{") else part

        return "/" + "/".join(named(part) for part in self.parts)

    def match(self, segments: list[str]) -> dict[str, str] | None:
        """The named parts of ``segments`` if they fit, else None."""
        args: dict[str, str] = {}
        for i, part in enumerate(self.parts):
            if i >= len(segments):
                return None
            if part == "{key}":
                args["key"] = "/".join(segments[i:])
                return args
            if part.startswith("{"):
                args[part[1:-1]] = segments[i]
            elif part != segments[i]:
                return None
        return args if len(segments) == len(self.parts) else None


def allowed_methods(methods: dict[str, Handler]) -> list[str]:
    """The methods an endpoint takes, HEAD wherever GET is."""
    names = set(methods) | ({"HEAD"} if "GET" in methods else set())
    return sorted(names)


class ServerApp:
    """The reference server's ASGI application over a storage backend.

    Call :meth:`begin_shutdown` when the server stops: waiting long-polls are
    answered at once (``503 shutting_down``) instead of being dropped. Call
    :meth:`close` at the end to stop the storage threads.
    """

    def __init__(
        self, storage: Storage, config: ServerConfig, notifier: ChangeNotifier | None = None
    ) -> None:
        self.storage = storage
        self.config = config
        self.limits = config.limits
        self.notifier = notifier or ChangeNotifier()
        # The backend knows when a change lands, also one made through another
        # server process (PostgreSQL): it wakes the waiting clients.
        storage.listen(self.notifier.notify)
        self.executor = ThreadPoolExecutor(
            max_workers=config.threads, thread_name_prefix="idsync-storage"
        )
        # Woken long-polls look at storage together, one pull per distinct page.
        self.looks = LookBatches(storage, self.executor)
        # Requests being worked on; long-polls parked in a wait do not count.
        self._busy = 0
        self._waiting = 0
        # Stores a push found to exist: pushes to others are checked first.
        self._stores_seen: set[str] = set()
        self.accounts = storage.accounts()
        self.authenticator = Authenticator(self.accounts, config.auth_token)
        rate = config.rate_limit if config.rate_limit is not None else DEFAULT_RATE
        # Per token once authenticated; per client address for refused tokens.
        self.token_limits = RateLimiter(rate, config.rate_burst)
        self.address_limits = RateLimiter(rate, config.rate_burst)
        store = ("v1", "stores", "{store}")
        self._routes: list[tuple[PathPattern, dict[str, Handler]]] = [
            (PathPattern(("v1", "health")), {"GET": self.health}),
            (PathPattern(("v1", "wait")), {"POST": self.wait_many}),
            (PathPattern(("v1", "stores")), {"GET": self.list_stores, "POST": self.create_store}),
            (PathPattern(store), {"GET": self.get_store, "DELETE": self.drop_store}),
            (PathPattern((*store, "push")), {"POST": self.push}),
            (PathPattern((*store, "changes")), {"GET": self.pull}),
            (PathPattern((*store, "snapshot")), {"GET": self.snapshot}),
            (PathPattern((*store, "records")), {"GET": self.find}),
            (PathPattern((*store, "records", "{key}")), {"GET": self.get_record}),
        ]
        account_routes = AccountEndpoints(self.accounts, self._run).routes()
        self._routes += [(PathPattern(parts), methods) for parts, methods in account_routes]

    def begin_shutdown(self) -> None:
        """Answer every waiting long-poll now; later waits answer at once."""
        self.notifier.close()

    def close(self) -> None:
        """Stop the storage threads (after the server stopped serving)."""
        self.executor.shutdown(wait=True)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a storage call in the storage pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args))

    # -- ASGI entry ---------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        self._busy += 1
        overloaded = self._busy > self.config.backoff_threshold
        response: Response | None = None
        try:
            try:
                response = await self._dispatch(Request(scope, receive, self.limits))
            except ClientGone:
                return
            except Exception as exc:  # every failure becomes the error envelope
                response = Response.error(error_for(exc))
            if overloaded:
                response.headers.append((BACKOFF_HEADER, str(self.config.backoff_seconds)))
            await response.send(send, head=scope["method"] == "HEAD")
        finally:
            self._busy -= 1

    async def _dispatch(self, request: Request) -> Response:
        for pattern, methods in self._routes:
            args = pattern.match(request.segments)
            if args is None:
                continue
            method = "GET" if request.method == "HEAD" else request.method
            handler = methods.get(method)
            if handler is None:
                allow = ", ".join(allowed_methods(methods))
                error = HttpError("method_not_allowed", f"{request.method} is not allowed here")
                error.headers.append(("Allow", allow))
                raise error
            if handler != self.health:
                request.principal = await self._authenticate(request)
            if "store" in args:
                validate_store_name(args["store"])
                principal = principal_of(request)
                if not (principal.single_user or principal.is_admin):  # no look-up needed
                    level = STORE_ACCESS.get(getattr(handler, "__name__", ""), OWNER)
                    await self._run(require, self.accounts, principal, args["store"], level)
            return await handler(request, **args)
        raise HttpError("not_found", f"no endpoint at {request.raw_path[:200].decode('latin-1')!r}")

    async def _wait(self, request: Request, after: dict[str, int], seconds: float) -> set[str]:
        """Wait for changes past ``after`` (not counted as busy); 503 if the server stops.

        A client that hangs up ends its wait: nothing is left waiting for no one.
        """
        hangup = request.hangup
        watcher: asyncio.Future[None] | None = None
        if hangup is None:  # an HTTP server without the hang-up signal: read receive()
            hangup = Hangup()
            watcher = asyncio.ensure_future(request.disconnected())
            watcher.add_done_callback(_fire_unless_cancelled(hangup))
        self._busy -= 1
        self._waiting += 1
        try:
            changed = await self.notifier.wait_any(after, seconds, hangup)
        except WaitAbandoned:
            raise ClientGone from None
        finally:
            self._busy += 1
            self._waiting -= 1
            if watcher is not None:
                watcher.cancel()
        if self.notifier.closed:
            raise HttpError("shutting_down", "the server is stopping; retry shortly")
        return changed

    def _refresh_users(self) -> None:
        """Look again whether users exist (storage thread); a failure waits for the next look."""
        try:
            self.authenticator.refresh()
        except Exception:  # the database failed: requests report it themselves
            access_log.debug("could not look for users", exc_info=True)

    async def require_operator(self, request: Request) -> None:
        """Let through the single local user or an admin only (401, 429 or 403 otherwise)."""
        principal = await self._authenticate(request)
        if not (principal.single_user or principal.is_admin):
            raise HttpError("forbidden", "only an administrator may read this")

    async def _authenticate(self, request: Request) -> Principal:
        """The caller, within its rate limit; 401 or 429 otherwise.

        An address whose refused tokens emptied its bucket is turned away
        before any look-up.
        """
        address = request.client_host
        wait = self.address_limits.wait_needed(address)
        if wait:
            raise _rate_limited(wait)
        authenticator = self.authenticator
        if authenticator.refresh_due():
            # In the background: this request is answered as the last look said.
            asyncio.get_running_loop().run_in_executor(self.executor, self._refresh_users)
        header = request.header("Authorization")
        try:
            principal = authenticator.without_lookup(header)
            if principal is None:
                principal = await self._run(authenticator.authenticate, header)
        except HttpError:
            self.address_limits.take(address)
            raise
        if principal.single_user and self.config.rate_limit is None:
            return principal  # a single user is not limited unless asked
        wait = self.token_limits.take(principal.rate_key)
        if wait:
            raise _rate_limited(wait)
        return principal

    # -- endpoints ----------------------------------------------------------

    async def health(self, request: Request) -> Response:
        """Liveness, protocol version, the limits in force and the long-polls waiting."""
        request.query(())
        return Response.json(
            {
                "status": "ok",
                "protocol": PROTOCOL_VERSION,
                "limits": vars(self.limits),
                "waiting": self._waiting,
            }
        )

    async def list_stores(self, request: Request) -> Response:
        """The stores the caller may see, with their figures."""
        request.query(())
        stores = await self._run(self.storage.list_stores)
        names = await self._run(
            visible_stores, self.accounts, principal_of(request), [s.name for s in stores]
        )
        shown = set(names)
        return Response.json({"stores": [s.to_wire() for s in stores if s.name in shown]})

    async def create_store(self, request: Request) -> Response:
        """Create a store: body ``{"name": ..., "recreate": false}``; 409 if it exists.

        A dropped name is refused (410 store_dropped) unless ``recreate`` is true.
        """
        request.query(())
        body = await request.json_body()
        if not isinstance(body, dict) or not {"name"} <= set(body) <= {"name", "recreate"}:
            raise HttpError(
                "invalid_request", 'the body must be {"name": <store name>, "recreate": <bool>}'
            )
        recreate = body.get("recreate", False)
        if not isinstance(recreate, bool):
            raise HttpError("invalid_request", "recreate must be true or false")
        name = validate_store_name(body["name"])
        may_create(principal_of(request), name)
        info = await self._run(self.storage.create_store, name, recreate)
        self._stores_seen.add(name)
        return Response.json(info.to_wire(), status=201)

    async def get_store(self, request: Request, store: str) -> Response:
        """One store's figures: live records, log length, head cursor, epoch."""
        request.query(())
        return Response.json((await self._run(self.storage.get_store, store)).to_wire())

    async def drop_store(self, request: Request, store: str) -> Response:
        """Delete a store and all it holds."""
        request.query(())
        # Grants go first: if the drop then fails, the store is left with
        # less access, never a later store of the name with the old grants.
        await self._run(self.accounts.forget_store, store)
        await self._run(self.storage.drop_store, store)
        self._stores_seen.discard(store)
        self.notifier.forget(store)
        return Response.json({"dropped": store})

    async def push(self, request: Request, store: str) -> Response:
        """Apply a client's numbered changes in one transaction; outcome per change.

        A store not known to exist is looked up before the body is parsed: a
        push to a missing store is answered 404 without checking its changes.
        """
        request.query(())
        # Read first: a client that sent its push and hung up still has it applied.
        data = await request.json_bytes()
        if store not in self._stores_seen:
            await self._run(self.storage.get_store, store)
            self._stores_seen.add(store)
        body, checked = parse_json_checked(data)
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
        changes = self._parse_changes(raw_changes, checked)
        # Idempotency is kept per (user, client id): one user's ids never
        # meet another's.
        scoped = principal_of(request).storage_client_id(client_id)
        try:
            outcomes = await self._run(self.storage.push, store, scoped, changes)
        except StoreNotFound:
            # Dropped meanwhile, possibly through another server process.
            self._stores_seen.discard(store)
            raise
        metrics.changes_applied.add(sum(o.status == "applied" for o in outcomes))
        return Response(200, PushAnswer.to_json(outcomes))

    def _parse_changes(self, raw_changes: list[Any], checked: bool) -> list[Change]:
        changes = parse_changes(raw_changes, self.limits, checked)
        seen: set[int] = set()
        for change in changes:
            if change.n in seen:
                raise HttpError(
                    "invalid_change", f"change number {change.n} appears twice", n=change.n
                )
            seen.add(change.n)
        return changes

    async def pull(self, request: Request, store: str) -> Response:
        """Changes after a cursor, in pages; optionally wait for the first one."""
        params = request.query(("cursor", "limit", "wait"))
        cursor = Cursor.decode(params["cursor"]) if params.get("cursor") else None
        limit = int_param(params, "limit", self.limits.default_page, 1, self.limits.max_page)
        wait = float_param(params, "wait", self.limits.max_wait_seconds)
        max_bytes = self.limits.max_page_bytes
        page = await self._run(self.storage.pull, store, cursor, limit, max_bytes)
        waited = not page.items_json and wait > 0
        if waited and await self._wait(request, {store: page.cursor.seq}, wait):
            # Every poll this write woke pulls the same page: made once, in a batch.
            after = page.cursor
            shared = await self.looks.run(lambda pull: pull(store, after, limit, max_bytes))
            return Response(200, shared.json)
        return Response(200, PullAnswer.to_json(page.items_json, page.cursor, page.more))

    async def snapshot(self, request: Request, store: str) -> Response:
        """Live records at one cursor, in pages, consistent while writes go on."""
        params = request.query(("at", "after", "limit"))
        at = Cursor.decode(params["at"]) if params.get("at") else None
        after = int_param(params, "after", 0, 0, INT64_MAX)
        limit = int_param(params, "limit", self.limits.default_page, 1, self.limits.max_page)
        page = await self._run(
            self.storage.snapshot, store, at, after, limit, self.limits.max_page_bytes
        )
        return Response(
            200, SnapshotAnswer.to_json(page.records_json, page.at, page.next_after, page.more)
        )

    async def get_record(self, request: Request, store: str, key: str) -> Response:
        """The live record with this key, or 404 record_not_found."""
        request.query(())
        record = await self._run(self.storage.get_record, store, validate_key(key, self.limits))
        if record is None:
            raise HttpError("record_not_found", "no live record with that key")
        return Response(200, record)

    async def find(self, request: Request, store: str) -> Response:
        """Live records by index item, exact or by prefix, paged."""
        params = request.query(("index", "prefix", "after", "limit"))
        if "index" not in params:
            raise HttpError("invalid_request", "give the index item to look for: ?index=...")
        item = params["index"]
        prefix = bool_param(params, "prefix")
        validate_index_items([item], self.limits)
        after = int_param(params, "after", 0, 0, INT64_MAX)
        limit = int_param(params, "limit", self.limits.default_page, 1, self.limits.max_page)
        page = await self._run(self.storage.find, store, item, prefix, after, limit)
        return Response(200, FindAnswer.to_json(page.records_json, page.after, page.more))

    async def wait_many(self, request: Request) -> Response:
        """One long-poll for many stores: which have changes past their cursors.

        Body ``{"cursors": {"<store>": "<cursor>" | null, ...}, "wait": seconds,
        "pages": bool, "limit": n}``. Answers ``{"changed": [...], "errors":
        {"<store>": <error>}}`` as soon as any store has changes or an error,
        or when the wait ends; with ``pages``, also ``"pages": {"<store>":
        <pull page>}`` for the changed stores (see :mod:`.waiting`). A missing
        store or a bad cursor is that store's error, not the request's.
        """
        request.query(())
        asked = parse_wait_body(await request.json_body(), self.limits)
        principal = principal_of(request)
        found = await self._run(self._look, asked.cursors, principal, asked.page_limit)
        found.errors.update(asked.errors)
        if not found.changed and not found.errors and asked.wait > 0:
            changed = await self._wait(request, found.heads, asked.wait)
            if changed and asked.page_limit is not None:
                # Look again at the stores that changed: their pages go in the answer.
                # Made in a batch with the other waits woken now: each checks
                # its own access, identical pulls are made once.
                again = {store: asked.cursors[store] for store in changed}
                found = await self.looks.run(
                    functools.partial(self._look, again, principal, asked.page_limit)
                )
            else:
                found.changed = changed
        pages = found.pages if asked.page_limit is not None else None
        return Response(200, WaitAnswer.to_json(found.changed, found.errors, pages))

    def _look(
        self,
        cursors: dict[str, Cursor | None],
        principal: Principal,
        page_limit: int | None,
        pull: PagePuller | None = None,
    ) -> Look:
        """:func:`.waiting.look` at these stores (storage thread); ``pull``:
        how pages are pulled (a batch's :class:`.waiting.PageMemo`)."""
        return look(self.storage, self.accounts, principal, cursors, self.limits, page_limit, pull)


def _fire_unless_cancelled(hangup: Hangup) -> Callable[[asyncio.Future[None]], None]:
    def fire(watcher: asyncio.Future[None]) -> None:
        if not watcher.cancelled():
            hangup.fire()

    return fire


def _rate_limited(wait: float) -> HttpError:
    error = HttpError("rate_limited", "too many requests; retry after the time given")
    error.headers.append(("Retry-After", retry_after_header(wait)))
    return error


async def _lifespan(receive: Receive, send: Send) -> None:
    """Answer the lifespan protocol (nothing to set up: the runner does it)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
