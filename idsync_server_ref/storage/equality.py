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

from idsync_client import jsoncodec
from idsync_client.protocol import Change

#: Marks a stored hash made by the schema-1 encoding (see :func:`legacy_change_hash`).
LEGACY_PREFIX = "v1:"


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
    body = jsoncodec.canonical(
        [change.op, change.key, list(change.index), jsoncodec.loads(change.value_json)]
    )
    return hashlib.blake2b(body.encode("utf-8"), digest_size=16).hexdigest()


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
