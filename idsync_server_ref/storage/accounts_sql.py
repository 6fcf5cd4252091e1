"""The account tables over SQL, shared by the SQLite and PostgreSQL backends.

The backend lends its transactions (``read``, ``write``: its driver errors
are wrapped there) and its statement runner; the statements are the same in
both but for the parameter mark.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from .accounts import AccountStore, Grant, TokenInfo, TokenNotFound, User, UserExists, UserNotFound

Transaction = Callable[[], AbstractContextManager[None]]
RunSql = Callable[[str, Sequence[Any]], Any]

_TOKEN_COLUMNS = "id, user_name, device, created_at, expires_at, revoked_at"


def _token(row: Sequence[Any]) -> TokenInfo:
    token_id, user, device, created_at, expires_at, revoked_at = row
    return TokenInfo(token_id, user, device, created_at, expires_at, revoked_at)


class SqlAccounts(AccountStore):
    """:class:`AccountStore` over a backend's connection; ``mark`` is ``?`` or ``%s``."""

    def __init__(self, read: Transaction, write: Transaction, sql: RunSql, mark: str) -> None:
        self._read = read
        self._write = write
        self._run = sql
        self._mark = mark

    def _sql(self, statement: str, params: Sequence[Any] = ()) -> Any:
        return self._run(statement.replace("?", self._mark), params)

    def _require_user(self, name: str) -> None:
        if self._sql("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone() is None:
            raise UserNotFound(name)

    # -- users --------------------------------------------------------------

    def add_user(self, name: str, is_admin: bool, now: float) -> User:
        with self._write():
            if self._sql("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise UserExists(name)
            self._sql(
                "INSERT INTO users (name, is_admin, created_at) VALUES (?, ?, ?)",
                (name, is_admin, now),
            )
        return User(name, is_admin, now)

    def get_user(self, name: str) -> User | None:
        with self._read():
            row = self._sql(
                "SELECT name, is_admin, created_at FROM users WHERE name = ?", (name,)
            ).fetchone()
        return User(row[0], bool(row[1]), row[2]) if row else None

    def list_users(self) -> list[User]:
        with self._read():
            rows = self._sql("SELECT name, is_admin, created_at FROM users").fetchall()
        return sorted((User(r[0], bool(r[1]), r[2]) for r in rows), key=lambda u: u.name)

    def any_users(self) -> bool:
        with self._read():
            return self._sql("SELECT 1 FROM users LIMIT 1").fetchone() is not None

    def remove_user(self, name: str) -> None:
        with self._write():
            self._require_user(name)
            for table in ("tokens", "store_access"):
                self._sql(f"DELETE FROM {table} WHERE user_name = ?", (name,))
            self._sql("DELETE FROM users WHERE name = ?", (name,))

    # -- tokens -------------------------------------------------------------

    def add_token(
        self,
        user: str,
        token_id: str,
        token_hash: str,
        device: str,
        now: float,
        expires_at: float | None,
    ) -> TokenInfo:
        with self._write():
            self._require_user(user)
            self._sql(
                "INSERT INTO tokens (id, user_name, token_hash, device, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (token_id, user, token_hash, device, now, expires_at),
            )
        return TokenInfo(token_id, user, device, now, expires_at, None)

    def list_tokens(self, user: str | None = None) -> list[TokenInfo]:
        with self._read():
            if user is None:
                rows = self._sql(f"SELECT {_TOKEN_COLUMNS} FROM tokens").fetchall()
            else:
                rows = self._sql(
                    f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE user_name = ?", (user,)
                ).fetchall()
        return sorted((_token(r) for r in rows), key=lambda t: (t.user, t.created_at, t.token_id))

    def revoke_token(self, token_id: str, now: float) -> TokenInfo:
        with self._write():
            self._sql(
                "UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (now, token_id),
            )
            row = self._sql(f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE id = ?", (token_id,))
            found = row.fetchone()
            if found is None:
                raise TokenNotFound(token_id)
        return _token(found)

    def token_by_hash(self, token_hash: str) -> TokenInfo | None:
        with self._read():
            row = self._sql(
                f"SELECT {_TOKEN_COLUMNS} FROM tokens WHERE token_hash = ?", (token_hash,)
            ).fetchone()
        return _token(row) if row else None

    # -- store access -------------------------------------------------------

    def grant(self, store: str, user: str, role: str) -> Grant:
        with self._write():
            self._require_user(user)
            self._sql("DELETE FROM store_access WHERE store = ? AND user_name = ?", (store, user))
            self._sql(
                "INSERT INTO store_access (store, user_name, role) VALUES (?, ?, ?)",
                (store, user, role),
            )
        return Grant(store, user, role)

    def revoke_access(self, store: str, user: str) -> bool:
        with self._write():
            had = self.role_of_in(store, user) is not None
            self._sql("DELETE FROM store_access WHERE store = ? AND user_name = ?", (store, user))
        return had

    def grants(self, store: str) -> list[Grant]:
        with self._read():
            rows = self._sql(
                "SELECT user_name, role FROM store_access WHERE store = ?", (store,)
            ).fetchall()
        return sorted((Grant(store, r[0], r[1]) for r in rows), key=lambda g: g.user)

    def role_of(self, store: str, user: str) -> str | None:
        with self._read():
            return self.role_of_in(store, user)

    def role_of_in(self, store: str, user: str) -> str | None:
        """``role_of`` inside a transaction already open."""
        row = self._sql(
            "SELECT role FROM store_access WHERE store = ? AND user_name = ?", (store, user)
        ).fetchone()
        return str(row[0]) if row else None

    def granted_stores(self, user: str) -> dict[str, str]:
        with self._read():
            rows = self._sql(
                "SELECT store, role FROM store_access WHERE user_name = ?", (user,)
            ).fetchall()
        return {str(r[0]): str(r[1]) for r in rows}

    def forget_store(self, store: str) -> None:
        with self._write():
            self._sql("DELETE FROM store_access WHERE store = ?", (store,))
