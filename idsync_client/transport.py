"""HTTP transport to an idsync server: one method per endpoint, errors classified.

Every failure leaves here as an :mod:`idsync_client.errors` exception, already
classified (temporary or permanent); nothing here retries. The server's back-off
hint is obeyed: until it passes, requests fail fast with a TemporaryError
carrying the remaining wait.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection

from . import jsoncodec
from .errors import (
    IdsyncError,
    PermanentError,
    StoreNotFound,
    TemporaryError,
    classify_status,
)
from .protocol import BACKOFF_HEADER, Limits, Outcome

#: Seconds to open a connection.
CONNECT_TIMEOUT = 5.0
#: Seconds to wait for an answer to an ordinary request (no wait asked for):
#: short, so that a dead link is noticed soon.
READ_TIMEOUT = 10.0
#: Added to a long-poll's wait to make its read timeout.
POLL_MARGIN = 5.0


def _keepalive_options() -> list[tuple[int, int, int]]:
    """TCP keepalive, probing an idle link after 10 s, where the platform allows."""
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    return options


class KeepAliveAdapter(HTTPAdapter):
    """An HTTPAdapter whose sockets use TCP keepalive, so a link that died
    silently fails a waiting request instead of hanging until its timeout."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        """Create the pool with keepalive socket options."""
        kwargs["socket_options"] = [*HTTPConnection.default_socket_options, *_keepalive_options()]
        super().init_poolmanager(*args, **kwargs)


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from our servers, fall back to backoff


class HttpTransport:
    """Talks to one server. ``session`` is a :class:`requests.Session`, exposed so
    that adapters can be mounted on it (the testing kit does).

    ``connect_timeout`` and ``read_timeout`` bound each request; a long-poll
    waits ``wait + poll_margin`` for its answer. ``contacts`` counts the
    answers the server gave (any answer but a temporary failure): the
    status says "online" only after one.
    """

    def __init__(
        self, base_url: str, token: str | None = None, session: requests.Session | None = None
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"server URL must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.session = session or requests.Session()
        if session is None:
            self.session.mount("http://", KeepAliveAdapter())
            self.session.mount("https://", KeepAliveAdapter())
        # No proxy or netrc look-ups on every request: they cost ~0.2 ms each.
        self.session.trust_env = False
        self.connect_timeout = CONNECT_TIMEOUT
        self.read_timeout = READ_TIMEOUT
        self.poll_margin = POLL_MARGIN
        self.contacts = 0
        self._backoff_until = 0.0
        self._lock = threading.Lock()
        self._limits: Limits | None = None

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
        with self._lock:
            wait = self._backoff_until - time.monotonic()
        if wait > 0:
            raise TemporaryError("the server asked clients to back off", retry_after=wait)
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if body is not None:
            raw_body = jsoncodec.dumps(body)
        try:
            response = self.session.request(
                method,
                self.base_url + path,
                params=params,
                headers=headers,
                data=raw_body.encode("utf-8") if raw_body is not None else None,
                timeout=(self.connect_timeout, read_timeout or self.read_timeout),
            )
        except requests.Timeout as exc:
            raise TemporaryError(
                f"the server did not answer in time ({exc})", timeout=True
            ) from exc
        except requests.RequestException as exc:
            raise TemporaryError(f"cannot reach the server ({exc})") from exc
        self._note_backoff(response)
        if classify_status(response.status_code) is not TemporaryError:
            with self._lock:
                self.contacts += 1
        if response.status_code < 400:
            try:
                answer = jsoncodec.loads(response.content)
            except jsoncodec.JSONDecodeError as exc:
                raise TemporaryError("the server sent a garbled answer") from exc
            if not isinstance(answer, dict):
                raise TemporaryError("the server's answer is not a JSON object")
            return answer
        raise self._error(response)

    def _note_backoff(self, response: requests.Response) -> None:
        hint = response.headers.get(BACKOFF_HEADER)
        if hint:
            try:
                seconds = min(float(hint), 3600.0)
            except ValueError:
                return
            with self._lock:
                self._backoff_until = max(self._backoff_until, time.monotonic() + seconds)

    @staticmethod
    def _error(response: requests.Response) -> IdsyncError:
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
        if code == "store_not_found":
            kind = StoreNotFound
        assert issubclass(kind, PermanentError)
        return kind(text, status=status, code=code, details=details)

    # -- endpoints ----------------------------------------------------------

    def _store_path(self, store: str, tail: str = "") -> str:
        return f"/v1/stores/{store}{tail}"

    def create_store(self, store: str) -> None:
        """Create the store; an existing store is fine."""
        try:
            self.request("POST", "/v1/stores", body={"name": store})
        except PermanentError as exc:
            if exc.code != "store_exists":
                raise

    def push(self, store: str, client_id: str, changes_json: list[str]) -> list[Outcome]:
        """Upload changes (each already JSON text); one outcome per change."""
        raw = f'{{"client_id":{jsoncodec.dumps(client_id)},"changes":[{",".join(changes_json)}]}}'
        answer: dict[str, Any] = self.request(
            "POST", self._store_path(store, "/push"), raw_body=raw
        )
        return [Outcome.from_wire(o) for o in answer["outcomes"]]

    def pull(
        self, store: str, cursor: str | None, wait: float = 0.0, limit: int | None = None
    ) -> dict[str, Any]:
        """One page of changes after ``cursor``; may wait up to ``wait`` seconds."""
        params: dict[str, Any] = {}
        if cursor:
            params["cursor"] = cursor
        if wait:
            params["wait"] = wait
        if limit:
            params["limit"] = limit
        return self.request(
            "GET",
            self._store_path(store, "/changes"),
            params=params,
            read_timeout=wait + self.poll_margin if wait else None,
        )

    def snapshot(self, store: str, at: str | None, after: int) -> dict[str, Any]:
        """One page of the live records at ``at`` (now, when None)."""
        params: dict[str, Any] = {"after": after}
        if at:
            params["at"] = at
        return self.request("GET", self._store_path(store, "/snapshot"), params=params)

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
        """Close pooled connections."""
        self.session.close()
