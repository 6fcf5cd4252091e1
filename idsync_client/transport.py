"""The transport seam: what the sync engine asks of a server, and the HTTP implementation.

:class:`Transport` is the contract the sync engine, background sync and the
client are typed against; :class:`HttpTransport` implements it over HTTP
with requests. Every failure leaves a transport as an
:mod:`idsync_client.errors` exception, already classified (temporary or
permanent); nothing here retries. The server's back-off hint is obeyed:
until it passes, requests fail fast with a TemporaryError carrying the
remaining wait.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection

from . import arguments, gcpause, jsoncodec
from .errors import (
    AuthError,
    ClientClosed,
    IdsyncError,
    PermanentError,
    StoreDropped,
    StoreNotFound,
    TemporaryError,
    classify_status,
)
from .inflight import OpenSockets, pool_classes
from .pooled import PooledAnswer, PooledSender
from .protocol import BACKOFF_HEADER, ERRORS, Limits, Outcome
from .wire import (
    FindAnswer,
    MalformedAnswer,
    PullAnswer,
    PushAnswer,
    SnapshotAnswer,
    WaitAnswer,
    WireError,
    push_body,
)

#: Seconds to open a connection.
CONNECT_TIMEOUT = 5.0
#: Seconds to wait for an answer to an ordinary request (no wait asked for):
#: short, so that a dead link is noticed soon.
READ_TIMEOUT = 10.0
#: Added to a long-poll's wait to make its read timeout.
POLL_MARGIN = 5.0


class StoreFigures(NamedTuple):
    """How long a store's log is, how many records are live in it, and its head."""

    log_length: int
    live_records: int
    head_seq: int | None = None


class Transport(Protocol):
    """What the sync engine needs from a server, one method per endpoint.

    Every method either returns the answer, its shape checked, or raises an
    :class:`~idsync_client.errors.IdsyncError` already classified:
    :class:`~idsync_client.errors.TemporaryError` when a retry may help (the
    server unreachable, a timeout, 408/429/5xx, a back-off hint still in
    force, an answer that is not JSON), :class:`~idsync_client.errors.AuthError`
    on refused credentials, :class:`~idsync_client.errors.ResetRequired` when
    a cursor is not valid on the server's history,
    :class:`~idsync_client.errors.StoreNotFound` for a missing store,
    :class:`~idsync_client.wire.MalformedAnswer` when the answer is JSON of the
    wrong shape, and another :class:`~idsync_client.errors.PermanentError`
    for every other refusal. No method retries; none changes local state.
    """

    #: The bearer token sent with each request (None: none); settable.
    token: str | None
    #: How many answers the server gave (any answer but a temporary failure).
    contacts: int

    def create_store(self, store: str, recreate: bool = False) -> None:
        """Create ``store``; a store that exists already is not an error.
        StoreDropped if the name was dropped, unless ``recreate`` is true
        (the store then starts again, empty, with a new epoch)."""
        ...

    def store_figures(self, store: str) -> StoreFigures:
        """The store's size figures (``GET /v1/stores/{store}``). Optional: the
        engine replays the log on a first sync of a transport without it."""
        ...

    def push(self, store: str, client_id: str, changes_json: list[str]) -> list[Outcome]:
        """Upload changes (each already JSON text) in one request; one outcome per
        change, in order. The server applies all or nothing; a repeat of the same
        changes is answered ``duplicate``, so a push whose answer was lost is safe
        to send again. StoreNotFound if the store does not exist."""
        ...

    def pull(
        self, store: str, cursor: str | None, wait: float = 0.0, limit: int | None = None
    ) -> PullAnswer:
        """One page of changes after ``cursor`` (from the start when None), at most
        ``limit`` of them; with ``wait``, the server may hold the request that many
        seconds when nothing is new (then the page is empty). ResetRequired when
        the cursor is not one of the server's history now."""
        ...

    def snapshot(self, store: str, at: str | None, after: int) -> SnapshotAnswer:
        """One page of the live records at cursor ``at`` (now when None) past
        ``after``; pages of one snapshot are consistent. ResetRequired when ``at``
        is no longer valid."""
        ...

    def find(
        self, store: str, item: str, prefix: bool = False, after: int = 0, limit: int | None = None
    ) -> FindAnswer:
        """One page of live records with index item ``item`` (or starting with it)."""
        ...

    def wait(
        self,
        cursors: dict[str, str | None],
        wait: float,
        pages: bool = False,
        limit: int | None = None,
    ) -> WaitAnswer:
        """One long-poll over many stores: answered when any has changes past its
        cursor or an error of its own (in the answer, not raised), or after ``wait``
        seconds with nothing changed. With ``pages``, the answer may carry each
        changed store's first page of changes (at most ``limit``). Raises only
        for the request as a whole."""
        ...

    def error_for(self, store: str, error: WireError) -> IdsyncError:
        """The exception a request for ``store`` would raise with ``error`` (a
        store's error from :meth:`wait`), classified the same way."""
        ...

    def limits(self) -> Limits:
        """The server's limits; the defaults while the server cannot say. Never raises."""
        ...

    def close(self) -> None:
        """Release connections; a request under way may fail. Never raises."""
        ...


def _keepalive_options() -> list[tuple[int, int, int]]:
    """TCP keepalive, probing an idle link after 10 s, where the platform allows."""
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    return options


class KeepAliveAdapter(HTTPAdapter):
    """An HTTPAdapter whose sockets use TCP keepalive, so a link that died
    silently fails a waiting request instead of hanging until its timeout.

    Its connections' sockets are tracked: :meth:`cut` makes every request in
    flight on it fail at once (the client is closing).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.open_sockets = OpenSockets()
        super().__init__(*args, **kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        """Create the pool with keepalive socket options and tracked connections."""
        kwargs["socket_options"] = [*HTTPConnection.default_socket_options, *_keepalive_options()]
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = pool_classes(self.open_sockets)

    def cut(self) -> None:
        """Fail every request in flight now, and every later one at connect."""
        self.open_sockets.cut()


def _retry_after(response: requests.Response | PooledAnswer) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from our servers, fall back to backoff


def _permanent_kind(
    status: int, code: str | None, kind: type[IdsyncError]
) -> type[PermanentError]:
    """The permanent error class for an answer's status and code."""
    if code == "store_not_found":
        return StoreNotFound
    if code == "store_dropped":
        return StoreDropped  # a 410 that is not a reset: the store is gone for good
    assert issubclass(kind, PermanentError)
    return kind


def environment_settings(base_url: str) -> tuple[dict[str, str], str | bool]:
    """The proxies and CA bundle that requests would take from the environment
    for ``base_url``: ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY`` unless
    ``NO_PROXY`` covers the URL's host, and ``REQUESTS_CA_BUNDLE`` or
    ``CURL_CA_BUNDLE`` (else True: the default CA store)."""
    proxies = {
        scheme: url
        for scheme, url in requests.utils.get_environ_proxies(base_url).items()
        if scheme in ("http", "https", "all") and url
    }
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    return proxies, bundle or True


def _check_timeouts(timeouts: tuple[float, float]) -> tuple[float, float]:
    try:
        connect, read = timeouts
        valid = connect > 0 and read > 0
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(f"timeouts must be (connect, read) seconds, both > 0, got {timeouts!r}")
    return float(connect), float(read)


class HttpTransport:
    """A :class:`Transport` over HTTP to one server; each endpoint method keeps
    the contract of the :class:`Transport` method of the same name.

    ``session`` is a :class:`requests.Session`, exposed so that adapters can
    be mounted on it (the testing kit does). A session passed in is used as
    it is: its adapters, headers, proxies, ``verify``, certificates and
    ``trust_env``. Without one, the transport makes its own and reads the
    environment once, here (proxies for ``base_url``, honouring
    ``NO_PROXY``, and ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``), rather than
    on every request as requests' ``trust_env`` would (~0.2 ms each).

    ``token`` is the bearer token, or a callable that supplies one: it is
    called while there is no token, and once more after a request is
    refused with 401 (the request is then sent again with the new token,
    once); a token is kept once the server accepts it.

    ``timeouts`` is ``(connect, read)`` in seconds and bounds each request;
    a long-poll waits ``wait + poll_margin`` for its answer. ``contacts``
    counts the answers the server gave (any answer but a temporary
    failure): the status says "online" only after one.
    """

    def __init__(
        self,
        base_url: str,
        token: str | Callable[[], str | None] | None = None,
        session: requests.Session | None = None,
        timeouts: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT),
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"server URL must start with http:// or https://, got {base_url!r}")
        if session is not None and not isinstance(session, requests.Session):
            raise TypeError("session must be a requests.Session")
        self.connect_timeout, self.read_timeout = _check_timeouts(timeouts)
        self.base_url = base_url.rstrip("/")
        #: Supplies a fresh token after a 401 (None: the token is fixed).
        self.token_supplier = token if callable(token) else None
        self.token: str | None = None if callable(token) else token
        # Requests through the transport's own session go straight to its
        # adapter's pool while nothing asks for more (see pooled.py).
        self._pooled: PooledSender | None = None
        if session is None:
            session = requests.Session()
            session.mount("http://", KeepAliveAdapter())
            session.mount("https://", KeepAliveAdapter())
            session.proxies, session.verify = environment_settings(self.base_url)
            session.trust_env = False  # read once above, not on every request
            adapter = session.get_adapter(self.base_url)
            assert isinstance(adapter, KeepAliveAdapter)
            self._pooled = PooledSender(self.base_url, session, adapter)
        self.session = session
        self.poll_margin = POLL_MARGIN
        self.contacts = 0
        #: Called with a message after each request that found no server (the
        #: connection failed, or no answer in time), while retries go on; not
        #: for one that a request sent after it outlived with an answer.
        self.on_unreachable: Callable[[str], None] | None = None
        # When the latest-sent request that got an answer was sent (monotonic).
        self._answered_sent_at = 0.0
        self._backoff_until = 0.0
        self._lock = threading.Lock()
        self._limits: Limits | None = None
        self._closed = False

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        raw_body: str | None = None,
        body: Any = None,
        read_timeout: float | None = None,
    ) -> dict[str, Any]:
        """Send one request; return the decoded JSON object or raise a classified error."""
        if self._closed:
            raise ClientClosed("the client is closed")
        if body is not None:
            raw_body = jsoncodec.dumps(body)
        start = token = self.token
        if token is None and self.token_supplier is not None:
            token = self._supplied_token()
        try:
            answer = self._send(method, path, params, raw_body, read_timeout, token)
        except AuthError as exc:
            if exc.status != 401 or self.token_supplier is None:
                raise
            fresh = self._supplied_token()
            if not fresh or fresh == token:
                raise
            # A refusal of this one too leaves self.token as it was: background
            # sync pauses only while the refused token is the current one.
            answer = self._send(method, path, params, raw_body, read_timeout, fresh)
            token = fresh
        with self._lock:
            if self.token == start:  # set_token() may have replaced it meanwhile
                self.token = token
        return answer

    def _supplied_token(self) -> str | None:
        """A token from the app's supplier. The supplier failing is temporary
        (tried again with backoff); a token no header can carry is refused as
        credentials are."""
        assert self.token_supplier is not None
        try:
            value = self.token_supplier()
        except Exception as exc:
            raise TemporaryError(f"the token supplier failed: {exc!r}") from exc
        try:
            return arguments.token(value)
        except (TypeError, ValueError) as exc:
            raise AuthError(f"the token supplier gave an unusable token: {exc}") from exc

    def _send(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None,
        raw_body: str | None,
        read_timeout: float | None,
        token: str | None,
    ) -> dict[str, Any]:
        with self._lock:
            wait = self._backoff_until - time.monotonic()
        if wait > 0:
            raise TemporaryError("the server asked clients to back off", retry_after=wait)
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = raw_body.encode("utf-8") if raw_body is not None else None
        timeout = (self.connect_timeout, read_timeout or self.read_timeout)
        pooled = self._pooled
        response: requests.Response | PooledAnswer | None = None
        sent_at = time.monotonic()
        try:
            if pooled is not None and pooled.usable():
                response = pooled.send(method, path, params, headers, data, timeout)
            if response is None or response.is_redirect:
                # Every request of the protocol is safe to send again: one
                # answered with a redirect goes through requests, which follows it.
                response = self.session.request(
                    method,
                    self.base_url + path,
                    params=params,
                    headers=headers,
                    data=data,
                    timeout=timeout,
                )
        except requests.RequestException as exc:
            raise self._unreachable(exc, sent_at) from exc
        self._note_backoff(response)
        contact = classify_status(response.status_code) is not TemporaryError
        with self._lock:  # one acquisition a request for both
            self._answered_sent_at = max(self._answered_sent_at, sent_at)
            self.contacts += contact
        if response.status_code < 400:
            try:
                # No validation follows for the values in an answer: refuse
                # numbers no value can hold here (as a garbled answer).
                with gcpause.paused():  # a page is thousands of containers at once
                    answer = jsoncodec.loads(response.content, finite=True)
            except jsoncodec.JSONDecodeError as exc:
                raise TemporaryError("the server sent a garbled answer") from exc
            if not isinstance(answer, dict):
                raise TemporaryError("the server's answer is not a JSON object")
            return answer
        raise self._error(response)

    def _unreachable(self, exc: requests.RequestException, sent_at: float) -> IdsyncError:
        """The error for a request (sent at ``sent_at``) that found no server;
        the listener hears of it, unless a request sent later was answered: a
        long-poll sent into an outage that fails after the link came back says
        nothing about the link now."""
        if self._closed:  # cut by close(): not a fact about the link
            return ClientClosed("the client is closed")
        if isinstance(exc, requests.Timeout):
            error = TemporaryError(f"the server did not answer in time ({exc})", timeout=True)
        else:
            error = TemporaryError(f"cannot reach the server ({exc})")
        with self._lock:
            outdated = self._answered_sent_at > sent_at
        listener = self.on_unreachable
        if listener is not None and not outdated:
            listener(str(error))
        return error

    def _note_backoff(self, response: requests.Response | PooledAnswer) -> None:
        hint = response.headers.get(BACKOFF_HEADER)
        if hint:
            try:
                seconds = min(float(hint), 3600.0)
            except ValueError:
                return
            with self._lock:
                self._backoff_until = max(self._backoff_until, time.monotonic() + seconds)

    @staticmethod
    def _error(response: requests.Response | PooledAnswer) -> IdsyncError:
        status = response.status_code
        try:
            envelope = jsoncodec.loads(response.content)["error"]
            code, message = str(envelope["code"]), str(envelope["message"])
            details = envelope.get("details") or {}
        except (jsoncodec.JSONDecodeError, KeyError, TypeError):
            code, message, details = None, response.text[:200] or response.reason, {}
            if status == 413:
                # A proxy or the HTTP server itself refused the size, not in our
                # JSON: it is still "too large", and the push splits on it.
                code = "body_too_large"
        text = f"HTTP {status}: {message}" + (f" ({code})" if code else "")
        kind = classify_status(status)
        if kind is TemporaryError:
            return TemporaryError(
                text, status=status, code=code, retry_after=_retry_after(response)
            )
        kind = _permanent_kind(status, code, kind)
        return kind(text, status=status, code=code, details=details)

    # -- endpoints ----------------------------------------------------------

    def _store_path(self, store: str, tail: str = "") -> str:
        return f"/v1/stores/{store}{tail}"

    def create_store(self, store: str, recreate: bool = False) -> None:
        """Create the store; an existing store is fine. A dropped store is
        refused (StoreDropped) unless ``recreate`` is true."""
        body: dict[str, Any] = {"name": store}
        if recreate:
            body["recreate"] = True
        try:
            self.request("POST", "/v1/stores", body=body)
        except PermanentError as exc:
            if exc.code != "store_exists":
                raise

    def store_figures(self, store: str) -> StoreFigures:
        """The store's ``log_length``, ``live_records`` and ``head_seq`` (``GET /v1/stores/{store}``)."""
        answer = self.request("GET", self._store_path(store))
        figures = [answer.get(k) for k in ("log_length", "live_records", "head_seq")]
        numbers = [v for v in figures if isinstance(v, int) and not isinstance(v, bool)]
        if len(numbers) != len(figures):
            raise MalformedAnswer("store", "log_length, live_records and head_seq must be integers")
        return StoreFigures(*numbers)

    def push(self, store: str, client_id: str, changes_json: list[str]) -> list[Outcome]:
        """Upload changes (each already JSON text); one outcome per change, in order."""
        raw = push_body(client_id, changes_json)
        answer = self.request("POST", self._store_path(store, "/push"), raw_body=raw)
        return PushAnswer.parse(answer, sent=len(changes_json)).outcomes

    def pull(
        self, store: str, cursor: str | None, wait: float = 0.0, limit: int | None = None
    ) -> PullAnswer:
        """One page of changes after ``cursor``; may wait up to ``wait`` seconds."""
        params: dict[str, Any] = {}
        if cursor:
            params["cursor"] = cursor
        if wait:
            params["wait"] = wait
        if limit:
            params["limit"] = limit
        answer = self.request(
            "GET",
            self._store_path(store, "/changes"),
            params=params,
            read_timeout=wait + self.poll_margin if wait else None,
        )
        return PullAnswer.parse(answer)

    def snapshot(self, store: str, at: str | None, after: int) -> SnapshotAnswer:
        """One page of the live records at ``at`` (now, when None)."""
        params: dict[str, Any] = {"after": after}
        if at:
            params["at"] = at
        answer = self.request("GET", self._store_path(store, "/snapshot"), params=params)
        return SnapshotAnswer.parse(answer)

    def find(
        self, store: str, item: str, prefix: bool = False, after: int = 0, limit: int | None = None
    ) -> FindAnswer:
        """One page of the live records with index item ``item`` (or a prefix of one)."""
        params: dict[str, Any] = {"index": item, "after": after}
        if prefix:
            params["prefix"] = "true"
        if limit:
            params["limit"] = limit
        answer = self.request("GET", self._store_path(store, "/records"), params=params)
        return FindAnswer.parse(answer)

    def wait(
        self,
        cursors: dict[str, str | None],
        wait: float,
        pages: bool = False,
        limit: int | None = None,
    ) -> WaitAnswer:
        """Which of ``cursors``' stores have changes (with their first pages when
        ``pages``); may wait up to ``wait`` seconds."""
        body: dict[str, Any] = {"cursors": cursors, "wait": wait}
        if pages:
            # Sent only when asked: a server that predates pages refuses the field.
            body["pages"] = True
            if limit:
                body["limit"] = limit
        answer = self.request(
            "POST",
            "/v1/wait",
            body=body,
            read_timeout=wait + self.poll_margin if wait else None,
        )
        return WaitAnswer.parse(answer)

    def error_for(self, store: str, error: WireError) -> IdsyncError:
        """The exception a request for ``store`` would have raised with this error."""
        spec = ERRORS.get(error.code)
        status = spec.status if spec is not None else 500
        text = f"store {store}: HTTP {status}: {error.message} ({error.code})"
        kind = classify_status(status)
        if kind is TemporaryError:
            return TemporaryError(text, status=status, code=error.code)
        kind = _permanent_kind(status, error.code, kind)
        return kind(text, status=status, code=error.code, details=error.details)

    def limits(self) -> Limits:
        """The server's limits (``GET /v1/health``), fetched once and kept.

        If the server cannot say (unreachable, an older server), the default
        limits are used for now and asked again next time.
        """
        if self._limits is not None:
            return self._limits
        try:
            answer = self.request("GET", "/v1/health")
            advertised = answer.get("limits") or {}
            known = {k: v for k, v in advertised.items() if k in Limits.__dataclass_fields__}
            self._limits = Limits().with_overrides(**known)
        except (IdsyncError, ValueError, AttributeError):
            return Limits()
        return self._limits

    def close(self) -> None:
        """Close the connections, cutting the requests in flight: each fails at
        once on its own thread (ClientClosed), as does every later request."""
        self._closed = True
        for adapter in self.session.adapters.values():
            if isinstance(adapter, KeepAliveAdapter):
                adapter.cut()
        self.session.close()
