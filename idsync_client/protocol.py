"""The idsync wire protocol as plain data: no I/O, shared by client and server.

Everything a client and a server must agree on lives here: the protocol
version, the shapes of changes and outcomes, the cursor, the error codes with
their HTTP status and retry class, the limits, and the validation of names,
keys, index items and values. ``docs/protocol.md`` describes the same things
in prose; a test keeps the two in step.

Protocol versions:
    1 - push/pull/snapshot/records over HTTP+JSON, cursor ``<epoch>.<seq>``;
        since 0.2 a cursor past the start also names its log entry,
        ``<epoch>.<seq>.<tag>``, and a cursor the server did not issue on the
        history it holds is answered ``reset_required``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from . import jsoncodec

__all__ = [
    "ERRORS",
    "PROTOCOL_VERSION",
    "Change",
    "Cursor",
    "ErrorSpec",
    "Limits",
    "Outcome",
    "ProtocolViolation",
    "encode_value",
    "parse_change",
    "prefix_upper_bound",
    "validate_client_id",
    "validate_index_items",
    "validate_key",
    "validate_store_name",
]

PROTOCOL_VERSION = 1
API_PREFIX = "/v1"

#: Response header carrying the server's "back off" hint, in seconds.
BACKOFF_HEADER = "Idsync-Backoff"

STORE_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
CLIENT_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
# C0 and C1 control characters and DEL; lone surrogates are caught separately.
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_EPOCH_PATTERN = re.compile(r"[0-9a-f]{16}")
_TAG_PATTERN = re.compile(r"[0-9a-f]{1,16}")
#: The largest sequence number, change number or JSON integer: 64-bit signed.
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
_INT64_MAX = INT64_MAX


@dataclass(frozen=True)
class ErrorSpec:
    """How an error code travels: its HTTP status and whether a retry can help."""

    status: int
    retryable: bool
    description: str


#: Every error code the server can answer with. Stable: clients key on them.
ERRORS: dict[str, ErrorSpec] = {
    "malformed_json": ErrorSpec(400, False, "The body is not valid UTF-8 JSON."),
    "invalid_request": ErrorSpec(
        400, False, "Wrong types, unknown or missing fields, or a bad query parameter."
    ),
    "invalid_store_name": ErrorSpec(400, False, "The store name does not match the pattern."),
    "invalid_cursor": ErrorSpec(400, False, "The cursor is malformed (not a cursor at all)."),
    "unauthorized": ErrorSpec(401, False, "No valid bearer token was given."),
    "forbidden": ErrorSpec(403, False, "The token may not do this to this store."),
    "not_found": ErrorSpec(404, False, "No such endpoint."),
    "store_not_found": ErrorSpec(404, False, "No such store (or not visible to you)."),
    "record_not_found": ErrorSpec(404, False, "No live record with that key."),
    "user_not_found": ErrorSpec(404, False, "No user with that name."),
    "token_not_found": ErrorSpec(404, False, "No token with that id."),
    "method_not_allowed": ErrorSpec(405, False, "The endpoint does not take this method."),
    "store_exists": ErrorSpec(409, False, "A store with that name exists already."),
    "user_exists": ErrorSpec(409, False, "A user with that name exists already."),
    "reset_required": ErrorSpec(
        410,
        False,
        "The cursor is from another epoch, behind the compaction horizon, or not one "
        "this server issued on the history it holds now (past the head, or naming "
        "another log entry, as after a restore from an older copy): load a snapshot "
        "and continue from its cursor.",
    ),
    "store_dropped": ErrorSpec(
        410,
        False,
        "The store was dropped: stop syncing it. Syncing never re-creates it; only a "
        'create with "recreate": true does, with a new epoch.',
    ),
    "body_too_large": ErrorSpec(413, False, "The request body exceeds max_body_bytes."),
    "batch_too_large": ErrorSpec(413, False, "The push has more than max_batch changes."),
    "unsupported_media_type": ErrorSpec(415, False, "Send Content-Type: application/json."),
    "invalid_change": ErrorSpec(
        422, False, "A change breaks a rule or a limit; details.n names it. Nothing was written."
    ),
    "rate_limited": ErrorSpec(429, True, "Too many requests; honour Retry-After."),
    "internal_error": ErrorSpec(500, True, "An unexpected server fault."),
    "storage_busy": ErrorSpec(503, True, "The database is locked by other work; retry soon."),
    "storage_unavailable": ErrorSpec(503, True, "The database failed; retry later."),
    "shutting_down": ErrorSpec(503, True, "The server is stopping."),
    "server_busy": ErrorSpec(503, True, "The server holds all the connections it takes."),
}

#: Codes of per-change rejections inside a push's outcomes (not HTTP errors).
REJECTION_CODES: dict[str, str] = {
    "key_exists": "The key exists with other content (index items or value).",
    "key_deleted": "The key existed once and was deleted; keys are never reused.",
    "key_not_found": "Delete of a key that never existed in this store.",
    "change_number_conflict": "This client already sent this change number with another body.",
}


@dataclass(frozen=True)
class Limits:
    """Size limits, enforced by the server and checked early by the client.

    Each is configurable on the server; the client uses the defaults unless
    told otherwise. Sizes in bytes are of UTF-8 encoded JSON text.
    """

    max_body_bytes: int = 8 * 1024 * 1024
    max_batch: int = 1000
    max_key_length: int = 256
    max_index_items: int = 32
    max_index_item_length: int = 256
    max_value_bytes: int = 256 * 1024
    max_depth: int = 32
    max_page: int = 5000
    default_page: int = 1000
    max_page_bytes: int = 4 * 1024 * 1024
    max_wait_seconds: float = 30.0
    max_wait_stores: int = 100

    def with_overrides(self, **changes: Any) -> Limits:
        """Return a copy with some limits changed; each must be a positive number."""
        for name, value in changes.items():
            if name not in self.__dataclass_fields__:
                raise ValueError(f"unknown limit {name!r}")
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"limit {name} must be a positive number, got {value!r}")
        limits = replace(self, **changes)
        if limits.default_page > limits.max_page:
            raise ValueError(
                f"limit default_page ({limits.default_page}) is over max_page ({limits.max_page})"
            )
        return limits


class ProtocolViolation(ValueError):
    """Input breaks a protocol rule. ``code`` is an :data:`ERRORS` key."""

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details


@dataclass(frozen=True)
class Cursor:
    """A point of one store's history: the epoch, a sequence, and the entry's tag.

    ``tag`` names the log entry at ``seq`` (the server draws it when it logs
    the change), so a cursor issued on one history is never taken for a point
    of another: after a restore from an older copy, the same ``seq`` holds
    another entry with another tag. Sequence 0 (before the first change) has
    no tag. A cursor without a tag past sequence 0 (issued before tags
    existed) cannot be checked and is answered ``reset_required``.

    Clients treat the encoded form as opaque; only the server interprets it.
    """

    epoch: str
    seq: int
    tag: str = ""

    def encode(self) -> str:
        """The wire form, ``<epoch>.<seq>`` or ``<epoch>.<seq>.<tag>``."""
        if self.tag:
            return f"{self.epoch}.{self.seq}.{self.tag}"
        return f"{self.epoch}.{self.seq}"

    @classmethod
    def decode(cls, text: object) -> Cursor:
        """Parse the wire form; raise :class:`ProtocolViolation` when it is garbage."""
        if not isinstance(text, str) or len(text) > 64:
            raise ProtocolViolation("invalid_cursor", "cursor must be a short string")
        epoch, seq_text, *rest = text.split(".") if "." in text else (text, "")
        tag = rest[0] if len(rest) == 1 else None if rest else ""
        if (
            tag is None
            or (rest and not tag)
            or not _EPOCH_PATTERN.fullmatch(epoch)
            or not seq_text.isascii()
            or not seq_text.isdigit()
            or (tag and not _TAG_PATTERN.fullmatch(tag))
        ):
            raise ProtocolViolation("invalid_cursor", f"malformed cursor {text[:64]!r}")
        seq = int(seq_text)
        if seq > INT64_MAX:
            raise ProtocolViolation("invalid_cursor", "cursor sequence out of range")
        return cls(epoch, seq, tag)


@dataclass(frozen=True, slots=True)
class Change:
    """One change a client uploads: add a record, or delete one by key.

    ``n`` is the client's own number for the change (unique per client id and
    store); ``value_json`` is the value already encoded as JSON text.
    """

    n: int
    op: Literal["add", "delete"]
    key: str
    index: tuple[str, ...] = ()
    value_json: str = "null"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one uploaded change.

    ``status`` is ``applied`` (logged now at ``seq``), ``duplicate`` (the same
    change was logged before, at ``seq``: a success) or ``rejected`` (with a
    ``code`` from :data:`REJECTION_CODES` and a ``message``; never retried).
    """

    n: int
    status: Literal["applied", "duplicate", "rejected"]
    seq: int | None = None
    code: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        """True when the change is in the server's log."""
        return self.status != "rejected"

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready form of this outcome."""
        if self.status == "rejected":
            return {"n": self.n, "status": "rejected", "code": self.code, "message": self.message}
        return {"n": self.n, "status": self.status, "seq": self.seq}

    @classmethod
    def from_wire(cls, obj: Any) -> Outcome:
        """Parse an outcome from a push response."""
        if not isinstance(obj, dict) or obj.get("status") not in (
            "applied",
            "duplicate",
            "rejected",
        ):
            raise ProtocolViolation("invalid_request", f"malformed outcome {obj!r}")
        return cls(
            n=obj["n"],
            status=obj["status"],
            seq=obj.get("seq"),
            code=obj.get("code"),
            message=obj.get("message"),
        )


def _check_text(kind: str, value: object, max_length: int, code: str = "invalid_request") -> str:
    if not isinstance(value, str):
        raise ProtocolViolation(code, f"{kind} must be a string, got {type(value).__name__}")
    if not value:
        raise ProtocolViolation(code, f"{kind} must not be empty")
    if len(value) > max_length:
        raise ProtocolViolation(code, f"{kind} is longer than {max_length} characters")
    if _CONTROL_CHARS.search(value):
        raise ProtocolViolation(code, f"{kind} contains a control character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolViolation(code, f"{kind} contains a lone surrogate") from None
    return value


def validate_store_name(name: object) -> str:
    """Return ``name`` if it is a valid store name, else raise ProtocolViolation."""
    if not isinstance(name, str) or not STORE_NAME_PATTERN.fullmatch(name):
        shown = repr(name)[:80]
        raise ProtocolViolation(
            "invalid_store_name",
            f"store name {shown} must match {STORE_NAME_PATTERN.pattern}",
        )
    return name


def validate_client_id(client_id: object) -> str:
    """Return ``client_id`` if valid (1-64 of ``A-Za-z0-9_-``), else raise."""
    if not isinstance(client_id, str) or not CLIENT_ID_PATTERN.fullmatch(client_id):
        raise ProtocolViolation(
            "invalid_request", f"client_id must match {CLIENT_ID_PATTERN.pattern}"
        )
    return client_id


def validate_key(key: object, limits: Limits, code: str = "invalid_request") -> str:
    """Return ``key`` if it is a valid record key, else raise ProtocolViolation."""
    return _check_text("key", key, limits.max_key_length, code)


def validate_index_items(
    items: object, limits: Limits, code: str = "invalid_request"
) -> tuple[str, ...]:
    """Validate index items and return them sorted and without duplicates."""
    if isinstance(items, str) or not isinstance(items, list | tuple | set | frozenset):
        raise ProtocolViolation(code, "index must be a list of strings")
    if len(items) > limits.max_index_items:
        raise ProtocolViolation(code, f"more than {limits.max_index_items} index items")
    for item in items:
        _check_text("index item", item, limits.max_index_item_length, code)
    return tuple(sorted(set(items)))


_INT_MIN = INT64_MIN


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with ``prefix``.

    Strings compare by code point (Python) or by UTF-8 bytes (SQLite): the
    same order. A prefix query is ``prefix <= item < bound`` (no upper bound
    when None: the prefix is all U+10FFFF). Appending U+10FFFF to the prefix
    instead would miss items that continue with U+10FFFF itself.
    """
    while prefix:
        code = ord(prefix[-1]) + 1
        if 0xD800 <= code <= 0xDFFF:
            code = 0xE000
        if code <= 0x10FFFF:
            return prefix[:-1] + chr(code)
        prefix = prefix[:-1]
    return None


def _check_scalar(item: Any) -> bool:
    """Check a non-container value; False if it is a container (list or dict)."""
    kind = type(item)
    if kind is str or kind is bool or item is None:
        return True
    if kind is int:
        if not _INT_MIN <= item <= _INT64_MAX:
            raise ValueError("integers must fit in 64 bits")
        return True
    if kind is float:
        if not math.isfinite(item):
            raise ValueError("NaN and infinities are not JSON")
        return True
    if kind is list or kind is dict:
        return False
    raise ValueError(f"{kind.__name__} is not a JSON type")


def _check_json_value(value: Any, max_depth: int) -> None:
    """Walk a value iteratively: JSON types only, finite numbers, bounded depth.

    Exact type checks (no subclasses) keep the walk cheap on the write path and
    make the accepted values the same whichever JSON encoder is installed.
    """
    if _check_scalar(value):
        return
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            raise ValueError(f"nested deeper than {max_depth} levels")
        if type(item) is dict:
            for child_key in item:
                if type(child_key) is not str:
                    raise ValueError("object keys must be strings")
            children = item.values()
        else:
            children = item
        for child in children:
            if not _check_scalar(child):
                stack.append((child, depth + 1))


def encode_value(value: Any, limits: Limits, code: str = "invalid_request") -> str:
    """Check a JSON value against the limits and return its JSON text."""
    try:
        _check_json_value(value, limits.max_depth)
        text = jsoncodec.dumps(value)
        size = len(text.encode("utf-8"))
    except (ValueError, TypeError) as exc:
        raise ProtocolViolation(code, f"invalid value: {exc}") from None
    if size > limits.max_value_bytes:
        raise ProtocolViolation(
            code, f"value is {size} bytes, over the {limits.max_value_bytes} limit"
        )
    return text


_ADD_FIELDS = frozenset({"n", "op", "key", "index", "value"})
_DELETE_FIELDS = frozenset({"n", "op", "key"})


def parse_change(obj: Any, limits: Limits) -> Change:
    """Validate one change from a push body; raise ProtocolViolation(invalid_change)."""
    code = "invalid_change"
    if not isinstance(obj, dict):
        raise ProtocolViolation(code, "a change must be an object")
    n = obj.get("n")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= _INT64_MAX:
        raise ProtocolViolation(code, "change number n must be a positive integer")
    op = obj.get("op")
    allowed = _ADD_FIELDS if op == "add" else _DELETE_FIELDS if op == "delete" else None
    if allowed is None:
        raise ProtocolViolation(code, "op must be 'add' or 'delete'", n=n)
    unknown = obj.keys() - allowed
    if unknown:
        raise ProtocolViolation(code, f"unknown fields {sorted(unknown)}", n=n)
    try:
        key = validate_key(obj.get("key"), limits, code)
        if op == "delete":
            return Change(n=n, op="delete", key=key)
        if "value" not in obj:
            raise ProtocolViolation(code, "an add needs a value")
        index = validate_index_items(obj.get("index", []), limits, code)
        value_json = encode_value(obj["value"], limits, code)
    except ProtocolViolation as exc:
        raise ProtocolViolation(code, exc.message, n=n) from None
    return Change(n=n, op="add", key=key, index=index, value_json=value_json)


@dataclass
class ErrorBody:
    """The one error envelope every error response carries."""

    code: str
    message: str
    retryable: bool
    details: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready envelope: ``{"error": {...}}``."""
        return {
            "error": {
                "code": self.code,
                "message": self.message,
                "retryable": self.retryable,
                "details": self.details,
            }
        }
