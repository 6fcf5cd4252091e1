"""Compaction on a schedule, inside the server process: :class:`CompactionSchedule`.

Every ``every`` seconds (the first run one interval after start) the
schedule compacts every store (:meth:`.storage.Storage.compact`), in short
transactions, so pushes and pulls go on meanwhile. A failed run is logged
and the next one comes at its time.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import threading

from .storage import DEFAULT_RETENTION_SECONDS, Storage

log = logging.getLogger("idsync.server.compaction")

_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+)\s*([smhdw]?)")


#: The longest duration :func:`parse_duration` takes: 100 years.
MAX_DURATION_SECONDS = 100 * 365 * 86_400


def parse_duration(text: str) -> int:
    """Seconds in ``text``: a whole number with an optional unit (s, m, h, d, w): ``7d``, ``90m``.

    ValueError for anything else, and for more than :data:`MAX_DURATION_SECONDS`.
    """
    match = _DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration: give a whole number and a unit, such as 30s, 90m, 12h, 7d"
        )
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"{text!r} is over 100 years ({MAX_DURATION_SECONDS} seconds)")
    return seconds


class CompactionSchedule:
    """A daemon thread that compacts every store every ``every`` seconds (0: never).

    ``retention`` is the default for stores without their own.
    """

    def __init__(
        self, storage: Storage, every: float, retention: int = DEFAULT_RETENTION_SECONDS
    ) -> None:
        self.storage = storage
        self.every = every
        self.retention = retention
        self.runs = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> CompactionSchedule:
        """Start the thread (nothing when ``every`` is 0)."""
        if self.every > 0:
            self._thread = threading.Thread(target=self._run, name="idsync-compaction", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread; a run under way finishes its current chunk first."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                report = self.storage.compact(None, default_retention=self.retention)
            except Exception:  # the server goes on; the next run retries
                log.exception("compaction failed")
                continue
            self.runs += 1
            if report.entries_removed:
                log.info(
                    "compaction removed %d log entries from %d stores in %.2fs",
                    report.entries_removed,
                    len(report.horizons),
                    report.duration,
                )


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The server's flags for retention and the schedule (``--retention``, ``--compact-every``)."""
    group = parser.add_argument_group("history (see docs/operations.md)")
    group.add_argument(
        "--retention",
        default=os.environ.get("IDSYNC_RETENTION", "7d"),
        help="how long deleted records' log entries are kept, for stores without their own:"
        " 30s, 90m, 12h, 7d... (IDSYNC_RETENTION; default %(default)s)",
    )
    group.add_argument(
        "--compact-every",
        default=os.environ.get("IDSYNC_COMPACT_EVERY", "1h"),
        help="compact every store this often, the first time one interval after start;"
        " 0 turns it off (IDSYNC_COMPACT_EVERY; default %(default)s)",
    )


def schedule_from_args(storage: Storage, args: argparse.Namespace) -> CompactionSchedule:
    """The schedule the flags ask for (not started); ValueError for a bad duration."""
    return CompactionSchedule(
        storage, parse_duration(args.compact_every), parse_duration(args.retention)
    )
