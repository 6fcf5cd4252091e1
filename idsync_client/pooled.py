"""Requests sent straight through urllib3, on the pool of a session's own adapter.

requests' ``Session`` and ``HTTPAdapter`` cost about as much CPU again as
the urllib3 request beneath them (a prepared request, cookie jars, header
dictionaries copied and merged, a ``Response`` built): some 0.3 ms a
request on a small machine, on threads that share one interpreter lock
with the app, for a client that makes a few requests per change it syncs
live. :class:`PooledSender` sends the plain case with urllib3 directly, on
the very pool requests would use (the same connections, TCP keepalive, the
sockets that closing cuts), with the session's headers and urllib3's
retries as the adapter sets them. Only plain HTTP: an HTTPS request goes
through requests, whose certificate checks are its own.

Whatever requests would do more than that goes through requests
(:meth:`PooledSender.usable` says when): an adapter other than the one
given (mounted over it, like the testing kit's), ``HTTPAdapter.send``
replaced (the ``responses`` library), a proxy, cookies in the session's
jar, credentials in the URL, and what only requests applies that an app
set on the session (``auth``, default ``params``, ``hooks``). An answer that sets a cookie has it put in
the session's jar (later requests then go through requests); an answer
that redirects is returned as it is, for the caller to send again through
requests, which follows it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.cookies import extract_cookies_to_jar
from urllib3 import Timeout
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ReadTimeoutError,
)
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import SSLError as Urllib3SSLError

__all__ = ["PooledAnswer", "PooledSender"]

#: requests' own ``HTTPAdapter.send``: when it is replaced (a test library
#: that fakes answers), every request must reach the replacement.
_REQUESTS_SEND = HTTPAdapter.send


@dataclass(frozen=True)
class PooledAnswer:
    """An HTTP answer: the parts of a ``requests.Response`` the transport reads."""

    status_code: int
    reason: str
    headers: Any  # urllib3's HTTPHeaderDict: a case-insensitive mapping
    content: bytes

    @property
    def text(self) -> str:
        """The body as text (UTF-8, undecodable bytes replaced)."""
        return self.content.decode("utf-8", errors="replace")

    @property
    def is_redirect(self) -> bool:
        """Whether the answer sends the client elsewhere (as requests defines it)."""
        return "location" in self.headers and self.status_code in (301, 302, 303, 307, 308)


class PooledSender:
    """Sends requests to ``base_url`` through ``adapter``'s urllib3 pool.

    Each failure leaves as the requests exception requests would raise for
    it (``ConnectTimeout``, ``ReadTimeout``, ``SSLError``,
    ``ConnectionError``), so callers handle both ways alike.
    """

    def __init__(self, base_url: str, session: requests.Session, adapter: HTTPAdapter) -> None:
        parts = urlsplit(base_url)
        self.session = session
        self.adapter = adapter
        self.scheme = parts.scheme.lower()
        self.host = parts.hostname or ""
        self.port = parts.port
        self.base_path = parts.path.rstrip("/")
        self._url_has_credentials = parts.username is not None or parts.password is not None
        self._base_url = base_url

    def usable(self) -> bool:
        """Whether requests would send a request here exactly as :meth:`send` does."""
        session = self.session
        adapter = session.get_adapter(self._base_url)
        return (
            # TLS is left to requests: its certificate checks (which CA
            # bundle, client certificates) are its own, not redone here.
            self.scheme == "http"
            and adapter is self.adapter
            and type(adapter).send is _REQUESTS_SEND
            and not session.proxies
            and not session.cookies
            and not self._url_has_credentials
            # What an app set on the session that only requests applies.
            and session.auth is None
            and not session.params
            and not any(session.hooks.values())
        )

    def send(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None,
        headers: dict[str, str],
        body: bytes | None,
        timeout: tuple[float, float],
    ) -> PooledAnswer:
        """Send one request and read its whole answer."""
        session = self.session
        url = self.base_path + path
        if params:
            url += "?" + urlencode(params, doseq=True)
        try:
            pool = self.adapter.poolmanager.connection_from_host(
                self.host, self.port, self.scheme
            )
            response = pool.urlopen(
                method,
                url,
                body=body,
                headers=_merged(session.headers, headers),
                redirect=False,
                assert_same_host=False,
                preload_content=True,
                decode_content=True,
                retries=self.adapter.max_retries,
                timeout=Timeout(connect=timeout[0], read=timeout[1]),
            )
        except (Urllib3Error, OSError) as exc:
            raise _as_requests_error(exc) from exc
        answer = PooledAnswer(response.status, response.reason or "", response.headers, response.data)
        if "set-cookie" in response.headers:
            self._keep_cookies(method, url, headers, response)
        return answer

    def _keep_cookies(self, method: str, url: str, headers: dict[str, str], response: Any) -> None:
        """Put the cookies an answer sets in the session's jar, as requests would."""
        request = requests.PreparedRequest()
        request.prepare(method=method, url=f"{self.scheme}://{self._netloc()}{url}", headers=headers)
        extract_cookies_to_jar(self.session.cookies, request, response)

    def _netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


def _merged(session_headers: Mapping[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    """The session's headers and the request's, as requests merges them: the
    request's win, and a header set to None is left out."""
    merged = {name: value for name, value in session_headers.items() if value is not None}
    for name in headers:  # case-insensitive, as the session's are
        for other in [k for k in merged if k.lower() == name.lower()]:
            del merged[other]
    merged.update(headers)
    return merged


def _as_requests_error(exc: BaseException) -> requests.RequestException:
    """The exception requests raises for urllib3's ``exc``."""
    reason = exc.reason if isinstance(exc, MaxRetryError) else exc
    # A refused connection is a NewConnectionError, which urllib3 derives
    # from ConnectTimeoutError: requests calls it a ConnectionError.
    if isinstance(reason, ConnectTimeoutError) and not isinstance(reason, NewConnectionError):
        return requests.ConnectTimeout(str(exc))
    if isinstance(reason, ReadTimeoutError):
        return requests.ReadTimeout(str(exc))
    if isinstance(reason, Urllib3SSLError):
        return requests.exceptions.SSLError(str(exc))
    return requests.ConnectionError(str(exc))
