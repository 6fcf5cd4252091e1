"""Named kill points: SIGKILL this process at a chosen step (crash tests only).

Off unless the environment variable ``IDSYNC_KILL_AT`` is set when the
module is first imported; then :func:`reached` costs one comparison.
``IDSYNC_KILL_AT=<step>`` kills the process the first time it reaches
``<step>``; ``<step>@<n>`` the n-th time. The steps (the client's and the
reference server's):

- ``client.write.committed``: a local add or delete committed, the call has
  not returned (saved, never acknowledged to the app);
- ``client.push.answered``: the server answered a push, the outbox is not
  settled yet (the changes go again under the same numbers);
- ``client.pull.before_commit``: a pulled page and its cursor are written,
  not committed;
- ``client.pull.committed``: a pulled page and its cursor are committed, the
  subscribers are not told yet;
- ``server.push.before_commit``: a push batch is written in the server's
  transaction, not committed;
- ``server.push.committed``: a push batch is committed, not answered.

The reliability suite (``tests/reliability/test_kill.py``) uses them to land
kills in windows a random delay rarely hits.
"""

from __future__ import annotations

import os
import signal
import threading

STEPS = (
    "client.write.committed",
    "client.push.answered",
    "client.pull.before_commit",
    "client.pull.committed",
    "server.push.before_commit",
    "server.push.committed",
)


def _parse(spec: str | None) -> tuple[str, int] | None:
    if not spec:
        return None
    step, _, nth = spec.partition("@")
    if step not in STEPS:
        raise ValueError(f"IDSYNC_KILL_AT: unknown step {step!r}; one of {', '.join(STEPS)}")
    return step, int(nth) if nth else 1


_armed = _parse(os.environ.get("IDSYNC_KILL_AT"))
_count = 0
_lock = threading.Lock()


def arm(spec: str | None) -> None:
    """Arm this process as ``IDSYNC_KILL_AT=spec`` would (None disarms); for a
    test process forked after the import."""
    global _armed, _count
    with _lock:
        _armed = _parse(spec)
        _count = 0


def reached(step: str) -> None:
    """Mark ``step``; SIGKILL this process if ``IDSYNC_KILL_AT`` names it (and its turn came)."""
    if _armed is None or _armed[0] != step:
        return
    global _count
    with _lock:
        _count += 1
        if _count >= _armed[1]:
            os.kill(os.getpid(), signal.SIGKILL)
