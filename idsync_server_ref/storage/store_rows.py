"""What every backend makes of a store's row: its figures, and the check of a cursor.

Both backends select the same columns (name, epoch, head, horizon, live
records, log length, created at, the head entry's tag, retention); the rules
for a cursor do not depend on the database.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from idsync_client.protocol import Cursor

from .base import ResetRequired, StoreInfo
from .json_text import tag_text


def store_info(row: Sequence[Any], bytes_on_disk: int | None = None) -> StoreInfo:
    """The StoreInfo of a row of the store columns above."""
    name, epoch, head, horizon, live, length, created_at, tag, retention = row
    return StoreInfo(
        name,
        epoch,
        head,
        horizon,
        live,
        length,
        created_at,
        tag_text(tag),
        None if retention is None else int(retention),
        bytes_on_disk,
    )


def check_cursor(cursor: Cursor, epoch: str, head: int, horizon: int, tag: str) -> None:
    """Accept only a cursor issued on this history; ``tag`` is the entry's at its seq.

    Raises ResetRequired for another epoch, a seq behind the horizon or past
    the head (only a server that lost history, restored from an older copy,
    can have issued it), no tag past seq 0, or another entry's tag.
    """
    if cursor.epoch != epoch:
        raise ResetRequired("the cursor is from another epoch")
    if cursor.seq < horizon:
        raise ResetRequired("the cursor is behind the compaction horizon")
    if cursor.seq > head:
        raise ResetRequired(f"cursor seq {cursor.seq} is past the head {head}")
    if cursor.seq > 0 and not cursor.tag:
        raise ResetRequired("the cursor names no log entry (issued by an older server)")
    if cursor.tag != tag:
        raise ResetRequired(f"the cursor names another log entry than the one at seq {cursor.seq}")
