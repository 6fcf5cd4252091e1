"""What the client's local database hands out: records, change events,
outbox entries and rejected changes (plain data, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from . import jsoncodec

__all__ = [
    "ChangeEvent",
    "ConflictEvent",
    "KeyInUse",
    "OutboxEntry",
    "Record",
    "RejectedChange",
    "same_json",
]


def same_json(a: str, b: str) -> bool:
    """True when two JSON texts hold equal values, type-exactly: ``false`` is
    not ``0``, ``1`` is not ``1.0``, ``[1]`` is not ``[true]``; object member
    order does not count."""
    return a == b or jsoncodec.canonical(jsoncodec.loads(a)) == jsoncodec.canonical(
        jsoncodec.loads(b)
    )


@dataclass(frozen=True, slots=True)
class Record:
    """A record as the app sees it. ``seq`` is None while it is not yet on the server."""

    key: str
    index: tuple[str, ...]
    value_json: str
    seq: int | None

    @property
    def value(self) -> Any:
        """The value, decoded from its JSON text."""
        return jsoncodec.loads(self.value_json)

    @property
    def pending(self) -> bool:
        """True while the record waits to be uploaded."""
        return self.seq is None


@dataclass(frozen=True)
class ChangeEvent:
    """What changed in a store, told to subscribers after the change committed.

    ``origin`` is ``local`` (this client wrote it) or ``remote`` (pulled, or
    a local write undone because the server rejected it). ``reset`` means the
    store was reloaded from a snapshot: re-read everything.
    """

    store: str
    origin: Literal["local", "remote"]
    added: tuple[Record, ...] = ()
    deleted: tuple[Record, ...] = ()
    reset: bool = False

    def __bool__(self) -> bool:
        return bool(self.added or self.deleted or self.reset)


@dataclass(frozen=True)
class ConflictEvent:
    """A value this device set lost to another device's value of the same attribute.

    Attribute records keep the value the server logged last. This event says
    that a value this device set (``losing_value``, logged at ``losing_seq``)
    was dropped because another device's value (``winning_value``, logged at
    ``winning_seq``) was logged after it, by a device that had not seen it.
    ``winning_origin`` and ``losing_origin`` say where each came from
    (``remote``: another device; ``local``: this device). Told once per lost
    value, after the losing record was deleted; a value replaced by a later
    write on this device, or by an edit made after seeing it, is no conflict.
    """

    store: str
    entity: str
    name: str
    winning_value: Any
    winning_seq: int | None
    winning_key: str
    losing_value: Any
    losing_seq: int | None
    losing_key: str
    winning_origin: Literal["remote"] = "remote"
    losing_origin: Literal["local"] = "local"


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A local change waiting to be uploaded; ``n`` is its change number."""

    n: int
    store: str
    op: Literal["add", "delete"]
    key: str
    index_json: str | None
    value_json: str | None

    def to_wire_json(self) -> str:
        """The change as JSON text for a push body (the value is spliced, not re-encoded)."""
        key = jsoncodec.dumps(self.key)
        if self.op == "delete":
            return f'{{"n":{self.n},"op":"delete","key":{key}}}'
        return (
            f'{{"n":{self.n},"op":"add","key":{key},'
            f'"index":{self.index_json},"value":{self.value_json}}}'
        )


@dataclass(frozen=True)
class RejectedChange:
    """A local change the server refused for good; the app may show and dismiss it."""

    id: int
    n: int
    store: str
    op: str
    key: str
    index: tuple[str, ...]
    value: Any
    code: str
    message: str
    at: float


class KeyInUse(ValueError):
    """The key exists, or existed, in this store: keys are never reused."""
