"""JSON text of log entries and records, spliced from stored JSON without re-encoding."""

from __future__ import annotations

from collections.abc import Iterable

from idsync_client import jsoncodec


def utf8_size(text: str) -> int:
    """How many bytes ``text`` takes in UTF-8, as it goes on the wire.

    Page bounds count bytes: a page of Chinese or emoji text would be up to
    four times its bound if characters were counted instead. ASCII text (the
    common case) is measured without encoding it.
    """
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def fill_page(items: Iterable[str], max_bytes: int) -> list[str]:
    """The leading ``items`` whose UTF-8 size stays within ``max_bytes``;
    always the first one, even when it alone is over the bound. Reads no
    further than the first item that does not fit."""
    page: list[str] = []
    size = 0
    for item in items:
        size += utf8_size(item)
        if page and size > max_bytes:
            break
        page.append(item)
    return page


def tag_text(tag: int | None) -> str:
    """A log entry's tag as cursors carry it (lowercase hex); "" for no entry (seq 0)."""
    return "" if tag is None else format(tag, "x")


def record_json(key: str, index_json: str, value_json: str, seq: int) -> str:
    """A live record as served: key, index items, value and the seq that added it."""
    return f'{{"key":{jsoncodec.dumps(key)},"index":{index_json},"value":{value_json},"seq":{seq}}}'


def change_json(seq: int, op: str, key: str, index_json: str | None, value_json: str | None) -> str:
    """A log entry as served by pull."""
    if op == "add":
        return (
            f'{{"seq":{seq},"op":"add","key":{jsoncodec.dumps(key)},'
            f'"index":{index_json},"value":{value_json}}}'
        )
    return f'{{"seq":{seq},"op":"delete","key":{jsoncodec.dumps(key)}}}'
