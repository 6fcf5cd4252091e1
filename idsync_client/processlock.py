"""An inter-process lock on a file, released by the OS when the process dies."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import IO

from .errors import LocalStorageError


def _lock_without_waiting(handle: IO[bytes]) -> None:
    """Lock ``handle``'s file for this process; OSError if another process holds it."""
    if sys.platform == "win32":  # pragma: no cover - exercised with a stand-in msvcrt
        import msvcrt

        # msvcrt locks bytes from the current position, and a file opened
        # for appending stands at its end, whose offset is the length of the
        # previous holder's PID: every process must lock the same byte, 0.
        handle.seek(0)
        msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


class ProcessLock:
    """A non-blocking exclusive lock on ``path`` (created if missing).

    Used so that, of all processes that open one local database, exactly one
    syncs at a time. A killed process never leaves it held.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: IO[bytes] | None = None
        # Threads of one process share the lock: without this guard, two of
        # them taking it at once would open two handles and lock each other out.
        self._guard = threading.Lock()

    def acquire(self) -> bool:
        """Take the lock if it is free; True if held now.

        LocalStorageError if the lock file cannot be opened or written (disk
        full, read-only folder, ...); the lock is then not held.
        """
        with self._guard:
            try:
                return self._acquire()
            except OSError as exc:
                raise LocalStorageError(
                    f"cannot use the sync-lock file {self.path} ({exc})", original=exc
                ) from exc

    def _acquire(self) -> bool:
        if self._file is not None:
            return True
        handle = open(self.path, "a+b")  # noqa: SIM115 - kept open while held
        try:
            _lock_without_waiting(handle)
        except OSError:
            handle.close()
            return False
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()).encode())
            handle.flush()
        except OSError:
            handle.close()
            raise
        self._file = handle
        return True

    def release(self) -> None:
        """Let go of the lock (closing the file releases it)."""
        with self._guard:
            if self._file is not None:
                self._file.close()
                self._file = None
