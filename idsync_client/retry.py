"""The one retry policy (tenacity): capped exponential backoff with full jitter.

Only :class:`~idsync_client.errors.TemporaryError` is retried; a server's
``Retry-After`` is honoured as a floor. A client-wide :class:`RetryBudget`
(after botocore's retry quota) stops retry storms while a server is down:
each retry spends tokens, each success earns one back, and with the budget
empty errors are raised at once.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import tenacity

from .errors import TemporaryError

T = TypeVar("T")


class RetryBudget:
    """A thread-safe token bucket shared by all of a client's retries."""

    def __init__(
        self, capacity: int = 100, retry_cost: int = 5, timeout_cost: int = 10, refund: int = 1
    ) -> None:
        self.capacity = capacity
        self.retry_cost = retry_cost
        self.timeout_cost = timeout_cost
        self.refund = refund
        self._tokens = capacity
        self._lock = threading.Lock()

    @property
    def tokens(self) -> int:
        """Tokens left."""
        return self._tokens

    def spend(self, exc: BaseException) -> bool:
        """Take the cost of retrying after ``exc``; False when the budget cannot pay."""
        cost = self.timeout_cost if getattr(exc, "timeout", False) else self.retry_cost
        with self._lock:
            if self._tokens < cost:
                return False
            self._tokens -= cost
            return True

    def earn(self) -> None:
        """A request succeeded: give back a little."""
        with self._lock:
            self._tokens = min(self.capacity, self._tokens + self.refund)


class RetryPolicy:
    """How temporary failures are retried. ``sleep`` is injectable so tests never wait."""

    def __init__(
        self,
        max_attempts: int = 5,
        base_delay: float = 0.25,
        max_delay: float = 30.0,
        budget: RetryBudget | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.budget = budget or RetryBudget()
        self.sleep = sleep
        self.rng = rng or random.Random()

    def delay(self, attempt: int, exc: BaseException | None) -> float:
        """Seconds to wait before attempt ``attempt + 1``: full jitter, Retry-After as floor."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        delay = self.rng.uniform(0, ceiling)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            delay = max(delay, min(float(retry_after), self.max_delay))
        return delay

    def _should_retry(self, exc: BaseException) -> bool:
        return isinstance(exc, TemporaryError) and self.budget.spend(exc)

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return self.delay(state.attempt_number, exc)

    def call(
        self,
        fn: Callable[[], T],
        interrupt: threading.Event | None = None,
        max_attempts: int | None = None,
    ) -> T:
        """Run ``fn``, retrying temporary failures; re-raise the last error.

        Once ``interrupt`` is set (the client is closing), no retry is made
        and a wait between attempts ends at once. ``max_attempts`` lowers
        this policy's number of attempts for this call.
        """
        attempts = min(self.max_attempts, max_attempts or self.max_attempts)
        if attempts == 1:
            return self._once(fn)
        stop: tenacity.stop.stop_base = tenacity.stop_after_attempt(attempts)
        sleep = self.sleep
        if interrupt is not None:
            stop = stop | tenacity.stop_when_event_set(interrupt)
            if sleep is time.sleep:  # an injected sleep (tests) is kept as it is
                sleep = interrupt.wait  # type: ignore[assignment]
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(self._should_retry),
            wait=self._wait,
            stop=stop,
            sleep=sleep,
            reraise=True,
        )
        result = retrying(fn)
        self.budget.earn()
        return result

    def _once(self, fn: Callable[[], T]) -> T:
        """``fn()`` tried once, without building a tenacity loop for it (about
        60 µs a call; background sync tries every request once). The budget
        is kept as through tenacity: the retry check, which pays for a
        temporary failure, runs before the stop; a success earns."""
        try:
            result = fn()
        except BaseException as exc:
            self._should_retry(exc)
            raise
        self.budget.earn()
        return result
