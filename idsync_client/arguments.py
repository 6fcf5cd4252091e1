"""Checks of the Client's arguments, made before anything touches the disk.

A wrong argument is a TypeError (wrong type) or a ValueError (right type,
wrong value) with a message naming it; nothing is created or changed.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from urllib.parse import urlsplit

from .protocol import Limits
from .retry import RetryPolicy
from .sqlitedb import SYNCHRONOUS_LEVELS


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def text(what: str, value: object) -> str:
    """``value`` if it is a string: a wrong type is a TypeError naming
    ``what`` (the protocol's checks of the content are ValueErrors)."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, not {type(value).__name__}")
    return value


def seconds(name: str, value: object, *, positive: bool = False) -> float:
    """A finite number of seconds, at least 0 (above 0 with ``positive``).

    More than ``threading.TIMEOUT_MAX`` (about 292 years) counts as that
    much: no wait of the platform can be longer.
    """
    number = _number(name, value)
    if number < 0 or (positive and number == 0):
        bound = "above 0" if positive else "at least 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return min(number, threading.TIMEOUT_MAX)


def server_url(server: object) -> str | None:
    """None, or an ``http://`` / ``https://`` URL with a host."""
    if server is None:
        return None
    if not isinstance(server, str):
        raise TypeError(f"server must be a URL string or None, not {type(server).__name__}")
    parts = urlsplit(server)
    if any(ch.isspace() or not ch.isprintable() for ch in server):
        raise ValueError(
            f"server must be a URL without spaces or control characters, got {server!r}"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"server must be an http:// or https:// URL with a host, got {server!r}")
    return server


def token_or_supplier(value: object) -> object:
    """A bearer token (see :func:`token`), or a callable that supplies one."""
    return value if callable(value) else token(value)


def token(value: object) -> str | None:
    """None, or a bearer token: a non-empty string of visible ASCII characters
    (what an HTTP header carries as it is)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"token must be a string or None, not {type(value).__name__}")
    if not value or not all("!" <= ch <= "~" for ch in value):
        raise ValueError(
            "token must be a non-empty string of visible ASCII characters"
            " (no spaces, line breaks or accented letters)"
        )
    return value


def check_client(
    path: object,
    *,
    synchronous: object,
    create_stores: object,
    retry: object,
    long_poll: object,
    batch_size: object,
    limits: object,
) -> None:
    """Check the Client's other arguments (see :class:`~idsync_client.Client`)."""
    if not isinstance(path, str | Path):
        raise TypeError(f"path must be a str or a Path, not {type(path).__name__}")
    if not str(path):
        raise ValueError("path must not be empty")
    if not isinstance(synchronous, str):
        raise TypeError(f"synchronous must be a string, not {type(synchronous).__name__}")
    if synchronous.upper() not in SYNCHRONOUS_LEVELS:
        raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS_LEVELS)}")
    if not isinstance(create_stores, bool):
        raise TypeError("create_stores must be True or False")
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a RetryPolicy or None, not {type(retry).__name__}")
    # Above the server's max_wait_seconds, each wait is clamped to it.
    seconds("long_poll", long_poll, positive=True)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise TypeError(f"batch_size must be an int, not {type(batch_size).__name__}")
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    if limits is not None and not isinstance(limits, Limits):
        raise TypeError(f"limits must be a Limits or None, not {type(limits).__name__}")
