"""The export format of one store (NDJSON), written and read the same way by every backend.

Line 1 is the header; then one line per live record, then one per deleted key::

    {"format":"idsync-store","version":1,"store":"notes","epoch":"…","head_seq":42}
    {"key":"k1","index":["tag:x"],"value":{"t":"hi"},"seq":7}
    {"deleted":"k0","seq":12}

A record's ``seq`` is the sequence number that added it; a deleted key's is
the one that deleted it. Deleted keys travel so that the imported store
still refuses to reuse them (``key_deleted``). Reading checks every line
before a backend writes anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from idsync_client import jsoncodec
from idsync_client.protocol import Limits, ProtocolViolation, parse_change

from .base import InvalidImport

FORMAT = "idsync-store"
#: Version of the export format; bump it when a line's shape changes.
VERSION = 1


#: The greatest ``head_seq`` an import takes: well below the 64-bit limit,
#: so that the store can go on logging changes after it.
MAX_HEAD_SEQ = 2**62


def header_line(name: str, epoch: str, head_seq: int) -> str:
    """The first line of an export."""
    return jsoncodec.canonical(
        {"format": FORMAT, "version": VERSION, "store": name, "epoch": epoch, "head_seq": head_seq}
    )


def deleted_line(key: str, seq: int) -> str:
    """The line of a deleted key (``seq``: the delete's sequence number)."""
    return f'{{"deleted":{jsoncodec.dumps(key)},"seq":{seq}}}'


@dataclass
class ImportedStore:
    """An export file, checked: what a backend writes for it."""

    head_seq: int = 0
    #: (key, index JSON, value JSON, seq) of each live record.
    records: list[tuple[str, str, str, int]] = field(default_factory=list)
    #: (key, seq) of each deleted key.
    deleted: list[tuple[str, int]] = field(default_factory=list)


def _seq(obj: dict[str, object], number: int, head: int) -> int:
    seq = obj.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= head:
        raise InvalidImport(number, f"seq must be an integer from 1 to the head ({head})")
    return seq


def read_export(lines: Iterable[str], limits: Limits | None = None) -> ImportedStore:
    """Check an export and return its contents; :class:`InvalidImport` at the first bad line.

    Keys, index items and values are held to the protocol's limits, keys
    and seqs must be unique, and every seq at most the header's head.
    """
    limits = limits or Limits()
    result = ImportedStore()
    seen_keys: set[str] = set()
    seen_seqs: set[int] = set()
    number = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = jsoncodec.loads(line)
        except ValueError as exc:
            raise InvalidImport(number, f"not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise InvalidImport(number, "each line must be a JSON object")
        if number == 1:
            result.head_seq = _header(obj)
            continue
        if "deleted" in obj:
            if set(obj) != {"deleted", "seq"}:
                raise InvalidImport(number, 'a deleted key line is {"deleted": key, "seq": n}')
            key, index_json, value_json = _checked(
                {"n": 1, "op": "delete", "key": obj["deleted"]}, number, limits
            )
        else:
            if set(obj) != {"key", "index", "value", "seq"}:
                raise InvalidImport(
                    number, 'a record line is {"key": …, "index": […], "value": …, "seq": n}'
                )
            fields = {"n": 1, "op": "add", "key": obj["key"], "index": obj["index"]}
            key, index_json, value_json = _checked(
                {**fields, "value": obj["value"]}, number, limits
            )
        seq = _seq(obj, number, result.head_seq)
        if key in seen_keys:
            raise InvalidImport(number, f"key {key!r} appears twice")
        if seq in seen_seqs:
            raise InvalidImport(number, f"seq {seq} appears twice")
        seen_keys.add(key)
        seen_seqs.add(seq)
        if "deleted" in obj:
            result.deleted.append((key, seq))
        else:
            result.records.append((key, index_json, value_json, seq))
    if number == 0:
        raise InvalidImport(0, "the file is empty: an export starts with its header line")
    return result


def _header(obj: dict[str, object]) -> int:
    if obj.get("format") != FORMAT:
        raise InvalidImport(1, f"not an idsync store export (format must be {FORMAT!r})")
    if obj.get("version") != VERSION:
        raise InvalidImport(
            1, f"export format version {obj.get('version')!r}: this server reads {VERSION}"
        )
    head = obj.get("head_seq")
    # Room is left for the store to grow: each change takes the next number.
    if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head <= MAX_HEAD_SEQ:
        raise InvalidImport(1, f"head_seq must be an integer from 0 to {MAX_HEAD_SEQ}")
    return head


def _checked(raw: dict[str, object], number: int, limits: Limits) -> tuple[str, str, str]:
    """(key, index JSON, value JSON) of a line checked as a change would be."""
    try:
        change = parse_change(raw, limits)
    except ProtocolViolation as exc:
        raise InvalidImport(number, exc.message) from None
    return change.key, jsoncodec.dumps(list(change.index)), change.value_json or "null"
