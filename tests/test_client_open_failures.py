"""Opening a client file: every local failure is a LocalStorageError with its
cause attached, the instance sidecar included."""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import pytest

from idsync_client import Client
from idsync_client.errors import LocalStorageError
from idsync_client.instance import sidecar_path


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
