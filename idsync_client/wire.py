"""The answers of the idsync endpoints as types: built by the server, parsed by the client.

One type per answer. Each has a ``to_json`` the server calls, which splices
items that are already JSON text (stored values are never decoded and
encoded again on the way out), and a ``parse`` the client calls on the
decoded answer, which checks its shape and raises :class:`MalformedAnswer`
when it is wrong. No I/O here; only the standard library, the JSON codec and
the protocol's plain data.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain, repeat
from typing import Any

from . import jsoncodec
from .errors import PermanentError
from .protocol import Cursor, Outcome, ProtocolViolation

__all__ = [
    "FindAnswer",
    "MalformedAnswer",
    "PullAnswer",
    "PushAnswer",
    "SnapshotAnswer",
    "WaitAnswer",
    "WireError",
]


class MalformedAnswer(PermanentError):
    """The server's answer is JSON but not the shape the protocol gives it.

    A permanent error (code ``malformed_answer``): the request is not
    retried at once, and nothing of the answer is applied locally.
    """

    def __init__(self, what: str, problem: str) -> None:
        super().__init__(
            f"the server's {what} answer is malformed: {problem}", code="malformed_answer"
        )


def _bool(flag: bool) -> str:
    return "true" if flag else "false"


def _object(what: str, obj: object, fields: Iterable[str]) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise MalformedAnswer(what, "not a JSON object")
    missing = [name for name in fields if name not in obj]
    if missing:
        raise MalformedAnswer(what, f"missing {', '.join(missing)}")
    return obj


def _typed(what: str, obj: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = obj[name]
    # bool is an int in Python, never in the protocol.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise MalformedAnswer(what, f"{name} is {type(value).__name__}")
    return value


def _cursor(what: str, obj: dict[str, Any], name: str) -> str:
    text = obj[name]
    try:
        Cursor.decode(text)
    except ProtocolViolation:
        raise MalformedAnswer(what, f"{name} is not a cursor: {str(text)[:64]!r}") from None
    assert isinstance(text, str)
    return text


def _seq(what: str, item: dict[str, Any]) -> None:
    seq = item.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise MalformedAnswer(what, f"an item's seq is {seq!r}")


def _index(what: str, item: dict[str, Any]) -> None:
    index = item.get("index")
    if not isinstance(index, list) or not all(isinstance(i, str) for i in index):
        raise MalformedAnswer(what, "an item's index is not a list of strings")


def _all_of(values: Iterable[Any], kind: type) -> bool:
    # map() with the builtin: no Python frame per value.
    return all(map(isinstance, values, repeat(kind)))


def _items_well_formed(items: list[Any], adds: list[Any] | None) -> bool:
    """A quick check of a page's items, column by column at C speed (a
    page holds thousands): objects with a string ``key`` and a positive
    integer ``seq``, and, for ``adds`` (all of ``items`` when None), a
    ``value`` and an ``index`` list of strings. False means: look at each
    item to say which is wrong."""
    if not _all_of(items, dict):
        return False
    if not _all_of([item.get("key") for item in items], str):
        return False
    seqs = [item.get("seq") for item in items]
    # type(), not isinstance: bool is an int in Python, never in the protocol.
    if seqs and (set(map(type, seqs)) != {int} or min(seqs) < 1):
        return False
    adds = items if adds is None else adds
    if not all(map(dict.__contains__, adds, repeat("value"))):
        return False
    indexes = [item.get("index") for item in adds]
    return _all_of(indexes, list) and _all_of(chain.from_iterable(indexes), str)


def _records(what: str, records: list[Any]) -> list[dict[str, Any]]:
    if _items_well_formed(records, None):
        return records
    for record in records:
        if not isinstance(record, dict) or not isinstance(record.get("key"), str):
            raise MalformedAnswer(what, "a record is not an object with a key")
        if "value" not in record:
            raise MalformedAnswer(what, "a record has no value")
        _index(what, record)
        _seq(what, record)
    return records


def _after(what: str, obj: dict[str, Any]) -> int:
    after: int = _typed(what, obj, "after", int)
    if after < 0:
        raise MalformedAnswer(what, "after is negative")
    return after


def _changes_well_formed(changes: list[Any]) -> bool:
    """The quick check of :func:`_items_well_formed` for a page of changes
    (each an add or a delete)."""
    if not _all_of(changes, dict):
        return False
    ops = [change.get("op") for change in changes]
    if not _all_of(ops, str):  # an op that is a list or an object cannot go in a set
        return False
    kinds = set(ops)
    if not kinds <= {"add", "delete"}:
        return False
    if kinds == {"add"}:
        return _items_well_formed(changes, None)
    adds = [change for change, op in zip(changes, ops, strict=True) if op == "add"]
    return _items_well_formed(changes, adds)


@dataclass(frozen=True)
class PullAnswer:
    """A page of changes (``GET /v1/stores/{store}/changes``).

    ``changes`` are decoded change objects, oldest first: ``{"seq", "op":
    "add", "key", "index", "value"}`` or ``{"seq", "op": "delete", "key"}``.
    """

    changes: list[dict[str, Any]]
    cursor: str
    more: bool

    @staticmethod
    def to_json(changes_json: Sequence[str], cursor: Cursor, more: bool) -> str:
        """The answer's JSON text, splicing changes that are already JSON text."""
        return (
            f'{{"changes":[{",".join(changes_json)}],'
            f'"cursor":"{cursor.encode()}","more":{_bool(more)}}}'
        )

    @classmethod
    def parse(cls, obj: object) -> PullAnswer:
        """Check a decoded answer's shape; raise :class:`MalformedAnswer` if wrong."""
        what = "pull"
        answer = _object(what, obj, ("changes", "cursor", "more"))
        changes = _typed(what, answer, "changes", list)
        if _changes_well_formed(changes):
            return cls(
                changes, _cursor(what, answer, "cursor"), _typed(what, answer, "more", bool)
            )
        for change in changes:
            if not isinstance(change, dict) or not isinstance(change.get("key"), str):
                raise MalformedAnswer(what, "a change is not an object with a key")
            op = change.get("op")
            if op == "add":
                if "value" not in change:
                    raise MalformedAnswer(what, "an add has no value")
                _index(what, change)
            elif op != "delete":
                raise MalformedAnswer(what, f"a change's op is {op!r}")
            _seq(what, change)
        return cls(changes, _cursor(what, answer, "cursor"), _typed(what, answer, "more", bool))


@dataclass(frozen=True)
class SnapshotAnswer:
    """A page of a snapshot (``GET /v1/stores/{store}/snapshot``).

    ``records`` are decoded ``{"key", "index", "value", "seq"}`` objects; pass
    ``at`` and ``after`` back for the next page.
    """

    records: list[dict[str, Any]]
    at: str
    after: int
    more: bool

    @staticmethod
    def to_json(records_json: Sequence[str], at: Cursor, after: int, more: bool) -> str:
        """The answer's JSON text, splicing records that are already JSON text."""
        return (
            f'{{"records":[{",".join(records_json)}],"at":"{at.encode()}",'
            f'"after":{int(after)},"more":{_bool(more)}}}'
        )

    @classmethod
    def parse(cls, obj: object) -> SnapshotAnswer:
        """Check a decoded answer's shape; raise :class:`MalformedAnswer` if wrong."""
        what = "snapshot"
        answer = _object(what, obj, ("records", "at", "after", "more"))
        records = _records(what, _typed(what, answer, "records", list))
        return cls(
            records,
            _cursor(what, answer, "at"),
            _after(what, answer),
            _typed(what, answer, "more", bool),
        )


@dataclass(frozen=True)
class FindAnswer:
    """A page of records found by index item (``GET /v1/stores/{store}/records?index=``)."""

    records: list[dict[str, Any]]
    after: int
    more: bool

    @staticmethod
    def to_json(records_json: Sequence[str], after: int, more: bool) -> str:
        """The answer's JSON text, splicing records that are already JSON text."""
        return f'{{"records":[{",".join(records_json)}],"after":{int(after)},"more":{_bool(more)}}}'

    @classmethod
    def parse(cls, obj: object) -> FindAnswer:
        """Check a decoded answer's shape; raise :class:`MalformedAnswer` if wrong."""
        what = "find"
        answer = _object(what, obj, ("records", "after", "more"))
        records = _records(what, _typed(what, answer, "records", list))
        return cls(records, _after(what, answer), _typed(what, answer, "more", bool))


@dataclass(frozen=True)
class WireError:
    """One store's error inside a wait answer: the error envelope's inner form."""

    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class WaitAnswer:
    """Which stores changed, each failing store's error, and the changed
    stores' first pages when the client asked for them (``POST /v1/wait``).

    ``errors`` on the server side holds envelope dicts (``{"code", "message",
    "retryable", "details"}``); :meth:`parse` gives :class:`WireError` values.
    ``pages`` holds a :class:`PullAnswer` per changed store the server sent
    a page for; a changed store without one is pulled.
    """

    changed: list[str]
    errors: dict[str, WireError]
    pages: dict[str, PullAnswer] = field(default_factory=dict)

    @staticmethod
    def to_json(
        changed: Iterable[str],
        errors: dict[str, dict[str, Any]],
        pages_json: dict[str, str] | None = None,
    ) -> str:
        """The answer's JSON text (stores sorted); ``pages_json`` maps a store
        to its page's JSON text (from :meth:`PullAnswer.to_json`), spliced in.
        Without it the answer has no ``pages`` member (the original answer)."""
        head = jsoncodec.dumps({"changed": sorted(changed), "errors": errors})
        if pages_json is None:
            return head
        pages = ",".join(f"{jsoncodec.dumps(s)}:{pages_json[s]}" for s in sorted(pages_json))
        return f'{head[:-1]},"pages":{{{pages}}}}}'

    @classmethod
    def parse(cls, obj: object) -> WaitAnswer:
        """Check a decoded answer's shape; raise :class:`MalformedAnswer` if wrong."""
        what = "wait"
        answer = _object(what, obj, ("changed", "errors"))
        changed = _typed(what, answer, "changed", list)
        if not all(isinstance(store, str) for store in changed):
            raise MalformedAnswer(what, "changed is not a list of store names")
        errors: dict[str, WireError] = {}
        for store, envelope in _typed(what, answer, "errors", dict).items():
            if (
                not isinstance(envelope, dict)
                or not isinstance(envelope.get("code"), str)
                or not isinstance(envelope.get("message"), str)
                or not isinstance(envelope.get("details", {}), dict)
            ):
                raise MalformedAnswer(what, f"the error of {store!r} is not an error envelope")
            errors[store] = WireError(
                envelope["code"], envelope["message"], envelope.get("details") or {}
            )
        pages: dict[str, PullAnswer] = {}
        if "pages" in answer:
            for store, page in _typed(what, answer, "pages", dict).items():
                if store not in changed:
                    raise MalformedAnswer(what, f"a page for {store!r}, not a changed store")
                pages[store] = PullAnswer.parse(page)
        return cls(changed, errors, pages)


def push_body(client_id: str, changes_json: list[str]) -> str:
    """The body of ``POST /v1/stores/{store}/push`` for these changes (each
    already JSON text): built once here, so that a batch sized against the
    server's ``max_body_bytes`` is the body sent."""
    return f'{{"client_id":{jsoncodec.dumps(client_id)},"changes":[{",".join(changes_json)}]}}'


@dataclass(frozen=True)
class PushAnswer:
    """One outcome per uploaded change (``POST /v1/stores/{store}/push``)."""

    outcomes: list[Outcome]

    @staticmethod
    def to_json(outcomes: Iterable[Outcome]) -> str:
        """The answer's JSON text."""
        return jsoncodec.dumps({"outcomes": [o.to_wire() for o in outcomes]})

    @classmethod
    def parse(cls, obj: object, sent: int | None = None) -> PushAnswer:
        """Check a decoded answer's shape (``sent`` outcomes when given)."""
        what = "push"
        answer = _object(what, obj, ("outcomes",))
        raw = _typed(what, answer, "outcomes", list)
        if sent is not None and len(raw) != sent:
            raise MalformedAnswer(what, f"{len(raw)} outcomes for {sent} changes")
        outcomes = []
        for item in raw:
            try:
                outcome = Outcome.from_wire(item)
            except (ProtocolViolation, KeyError):
                raise MalformedAnswer(what, f"malformed outcome {str(item)[:100]}") from None
            if not isinstance(outcome.n, int) or isinstance(outcome.n, bool):
                raise MalformedAnswer(what, f"an outcome's n is {outcome.n!r}")
            outcomes.append(outcome)
        return cls(outcomes)
