"""The benchmark's fixed-seed data set."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "uniform",
    "victor",
    "whiskey",
]


@dataclass(frozen=True)
class Row:
    """One record of the data set."""

    key: str
    index: tuple[str, str]
    value: dict


def rows(count: int, seed: int = 42, start: int = 0) -> Iterator[Row]:
    """``count`` records: UUID4 key, ``tag:<1 of 100>``, ``owner:<1 of 1,000>``, ~200-byte value."""
    rng = random.Random(f"{seed}:{start}")
    for i in range(start, start + count):
        key = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        tag, owner = rng.randrange(100), rng.randrange(1000)
        value = {
            "title": " ".join(rng.choice(WORDS) for _ in range(4)),
            "body": " ".join(rng.choice(WORDS) for _ in range(18)),
            "n": i,
            "done": rng.random() < 0.3,
            "score": round(rng.random() * 100, 3),
        }
        yield Row(key, (f"owner:{owner}", f"tag:{tag}"), value)


def items(count: int, seed: int = 42, start: int = 0) -> list[dict]:
    """The rows as ``Store.add_many`` items."""
    return [{"key": r.key, "index": r.index, "value": r.value} for r in rows(count, seed, start)]
