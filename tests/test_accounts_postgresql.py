"""The PostgreSQL backend runs the account contract suite (on a throwaway cluster)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from idsync_server_ref.storage.testing import AccountContract, BackendUnderTest

from .test_storage_postgresql import PgBackend


class TestPostgresqlAccounts(AccountContract):
    @pytest.fixture
    def backend(self, pg_url: str) -> Iterator[BackendUnderTest]:
        with PgBackend(pg_url) as backend:
            yield backend
