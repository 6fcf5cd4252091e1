"""When two JSON values are the same: type-exact JSON equality.

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

from idsync_client import jsoncodec


def same_json(text_a: str, text_b: str) -> bool:
    """True when two JSON texts hold equal values (type-exact, member order aside)."""
    if text_a == text_b:  # the usual case of a retried add: no decoding
        return True
    return jsoncodec.canonical(jsoncodec.loads(text_a)) == jsoncodec.canonical(
        jsoncodec.loads(text_b)
    )
