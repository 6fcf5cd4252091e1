"""The push rules every backend shares: each change's outcome, decided in memory.

A backend locks the store, reads what the batch needs (the client's prior
outcomes for the batch's change numbers, the rows of the keys it touches),
hands them to :class:`PushBatch`, and writes what the batch collected: log
entries, new records, deletions, idempotency rows and the new head. The
decisions (replay, change number conflict, duplicate, key reuse) are made
here only, so every backend answers a push alike.
"""

from __future__ import annotations

import os
import secrets
import struct
from dataclasses import dataclass
from typing import Any

from idsync_client.protocol import Change, Outcome

from .equality import change_hash, index_json_of, same_body, same_json


def new_tag() -> int:
    """A log entry's tag: random, so a restored older history draws others."""
    return secrets.randbits(63)


_TAG_DRAW = 256


class Tags:
    """Tags like :func:`new_tag`'s, drawn from the OS a few hundred at a time."""

    def __init__(self) -> None:
        self._drawn: list[int] = []

    def next(self) -> int:
        """The next tag (0 to 2**63-1)."""
        if not self._drawn:
            words = struct.unpack(f"<{_TAG_DRAW}Q", os.urandom(8 * _TAG_DRAW))
            self._drawn = [word >> 1 for word in words]
        return self._drawn.pop()


@dataclass(slots=True)
class KnownRecord:
    """A record's row as the batch sees it (possibly added or deleted by the batch)."""

    id: int
    index_json: str
    value_json: str
    added_seq: int
    deleted_seq: int | None
    new: bool = False
    deleted_now: bool = False
    index: tuple[str, ...] = ()


class PushBatch:
    """Decides each change's outcome in order, in memory; the rows are written after."""

    def __init__(self, store_id: int, head: int, next_record_id: int) -> None:
        self.store_id = store_id
        self.head = head
        self.next_record_id = next_record_id
        self.prior: dict[int, tuple[Any, ...]] = {}
        self.known: dict[str, KnownRecord] = {}
        self.log: list[tuple[Any, ...]] = []
        self.client_rows: list[tuple[Any, ...]] = []
        self.live_delta = 0
        self._tags = Tags()

    def apply(self, change: Change) -> Outcome:
        body_hash = change_hash(change)
        prior = self.prior.get(change.n)
        if prior is not None:
            return replayed(change, body_hash, prior)
        record = self.known.get(change.key)
        outcome = self._add(change, record) if change.op == "add" else self._delete(change, record)
        row = (change.n, body_hash, outcome.status, outcome.seq, outcome.code, outcome.message)
        self.client_rows.append(row)
        self.prior[change.n] = row[1:]
        return outcome

    def _add(self, change: Change, record: KnownRecord | None) -> Outcome:
        index_json = index_json_of(change)
        if record is not None:
            if record.deleted_seq is not None:
                return Outcome(
                    change.n,
                    "rejected",
                    code="key_deleted",
                    message=f"key {change.key!r} was deleted; keys are never reused",
                )
            # Type-exact JSON equality: a stored 0 is not false, 1 is not 1.0.
            if same_json(record.index_json, index_json) and same_json(
                record.value_json, change.value_json
            ):
                return Outcome(change.n, "duplicate", seq=record.added_seq)
            return Outcome(
                change.n,
                "rejected",
                code="key_exists",
                message=f"key {change.key!r} exists with other content",
            )
        self.head += 1
        self.known[change.key] = KnownRecord(
            self.next_record_id,
            index_json,
            change.value_json,
            self.head,
            None,
            new=True,
            index=change.index,
        )
        self.next_record_id += 1
        self.log.append((self.head, "add", change.key, index_json, change.value_json, self._tags.next()))
        self.live_delta += 1
        return Outcome(change.n, "applied", seq=self.head)

    def _delete(self, change: Change, record: KnownRecord | None) -> Outcome:
        if record is None:
            return Outcome(
                change.n,
                "rejected",
                code="key_not_found",
                message=f"no record with key {change.key!r} was ever added",
            )
        if record.deleted_seq is not None:
            return Outcome(change.n, "duplicate", seq=record.deleted_seq)
        self.head += 1
        record.deleted_seq = self.head
        record.deleted_now = True
        self.log.append((self.head, "delete", change.key, None, None, self._tags.next()))
        self.live_delta -= 1
        return Outcome(change.n, "applied", seq=self.head)


def replayed(change: Change, body_hash: str, prior: tuple[Any, ...]) -> Outcome:
    """The first outcome of a change number seen before (or a conflict if the body differs)."""
    stored_hash, status, seq, code, message = prior
    n = change.n
    if not same_body(stored_hash, change, body_hash):
        return Outcome(
            n,
            "rejected",
            code="change_number_conflict",
            message=f"change number {n} was sent before with another body",
        )
    return Outcome(n, status, seq=seq, code=code, message=message)
