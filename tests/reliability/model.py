"""A reference model of the idsync protocol (docs/protocol.md), in plain Python.

Written from the document, not from the server: no code of ``idsync_client``
or ``idsync_server_ref`` is used here, so the fuzzing campaigns compare the
server against an independent reading of the protocol. It is kept small
and obvious on purpose: a dict of stores, each an append-only list of log
entries, the records, and the ``(client_id, n)`` outcomes remembered for
replays. What it cannot know (epochs and tags, drawn at random by the
server) it learns from the server's answers and then holds the server to.

Each operation returns the answer the protocol promises: ``(status, body)``
for a success, ``(status, code)`` through :class:`Refused` for an error.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

STORE_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
EPOCH = re.compile(r"[0-9a-f]{16}")
TAG = re.compile(r"[0-9a-f]{1,16}")
INT64 = (-(2**63), 2**63 - 1)


class Refused(Exception):
    """The protocol answers this request with an error: ``status`` and ``code``.

    ``n`` is ``details.n`` where the protocol promises one (``invalid_change``
    naming a change whose own number is valid).
    """

    def __init__(self, status: int, code: str, n: int | None = None) -> None:
        super().__init__(f"{status} {code}")
        self.status = status
        self.code = code
        self.n = n


def canonical(value: Any) -> str:
    """JSON text with members sorted: equal texts exactly when the values are equal.

    ``json.dumps`` keeps the types apart (``false``/``0``, ``1``/``1.0``,
    ``-0.0``/``0.0``), which is the protocol's equality.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass
class Limits:
    """The limits in force, as ``GET /v1/health`` lists them."""

    max_batch: int
    max_key_length: int
    max_index_items: int
    max_index_item_length: int
    max_value_bytes: int
    max_depth: int
    max_page: int
    default_page: int

    @classmethod
    def from_health(cls, limits: dict[str, Any]) -> Limits:
        """Pick the limits the model uses from the health answer."""
        return cls(**{name: int(limits[name]) for name in cls.__dataclass_fields__})


def _text_ok(text: Any, longest: int) -> bool:
    return (
        type(text) is str
        and 1 <= len(text) <= longest
        and not CONTROL.search(text)
        and not any(0xD800 <= ord(c) <= 0xDFFF for c in text)
    )


def _depth(value: Any) -> int:
    if type(value) is list:
        return 1 + max((_depth(v) for v in value), default=0)
    if type(value) is dict:
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


def _value_ok(value: Any, limits: Limits) -> bool:
    def scalars_ok(v: Any) -> bool:
        if type(v) is int:
            return INT64[0] <= v <= INT64[1]
        if type(v) is float:
            return math.isfinite(v)
        if type(v) is list:
            return all(scalars_ok(x) for x in v)
        if type(v) is dict:
            return all(scalars_ok(x) for x in v.values())
        return v is None or type(v) in (str, bool)

    if not scalars_ok(value) or _depth(value) > limits.max_depth:
        return False
    return len(canonical(value).encode()) <= limits.max_value_bytes


def change_error(raw: Any, limits: Limits) -> Refused | None:
    """Why one change of a push is refused (422 invalid_change), or None."""
    if type(raw) is not dict:
        return Refused(422, "invalid_change")
    n = raw.get("n")
    if type(n) is not int or not 1 <= n <= INT64[1]:
        return Refused(422, "invalid_change")
    bad = Refused(422, "invalid_change", n)
    op = raw.get("op")
    if op == "add":
        allowed, needed = {"n", "op", "key", "index", "value"}, {"n", "op", "key", "value"}
    elif op == "delete":
        allowed = needed = {"n", "op", "key"}
    else:
        return bad
    if not needed <= set(raw) <= allowed or not _text_ok(raw["key"], limits.max_key_length):
        return bad
    if op == "delete":
        return None
    index = raw.get("index", [])
    if type(index) is not list or len(index) > limits.max_index_items:
        return bad
    if not all(_text_ok(item, limits.max_index_item_length) for item in index):
        return bad
    return None if _value_ok(raw["value"], limits) else bad


@dataclass
class Record:
    """A record as the model holds it: added at ``added``, deleted at ``deleted``."""

    key: str
    index: list[str]
    value: Any
    added: int
    deleted: int | None = None

    def wire(self) -> dict[str, Any]:
        """The record as a snapshot, a find or a get answers it."""
        return {"key": self.key, "index": self.index, "value": self.value, "seq": self.added}


@dataclass
class Store:
    """One incarnation of a store: its epoch (learned), log, records and replays."""

    epoch: str
    log: list[dict[str, Any]] = field(default_factory=list)
    records: dict[str, Record] = field(default_factory=dict)
    seen: dict[tuple[str, int], tuple[str, dict[str, Any]]] = field(default_factory=dict)
    tags: dict[int, str] = field(default_factory=dict)

    @property
    def head(self) -> int:
        return len(self.log)

    def live_at(self, seq: int) -> list[Record]:
        """The records live at ``seq``, in the order they were added."""
        return sorted(
            (
                r
                for r in self.records.values()
                if r.added <= seq and (r.deleted is None or r.deleted > seq)
            ),
            key=lambda r: r.added,
        )


class Model:
    """The whole server as the protocol describes it, for one set of store names."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.stores: dict[str, Store] = {}
        self.dropped: set[str] = set()
        #: Epochs every store name has had (old cursors must get reset_required).
        self.old_epochs: dict[str, list[str]] = {}

    # -- stores ---------------------------------------------------------------

    def create(self, name: str, recreate: bool) -> None:
        """Check a create; the store is made by :meth:`created` once the epoch is known."""
        if not STORE_NAME.fullmatch(name):
            raise Refused(400, "invalid_store_name")
        if name in self.stores:
            raise Refused(409, "store_exists")
        if name in self.dropped and not recreate:
            raise Refused(410, "store_dropped")

    def created(self, name: str, epoch: str) -> Store:
        """The server made ``name`` afresh with ``epoch``."""
        self.dropped.discard(name)
        self.stores[name] = Store(epoch)
        self.old_epochs.setdefault(name, []).append(epoch)
        return self.stores[name]

    def _store(self, name: str) -> Store:
        if not STORE_NAME.fullmatch(name):
            raise Refused(400, "invalid_store_name")
        if name in self.dropped:
            raise Refused(410, "store_dropped")
        if name not in self.stores:
            raise Refused(404, "store_not_found")
        return self.stores[name]

    def drop(self, name: str) -> dict[str, Any]:
        """``DELETE /v1/stores/{name}``."""
        self._store(name)
        del self.stores[name]
        self.dropped.add(name)
        return {"dropped": name}

    # -- push -----------------------------------------------------------------

    def push(self, name: str, body: Any) -> list[dict[str, Any]]:
        """``POST .../push``: the outcomes (``seq`` of applied ones filled in), or Refused."""
        # The store is looked up before the body is checked (docs/protocol.md).
        store = self._store(name)
        if type(body) is not dict or set(body) != {"client_id", "changes"}:
            raise Refused(400, "invalid_request")
        client_id, changes = body["client_id"], body["changes"]
        if type(client_id) is not str or not CLIENT_ID.fullmatch(client_id):
            raise Refused(400, "invalid_request")
        if type(changes) is not list:
            raise Refused(400, "invalid_request")
        if len(changes) > self.limits.max_batch:
            raise Refused(413, "batch_too_large")
        for raw in changes:
            error = change_error(raw, self.limits)
            if error is not None:
                raise error
        numbers = [c["n"] for c in changes]
        for i, n in enumerate(numbers):
            if n in numbers[:i]:
                raise Refused(422, "invalid_change", n)
        return [self._apply(store, client_id, change) for change in changes]

    def _apply(self, store: Store, client_id: str, change: dict[str, Any]) -> dict[str, Any]:
        n, op, key = change["n"], change["op"], change["key"]
        index = sorted(set(change.get("index", []))) if op == "add" else []
        value = change.get("value")
        body = canonical([op, key, index, value])
        prior = store.seen.get((client_id, n))
        if prior is not None:
            if prior[0] != body:
                return _rejected(n, "change_number_conflict")
            return prior[1]
        record = store.records.get(key)
        if op == "add":
            if record is None:
                store.log.append({"op": "add", "key": key, "index": index, "value": value})
                store.records[key] = Record(key, index, value, store.head)
                outcome = {"n": n, "status": "applied", "seq": store.head}
            elif record.deleted is not None:
                outcome = _rejected(n, "key_deleted")
            elif record.index == index and canonical(record.value) == canonical(value):
                outcome = {"n": n, "status": "duplicate", "seq": record.added}
            else:
                outcome = _rejected(n, "key_exists")
        elif record is None:
            outcome = _rejected(n, "key_not_found")
        elif record.deleted is not None:
            outcome = {"n": n, "status": "duplicate", "seq": record.deleted}
        else:
            store.log.append({"op": "delete", "key": key})
            record.deleted = store.head
            outcome = {"n": n, "status": "applied", "seq": store.head}
        store.seen[(client_id, n)] = (body, outcome)
        return outcome

    # -- reads ----------------------------------------------------------------

    def position(self, store: Store, text: str | None, name: str) -> int:
        """The seq a cursor names on ``store``'s history, or Refused (400 / 410)."""
        if not text:
            return 0
        if len(text) > 64:
            raise Refused(400, "invalid_cursor")
        parts = text.split(".")
        if len(parts) not in (2, 3) or not EPOCH.fullmatch(parts[0]):
            raise Refused(400, "invalid_cursor")
        if not (parts[1].isascii() and parts[1].isdigit()) or int(parts[1]) > INT64[1]:
            raise Refused(400, "invalid_cursor")
        if len(parts) == 3 and not TAG.fullmatch(parts[2]):
            raise Refused(400, "invalid_cursor")
        seq = int(parts[1])
        tag = parts[2] if len(parts) == 3 else ""
        if parts[0] != store.epoch or seq > store.head or (seq > 0 and not tag):
            raise Refused(410, "reset_required")
        if seq > 0 and store.tags.get(seq) != tag:
            raise Refused(410, "reset_required")
        return seq

    @staticmethod
    def parse_cursor(text: str | None) -> None:
        """Refused(400 invalid_cursor) when ``text`` is not a cursor at all."""
        if not text:
            return
        parts = text.split(".")
        if (
            len(text) > 64
            or len(parts) not in (2, 3)
            or not EPOCH.fullmatch(parts[0])
            or not (parts[1].isascii() and parts[1].isdigit())
            or int(parts[1]) > INT64[1]
            or (len(parts) == 3 and not TAG.fullmatch(parts[2]))
        ):
            raise Refused(400, "invalid_cursor")

    def limit(self, text: str | None) -> int:
        """A ``limit`` query parameter: 1 to max_page, or Refused(400)."""
        if text is None:
            return self.limits.default_page
        if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= self.limits.max_page:
            raise Refused(400, "invalid_request")
        return int(text)

    def pull(self, name: str, cursor: str | None, limit: str | None) -> tuple[list[dict], int, bool]:
        """``GET .../changes``: (changes, seq of the answer's cursor, more)."""
        if not STORE_NAME.fullmatch(name):
            raise Refused(400, "invalid_store_name")
        self.parse_cursor(cursor)
        size = self.limit(limit)
        store = self._store(name)
        after = self.position(store, cursor, name)
        page = [{"seq": seq, **store.log[seq - 1]} for seq in range(after + 1, store.head + 1)]
        page = page[:size]
        last = page[-1]["seq"] if page else after
        return page, last, last < store.head

    def snapshot_page(
        self, name: str, at: str | None, after: int, limit: str | None
    ) -> tuple[list[dict], int, int, bool]:
        """``GET .../snapshot``: (records, seq of ``at``, next ``after``, more)."""
        if not STORE_NAME.fullmatch(name):
            raise Refused(400, "invalid_store_name")
        self.parse_cursor(at)
        size = self.limit(limit)
        store = self._store(name)
        seq = self.position(store, at, name) if at else store.head
        live = [r for r in store.live_at(seq) if r.added > after]
        page = live[:size]
        return [r.wire() for r in page], seq, page[-1].added if page else after, len(live) > size

    def find(self, name: str, item: str, prefix: bool) -> list[dict]:
        """``GET .../records?index=``: every live record found, in the order added."""
        if not STORE_NAME.fullmatch(name):
            raise Refused(400, "invalid_store_name")
        if not _text_ok(item, self.limits.max_index_item_length):
            raise Refused(400, "invalid_request")
        store = self._store(name)
        return [
            r.wire()
            for r in store.live_at(store.head)
            if any(i == item or (prefix and i.startswith(item)) for i in r.index)
        ]

    def get(self, name: str, key: str) -> dict[str, Any]:
        """``GET .../records/{key}``."""
        if not STORE_NAME.fullmatch(name):
            raise Refused(400, "invalid_store_name")
        if not _text_ok(key, self.limits.max_key_length):
            raise Refused(400, "invalid_request")
        store = self._store(name)
        record = store.records.get(key)
        if record is None or record.deleted is not None:
            raise Refused(404, "record_not_found")
        return record.wire()

    def wait(self, cursors: dict[str, str | None]) -> tuple[set[str], dict[str, str]]:
        """``POST /v1/wait`` with wait 0: (changed stores, error code per store)."""
        changed: set[str] = set()
        errors: dict[str, str] = {}
        for name, cursor in cursors.items():
            try:
                if not STORE_NAME.fullmatch(name):
                    raise Refused(400, "invalid_store_name")
                self.parse_cursor(cursor)
                store = self._store(name)
                if self.position(store, cursor, name) < store.head:
                    changed.add(name)
            except Refused as refused:
                errors[name] = refused.code
        return changed, errors

    def learn_cursor(self, name: str, text: str) -> int:
        """Hold the server to a cursor it issued: this epoch, a seq in range, one tag per seq."""
        store = self.stores[name]
        parts = text.split(".")
        assert parts[0] == store.epoch, f"cursor {text} is not of epoch {store.epoch}"
        seq = int(parts[1])
        assert 0 <= seq <= store.head, f"cursor {text} is past the head {store.head}"
        if seq == 0:
            assert len(parts) == 2, f"cursor {text} at 0 has a tag"
            return seq
        assert len(parts) == 3 and TAG.fullmatch(parts[2]), f"cursor {text} has no tag"
        known = store.tags.setdefault(seq, parts[2])
        assert known == parts[2], f"seq {seq} had tag {known}, now {parts[2]}"
        return seq


def _rejected(n: int, code: str) -> dict[str, Any]:
    return {"n": n, "status": "rejected", "code": code}
