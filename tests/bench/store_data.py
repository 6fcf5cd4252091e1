"""The many-stores benchmark's fixed-seed data: records of a few KB with several index items.

Standard library only: the Kinto driver imports it inside Kinto's virtualenv.
"""

from __future__ import annotations

import random
import uuid

from .dataset import WORDS


def store_name(i: int, prefix: str = "s") -> str:
    """The name of the ``i``-th store of the benchmark (``prefix`` tells sets apart)."""
    return f"{prefix}{i:03d}"


def big_records(store: int, count: int, seed: int = 7, start: int = 0) -> list[dict]:
    """``count`` records of store number ``store``: UUID4 key, six index items, a
    value of about 3 KB (a title, a body of ~450 words, a few fields)."""
    rng = random.Random(f"{seed}:{store}:{start}")
    out = []
    for i in range(start, start + count):
        key = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        index = [
            f"tag:{rng.randrange(50)}",
            f"tag:{rng.randrange(50, 100)}",
            f"owner:{rng.randrange(1000)}",
            f"project:{rng.randrange(20)}",
            f"state:{rng.choice(('open', 'closed', 'draft'))}",
            f"day:2026-{rng.randrange(1, 13):02d}-{rng.randrange(1, 29):02d}",
        ]
        value = {
            "title": " ".join(rng.choice(WORDS) for _ in range(6)),
            "body": " ".join(rng.choice(WORDS) for _ in range(450)),
            "n": i,
            "done": rng.random() < 0.3,
            "score": round(rng.random() * 100, 3),
            "links": [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(3)],
        }
        out.append({"key": key, "index": index, "value": value})
    return out
