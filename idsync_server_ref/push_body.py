"""Reading a push body: its changes checked against the limits, each with its hash.

:func:`idsync_client.protocol.parse_change` states the rules and checks a
change in the plain way: it walks the value scalar by scalar. A push carries
up to a thousand values of any size, so here the parser does what it can:
when orjson alone read the body (``jsoncodec.loads_checked``), every number
is already finite and within 64 bits and no string holds a lone surrogate,
and what is left to check is the value's depth, which is read off its
encoded text. A body the standard library had to read (big integers,
numbers beyond a double) is checked by the plain walk. Either way a change
is refused exactly when :func:`parse_change` refuses it, with the same code
and change number (``tests/test_push_body.py`` holds the two to it).

Each change leaves with its idempotency hash and the JSON text of its index
items (:class:`HashedChange`), made here from the value already decoded:
the storage does not decode the value again.

A member name given twice in one object keeps its last value, as both JSON
parsers read it; the value is stored and hashed as read, so a change that
repeats a name is the change with the name once, holding the last value.
"""

from __future__ import annotations

import re
from typing import Any

from idsync_client import jsoncodec
from idsync_client.protocol import (
    _CONTROL_CHARS,
    INT64_MAX,
    Change,
    Limits,
    ProtocolViolation,
    encode_value,
    parse_change,
    validate_index_items,
    validate_key,
)

from .storage.equality import HashedChange, body_hash

__all__ = ["parse_changes", "value_depth_within"]

_CODE = "invalid_change"
_ADD_FIELDS = frozenset({"n", "op", "key", "index", "value"})
_DELETE_FIELDS = frozenset({"n", "op", "key"})
# A JSON string in compact encoded text (no raw quote or backslash inside
# but as an escape): removed before the brackets are counted.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_BRACKETS = str.maketrans("[]{}", "()()")
_DELETE_HASH_VALUE = "null"


def value_depth_within(text: str, max_depth: int) -> bool:
    """True when the JSON value encoded as ``text`` nests at most ``max_depth`` containers.

    A top-level array or object is depth 1. Fewer brackets than the limit
    answer at once; otherwise strings are cut out and innermost bracket
    pairs are removed, one level a pass: what is left after ``max_depth``
    passes is nested deeper.
    """
    if text.count("[") + text.count("{") <= max_depth:
        return True
    shape = _NOT_BRACKET.sub("", _STRING.sub("", text)).translate(_BRACKETS)
    for _ in range(max_depth):
        if not shape:
            return True
        shape = shape.replace("()", "")
    return not shape


def parse_changes(raw_changes: list[Any], limits: Limits, checked: bool) -> list[Change]:
    """Validate a push's changes in order; the first broken rule raises ProtocolViolation.

    ``checked``: the body was read by orjson alone (see the module's
    docstring); False sends every value through the plain walk.
    """
    return [_parse(raw, limits, checked) for raw in raw_changes]


def _parse(obj: Any, limits: Limits, checked: bool) -> Change:
    if type(obj) is not dict or obj.get("op") != "add" or obj.keys() - _ADD_FIELDS:
        # Deletes, and every change that breaks a rule of shape: the plain way
        # (a delete has no value to walk).
        change = parse_change(obj, limits)
        if change.op == "delete":
            hashed = body_hash("delete", change.key, "[]", _DELETE_HASH_VALUE)
            return HashedChange(change.n, "delete", change.key, body_hash=hashed)
        return _hashed(change, jsoncodec.canonical(jsoncodec.loads(change.value_json)))
    n = obj.get("n")
    if type(n) is not int or not 1 <= n <= INT64_MAX:
        raise ProtocolViolation(_CODE, "change number n must be a positive integer")
    try:
        key = validate_key(obj.get("key"), limits, _CODE)
        if "value" not in obj:
            raise ProtocolViolation(_CODE, "an add needs a value")
        index = _index_items(obj.get("index", []), limits, checked)
        value = obj["value"]
        if checked:
            value_json = _encode_checked(value, limits)
        else:
            value_json = encode_value(value, limits, _CODE)
    except ProtocolViolation as exc:
        raise ProtocolViolation(_CODE, exc.message, n=n) from None
    canonical = jsoncodec.canonical(value) if "{" in value_json else value_json
    return _hashed(Change(n, "add", key, index, value_json), canonical)


def _index_items(items: Any, limits: Limits, checked: bool) -> tuple[str, ...]:
    """:func:`validate_index_items`, with the usual case checked at once.

    The items are checked together (one search for a control character, in
    all of them); anything out of the ordinary goes the plain way, which
    raises its own error.
    """
    if (
        type(items) is list
        and len(items) <= limits.max_index_items
        and all(type(i) is str and 0 < len(i) <= limits.max_index_item_length for i in items)
    ):
        joined = "".join(items)
        if not _CONTROL_CHARS.search(joined) and (checked or _encodable(joined)):
            return tuple(sorted(set(items)))
    return validate_index_items(items, limits, _CODE)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def _encode_checked(value: Any, limits: Limits) -> str:
    """:func:`encode_value` for a value orjson read: only depth and size are left to check."""
    text = jsoncodec.dumps(value)
    if not value_depth_within(text, limits.max_depth):
        raise ProtocolViolation(
            _CODE, f"invalid value: nested deeper than {limits.max_depth} levels"
        )
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    if size > limits.max_value_bytes:
        raise ProtocolViolation(
            _CODE, f"value is {size} bytes, over the {limits.max_value_bytes} limit"
        )
    return text


def _hashed(change: Change, canonical_value: str) -> HashedChange:
    index_json = jsoncodec.dumps(list(change.index))
    return HashedChange(
        change.n,
        change.op,
        change.key,
        change.index,
        change.value_json,
        body_hash=body_hash(change.op, change.key, index_json, canonical_value),
        index_json=index_json,
    )
