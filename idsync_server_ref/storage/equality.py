"""When two changes are the same: type-exact JSON equality and the idempotency hash.

Every backend answers ``duplicate`` and replays by these rules, so they live
here and not in one backend.

JSON values are equal exactly when their canonical texts are equal
(:func:`idsync_client.jsoncodec.canonical`): object member order does not
count, types do: ``false`` is not ``0``, ``1`` (an integer) is not ``1.0`` (a
number written with a fraction or an exponent), ``[1]`` is not ``[true]``.
Python's ``==`` says otherwise for all three, so it is never used on decoded
values.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from idsync_client import jsoncodec
from idsync_client.protocol import Change

#: Marks a stored hash made by the schema-1 encoding (see :func:`legacy_change_hash`).
LEGACY_PREFIX = "v1:"


@dataclass(frozen=True, slots=True)
class HashedChange(Change):
    """A change whose idempotency hash and index JSON were made when it was read.

    The push body's reader (:mod:`idsync_server_ref.push_body`) has the
    value decoded already and makes both from it, so the storage neither
    decodes the value again nor encodes the index items again. They must be
    what :func:`change_hash` and ``jsoncodec.dumps(list(index))`` give.
    """

    body_hash: str = ""
    index_json: str = "[]"


def same_json(text_a: str, text_b: str) -> bool:
    """True when two JSON texts hold equal values (type-exact, member order aside)."""
    if text_a == text_b:  # the usual case of a retried add: no decoding
        return True
    return jsoncodec.canonical(jsoncodec.loads(text_a)) == jsoncodec.canonical(
        jsoncodec.loads(text_b)
    )


def change_hash(change: Change) -> str:
    """The idempotency hash of a change: its whole body, unambiguously encoded.

    The encoded body is the canonical JSON of ``[op, key, index, value]``, so
    two changes hash alike exactly when they are the same change by the
    equality rule above (index items are already sorted and unique).
    """
    if type(change) is HashedChange:
        return change.body_hash
    value = jsoncodec.canonical(jsoncodec.loads(change.value_json))
    return body_hash(change.op, change.key, jsoncodec.dumps(list(change.index)), value)


def body_hash(op: str, key: str, index_json: str, canonical_value: str) -> str:
    """:func:`change_hash` from its parts: the canonical JSON of ``[op, key, index, value]``.

    A list's canonical text is its members' canonical texts, comma-joined in
    brackets; strings and a list of strings have one compact encoding only,
    so the body is spliced rather than encoded again.
    """
    body = f'["{op}",{jsoncodec.dumps(key)},{index_json},{canonical_value}]'
    return hashlib.blake2b(body.encode("utf-8"), digest_size=16).hexdigest()


def index_json_of(change: Change) -> str:
    """The JSON text of a change's (sorted, unique) index items."""
    if type(change) is HashedChange:
        return change.index_json
    return jsoncodec.dumps(list(change.index))


def legacy_change_hash(change: Change) -> str:
    """The schema-1 hash, kept (with :data:`LEGACY_PREFIX`) only for rows whose body is lost.

    It joined index items with a comma, so ``["a","b"]`` and ``["a,b"]``
    hashed alike; it is compared only with rows stored before schema 2 whose
    body could not be recovered to hash it again (see the migrations).
    """
    body = f"{change.op}\0{change.key}\0{','.join(change.index)}\0{change.value_json}"
    return hashlib.blake2b(body.encode("utf-8"), digest_size=16).hexdigest()


def same_body(stored_hash: str, change: Change, new_hash: str) -> bool:
    """True when ``change`` has the body a stored hash was made from."""
    if stored_hash.startswith(LEGACY_PREFIX):
        return stored_hash == LEGACY_PREFIX + legacy_change_hash(change)
    return stored_hash == new_hash
