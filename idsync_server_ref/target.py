"""The request target, decoded strictly: path segments, query parameters, log text.

The path is split on ``/`` *before* percent-decoding, so an encoded slash
(``%2F``) stays inside its segment: a record key may contain ``/`` and can
never be mistaken for more path. Every segment and every query name and
value must be well-formed percent-encoding of valid UTF-8; anything else is
a 400, never a silent replacement character.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

from .errors import HttpError

# A "%" not followed by two hex digits.
_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
# Control characters (C0, DEL, C1), the backslash that introduces our escapes,
# Unicode line and paragraph separators, and lone surrogates: none may reach a log.
_UNSAFE_FOR_LOG = re.compile(r"[\x00-\x1f\x7f-\x9f\\\u2028\u2029\ud800-\udfff]")


def percent_decode(raw: bytes, what: str, plus_is_space: bool = False) -> str:
    """Decode percent-encoded UTF-8 strictly; 400 ``invalid_request`` otherwise."""
    if _BAD_PERCENT.search(raw):
        raise HttpError("invalid_request", f"the {what} has a malformed percent-escape")
    if plus_is_space:
        raw = raw.replace(b"+", b" ")
    try:
        return unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise HttpError("invalid_request", f"the {what} is not valid UTF-8") from None


def path_segments(raw_path: bytes) -> list[str]:
    """The path's segments, each decoded on its own (the leading ``/`` dropped)."""
    if not raw_path.startswith(b"/"):
        raise HttpError("invalid_request", "the path must start with /")
    return [percent_decode(part, "path") for part in raw_path[1:].split(b"/")]


def parse_query(raw_query: bytes) -> dict[str, list[str]]:
    """The query's parameters in order of appearance (``+`` is a space, as in forms)."""
    params: dict[str, list[str]] = {}
    for part in raw_query.split(b"&"):
        if not part:
            continue
        name, _, value = part.partition(b"=")
        decoded = percent_decode(name, "query", plus_is_space=True)
        params.setdefault(decoded, []).append(percent_decode(value, "query", plus_is_space=True))
    return params


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def log_safe(text: str, limit: int = 2000) -> str:
    """``text`` fit for one log line: control characters escaped, length capped."""
    if len(text) > limit:
        text = text[:limit] + "..."
    return _UNSAFE_FOR_LOG.sub(_escape, text)
