"""pytest fixtures for apps that embed idsync: a reference server and a client of it.

Enable them in the app's top-level ``conftest.py``::

    pytest_plugins = ["idsync_client.pytest_plugin"]

``idsync_server`` is one reference server for the whole test run (a child
process on a free port of 127.0.0.1, its database in a temporary folder);
``idsync_client`` is, for each test, a :class:`~idsync_client.Client` on a
fresh local file, syncing with that server in the background, closed after
the test. Tests that share the server should use store names of their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .client import Client

if TYPE_CHECKING:
    from idsync_server_ref.process import ServerProcess


@pytest.fixture(scope="session")
def idsync_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A reference server for the test run; ``.url`` is its base URL."""
    from idsync_server_ref.process import ServerProcess

    folder = tmp_path_factory.mktemp("idsync-server")
    with ServerProcess(folder / "server.sqlite3") as server:
        yield server


@pytest.fixture
def idsync_client(idsync_server: ServerProcess, tmp_path: Path) -> Iterator[Client]:
    """A client of ``idsync_server`` on a fresh local file, syncing in the background."""
    with Client(tmp_path / "idsync-client.sqlite3", idsync_server.url) as client:
        client.start()
        yield client
