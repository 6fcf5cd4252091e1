"""The client's exceptions: one tree, with the branches the retry policy keys on.

::

    IdsyncError
    ├── TemporaryError          retry with backoff (network, timeouts, 408, 429, 5xx but 501)
    ├── PermanentError          never retried (other 4xx, 501, validation)
    │   ├── AuthError           401: sync pauses until credentials change
    │   ├── ResetRequired       410 reset_required: the engine reloads a snapshot
    │   ├── StoreDropped        410 store_dropped: that store stops syncing
    │   └── StoreNotFound       404 store_not_found
    ├── LocalStorageError       the local file cannot be read or written (disk full, ...)
    ├── SyncLocked              another process is syncing this local file
    └── ClientClosed            the client was closed

Misuse of the API (a wrong type, an oversize value) raises ``TypeError`` or
``ValueError`` (:class:`~idsync_client.protocol.ProtocolViolation` is one).
"""

from __future__ import annotations

from dataclasses import dataclass


class IdsyncError(Exception):
    """Root of every error idsync raises on purpose."""


class TemporaryError(IdsyncError):
    """A failure that can pass: safe to retry, after ``retry_after`` seconds if given.

    Raised for connection refused/reset, DNS failure, timeouts, and HTTP
    408, 429 and 5xx other than 501.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        timeout: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after
        self.timeout = timeout


class PermanentError(IdsyncError):
    """A failure that retrying cannot fix (the request itself is wrong)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        details: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.details = details or {}


class AuthError(PermanentError):
    """The server refused the credentials (401). A 403 (the token is good, but
    may not do this to one store) is a plain PermanentError for that store."""


class ResetRequired(PermanentError):
    """The local cursor is no longer valid on the server: reload a snapshot."""


class StoreNotFound(PermanentError):
    """The store does not exist on the server."""


class StoreDropped(PermanentError):
    """The store was dropped on the server (410 ``store_dropped``).

    Never a reset and never re-created by sync: the client stops syncing
    that store (its pending changes stay in the file) until the app calls
    :meth:`~idsync_client.Client.recreate_store`. ``epoch`` is the epoch
    the dropped store had (``details.epoch``), None if the server did not say.
    """

    @property
    def epoch(self) -> str | None:
        """The epoch the store had when it was dropped."""
        value = self.details.get("epoch")
        return value if isinstance(value, str) else None


class LocalStorageError(IdsyncError):
    """The local database file or its sync-lock file failed (disk full, read-only,
    missing, corrupt, ...).

    Raised by any public call that touches the local file, with the driver's
    exception as ``__cause__`` (and in ``original``). A write that raises it
    is wholly absent; nothing is half written. Free space (or fix the file)
    and retry: pending changes are kept and sync resumes by itself.
    """

    def __init__(self, message: str, *, original: BaseException | None = None) -> None:
        super().__init__(message)
        self.original = original


class SyncLocked(IdsyncError):
    """Another process holds this local database's sync lock."""


class ClientClosed(IdsyncError):
    """The client was closed; open a new one."""


@dataclass(frozen=True)
class RetryRule:
    """One row of the classification table."""

    what: str
    retried: bool
    action: str


#: The classification every HTTP failure goes through, as documented in docs/client.md.
CLASSIFICATION: list[RetryRule] = [
    RetryRule("connection refused / reset, DNS failure", True, "backoff with full jitter"),
    RetryRule("timeout (connect or read)", True, "backoff with full jitter"),
    RetryRule("408 Request Timeout", True, "backoff with full jitter"),
    RetryRule("429 Too Many Requests", True, "wait Retry-After, else backoff"),
    RetryRule("500, 502, 503, 504 and other 5xx", True, "wait Retry-After, else backoff"),
    RetryRule("501 Not Implemented", False, "permanent error"),
    RetryRule("401", False, "sync pauses until set_token()"),
    RetryRule("403", False, "that store is refused; the others sync on"),
    RetryRule("410 reset_required", False, "reload the snapshot, keep pending changes"),
    RetryRule(
        "410 store_dropped",
        False,
        "that store stops syncing (pending changes kept) until recreate_store()",
    ),
    RetryRule(
        "413 (any body, JSON or not)",
        False,
        "split the batch and resend; a change too large alone moves to rejected",
    ),
    RetryRule("422 invalid_change", False, "that change moves to rejected; the rest resent"),
    RetryRule("other 4xx", False, "permanent error"),
    RetryRule("Idsync-Backoff header", True, "no request until the hint has passed"),
]


def classify_status(status: int) -> type[IdsyncError]:
    """The exception class for an HTTP error status (the table above, in code)."""
    if status in (408, 429) or (status >= 500 and status != 501):
        return TemporaryError
    if status == 401:
        return AuthError
    if status == 410:
        return ResetRequired
    return PermanentError
