"""The sync lock's Windows branch, run here with a stand-in for msvcrt.

msvcrt.locking locks byte ranges from the file's current position; the
stand-in keeps a table of locked (file, offset) pairs the way Windows does,
so that two handles of one file exclude each other only on the same byte.
"""

from __future__ import annotations

import os
import sys
import types

import pytest

from idsync_client.processlock import ProcessLock


def windows_msvcrt() -> types.ModuleType:
    locked: dict[tuple[int, int], int] = {}
    module = types.ModuleType("msvcrt")
    module.LK_NBLCK = 2  # type: ignore[attr-defined]

    def locking(fd: int, mode: int, nbytes: int) -> None:
        assert mode == module.LK_NBLCK and nbytes == 1
        where = (os.fstat(fd).st_ino, os.lseek(fd, 0, os.SEEK_CUR))
        if locked.get(where, fd) != fd:
            raise PermissionError(13, "Permission denied")
        locked[where] = fd

    module.locking = locking  # type: ignore[attr-defined]
    return module


def test_two_holders_lock_the_same_byte_whatever_the_file_held(tmp_path, monkeypatch) -> None:
    path = tmp_path / "app.sqlite3.sync-lock"
    # A PID of another length than ours, left by an earlier holder.
    path.write_bytes(b"99999999999")
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setitem(sys.modules, "msvcrt", windows_msvcrt())
    first, second = ProcessLock(path), ProcessLock(path)
    assert first.acquire() is True
    assert path.read_bytes() == str(os.getpid()).encode()
    assert second.acquire() is False
    first.release()


@pytest.mark.skipif(sys.platform == "win32", reason="the POSIX branch")
def test_the_lock_file_names_its_holder(tmp_path) -> None:
    lock = ProcessLock(tmp_path / "x.lock")
    assert lock.acquire() is True
    assert (tmp_path / "x.lock").read_bytes() == str(os.getpid()).encode()
    lock.release()
