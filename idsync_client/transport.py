"""HTTP transport to an idsync server: one method per endpoint, errors classified.

Every failure leaves here as an :mod:`idsync_client.errors` exception, already
classified (temporary or permanent); nothing here retries. The server's back-off
hint is obeyed: until it passes, requests fail fast with a TemporaryError
carrying the remaining wait.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import requests

from . import jsoncodec
from .errors import (
    IdsyncError,
    PermanentError,
    StoreNotFound,
    TemporaryError,
    classify_status,
)
from .protocol import BACKOFF_HEADER, Outcome

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0


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
    that adapters can be mounted on it (the testing kit does)."""

    def __init__(
        self, base_url: str, token: str | None = None, session: requests.Session | None = None
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"server URL must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.session = session or requests.Session()
        # No proxy or netrc look-ups on every request: they cost ~0.2 ms each.
        self.session.trust_env = False
        self._backoff_until = 0.0
        self._lock = threading.Lock()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        raw_body: str | None = None,
        body: Any = None,
        read_timeout: float = READ_TIMEOUT,
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
                timeout=(CONNECT_TIMEOUT, read_timeout),
            )
        except requests.Timeout as exc:
            raise TemporaryError(
                f"the server did not answer in time ({exc})", timeout=True
            ) from exc
        except requests.RequestException as exc:
            raise TemporaryError(f"cannot reach the server ({exc})") from exc
        self._note_backoff(response)
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
            read_timeout=READ_TIMEOUT + wait,
        )

    def snapshot(self, store: str, at: str | None, after: int) -> dict[str, Any]:
        """One page of the live records at ``at`` (now, when None)."""
        params: dict[str, Any] = {"after": after}
        if at:
            params["at"] = at
        return self.request("GET", self._store_path(store, "/snapshot"), params=params)

    def close(self) -> None:
        """Close pooled connections."""
        self.session.close()
