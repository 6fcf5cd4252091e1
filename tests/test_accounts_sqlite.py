"""The SQLite backend runs the account contract suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from idsync_server_ref.storage.testing import AccountContract, BackendUnderTest

from .test_storage_sqlite import SqliteBackend


class TestSqliteAccounts(AccountContract):
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[BackendUnderTest]:
        with SqliteBackend(tmp_path / "db.sqlite3") as backend:
            yield backend
