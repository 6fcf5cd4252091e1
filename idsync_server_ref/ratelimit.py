"""Token buckets per key (a token's id, or a client address): the server's rate limits.

Each key has a bucket of ``burst`` requests that refills at ``rate`` per
second. A request takes one; an empty bucket means 429 with ``Retry-After``
set to when the next one is there. The table is bounded: past ``max_keys``,
full buckets (keys idle long enough to be back at ``burst``) are forgotten
first, then the oldest.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class RateLimiter:
    """Token buckets of ``burst`` requests refilled at ``rate`` per second, one per key.

    ``rate`` 0 turns the limit off. Thread-safe.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate < 0 or (rate > 0 and burst < 1):
            raise ValueError("a rate limit needs a rate >= 0 and a burst of at least 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        # key -> (tokens, time of that count)
        self._buckets: dict[str, tuple[float, float]] = {}

    @property
    def enabled(self) -> bool:
        """Whether requests are limited at all."""
        return self.rate > 0

    def _level(self, key: str, now: float) -> float:
        tokens, then = self._buckets.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - then) * self.rate)

    def take(self, key: str) -> float:
        """Take one request from ``key``'s bucket: 0 if allowed, else seconds until one is."""
        if not self.enabled:
            return 0.0
        with self._lock:
            now = self._clock()
            tokens = self._level(key, now)
            if tokens >= 1:
                self._buckets.pop(key, None)  # re-inserted last: the dict keeps use order
                self._buckets[key] = (tokens - 1, now)
                self._prune(now)
                return 0.0
            return (1 - tokens) / self.rate

    def wait_needed(self, key: str) -> float:
        """Seconds until ``key``'s bucket holds a request (0 if it does now); takes nothing."""
        if not self.enabled:
            return 0.0
        with self._lock:
            tokens = self._level(key, self._clock())
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        if len(self._buckets) <= self.max_keys:
            return
        for key in [k for k in self._buckets if self._level(k, now) >= self.burst]:
            del self._buckets[key]
        while len(self._buckets) > self.max_keys:
            del self._buckets[next(iter(self._buckets))]


def retry_after_header(seconds: float) -> str:
    """Whole seconds for ``Retry-After`` (at least 1: HTTP has no fractions)."""
    return str(max(1, math.ceil(seconds)))
