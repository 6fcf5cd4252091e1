"""Opening a client file: every local failure is a LocalStorageError with its
cause attached, the instance sidecar included."""

from __future__ import annotations

import errno
import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from idsync_client import Client
from idsync_client.errors import LocalStorageError
from idsync_client.instance import sidecar_path
from idsync_client.migrations import UnsupportedSchema


def test_unwritable_sidecar_at_open_is_a_local_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    with Client(path) as client:
        client.store("s").add("v")
        client_id = client.client_id
    sidecar = sidecar_path(path)
    sidecar.unlink()
    sidecar.mkdir()  # the marker cannot be renamed over a directory
    with pytest.raises(LocalStorageError) as caught:
        Client(path)
    assert isinstance(caught.value.__cause__, OSError)
    assert str(sidecar) in str(caught.value)
    sidecar.rmdir()
    with Client(path) as client:  # the failed open changed nothing that matters
        assert [r.value for r in client.store("s")] == ["v"]
        assert client.client_id != client_id  # no sidecar: treated as a copy


def test_full_disk_writing_the_sidecar_while_another_handle_is_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.db"
    first = Client(path)
    try:
        first.store("s").add("v")
        before = hashlib.sha256(sidecar_path(path).read_bytes()).hexdigest()
        real = Path.write_text

        def full(self: Path, *args: object, **kwargs: object) -> int:
            if self.name.endswith(".instance.tmp"):
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(self, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(Path, "write_text", full)
        with pytest.raises(LocalStorageError) as caught:
            Client(path)
        assert isinstance(caught.value.__cause__, OSError)
        assert caught.value.__cause__.errno == errno.ENOSPC
        monkeypatch.undo()
        # The open handle is unaffected: its marker still matches the sidecar.
        assert hashlib.sha256(sidecar_path(path).read_bytes()).hexdigest() == before
        first.store("s").add("w")
        assert len(first.store("s")) == 2
    finally:
        first.close()


def _fingerprint(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _other_apps_file(path: Path) -> None:
    conn = sqlite3.connect(path)  # rollback journal, as most apps leave it
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO notes (body) VALUES ('keep me')")
    conn.commit()
    conn.close()


def _newer_client_file(path: Path) -> None:
    with Client(path) as client:
        client.store("s").add("v")
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    for suffix in ("-wal", "-shm"):
        assert not path.with_name(path.name + suffix).exists()


@pytest.mark.parametrize("make", [_other_apps_file, _newer_client_file])
def test_a_refused_file_is_left_byte_identical(tmp_path: Path, make: Any) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "c.db"
    make(path)
    before = _fingerprint(folder)
    with pytest.raises(UnsupportedSchema) as caught:
        Client(path)
    # While the error (and whatever its traceback holds) is still alive too.
    assert _fingerprint(folder) == before  # same bytes, no -wal, -shm or .instance
    del caught
    assert _fingerprint(folder) == before


def test_a_file_that_is_not_a_database_is_refused_unchanged(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "c.db").write_text("these are not the bytes of an SQLite file\n" * 100)
    before = _fingerprint(folder)
    with pytest.raises(LocalStorageError):
        Client(folder / "c.db")
    assert _fingerprint(folder) == before


def test_a_file_that_cannot_be_looked_at_is_a_local_storage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.db"
    with Client(path):
        pass
    real = Path.stat

    def denied(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self == path:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", denied)
    with pytest.raises(LocalStorageError) as caught:
        Client(path)
    assert isinstance(caught.value.__cause__, PermissionError)
