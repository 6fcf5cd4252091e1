"""The one table from errors to HTTP: every failure becomes the error envelope.

Endpoints raise :class:`HttpError` or let storage and protocol errors
through; :func:`error_for` turns any of them into the error the client gets,
with the status, ``retryable`` flag and ``Retry-After`` the protocol fixes.
"""

from __future__ import annotations

import logging
from typing import Any

from idsync_client.protocol import ERRORS, ProtocolViolation

from . import metrics
from .storage import (
    ResetRequired,
    StorageBusy,
    StorageError,
    StoreDropped,
    StoreExists,
    StoreNotFound,
)

log = logging.getLogger("idsync.server")

#: Seconds a client should wait before retrying, per retryable error code.
RETRY_AFTER = {
    "storage_busy": 1,
    "storage_unavailable": 5,
    "shutting_down": 2,
    "server_busy": 1,
    "rate_limited": 1,
}


class HttpError(Exception):
    """An error answer: ``code`` is a key of the protocol's ERRORS table."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        if code not in ERRORS:
            raise ValueError(f"unknown error code {code!r}")
        self.code = code
        self.message = message
        self.details = details
        #: Extra response headers, such as ``Allow`` on a 405.
        self.headers: list[tuple[str, str]] = []


def error_for(exc: BaseException) -> HttpError:
    """Map any exception raised while serving to the error the client gets."""
    if isinstance(exc, HttpError):
        return exc
    if isinstance(exc, ProtocolViolation):
        return HttpError(exc.code, exc.message, **exc.details)
    if isinstance(exc, StoreDropped):
        return HttpError("store_dropped", f"store {str(exc)!r} was dropped", epoch=exc.epoch)
    if isinstance(exc, StoreNotFound):
        return HttpError("store_not_found", f"no store named {str(exc)!r}")
    if isinstance(exc, StoreExists):
        return HttpError("store_exists", f"store {str(exc)!r} exists already")
    if isinstance(exc, ResetRequired):
        return HttpError("reset_required", str(exc))
    if isinstance(exc, StorageBusy):
        return HttpError("storage_busy", "the database is busy; retry shortly")
    if isinstance(exc, StorageError):
        metrics.storage_errors.add()
        log.error("storage failure: %s", exc)
        return HttpError("storage_unavailable", "the database failed; retry later")
    log.exception("unexpected error", exc_info=exc)
    return HttpError("internal_error", "unexpected server error")
