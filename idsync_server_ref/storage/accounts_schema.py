"""The account tables, in each backend's SQL, and the migration step that adds them.

The step only creates tables: it depends on no other table and runs after
whatever steps come before it.
"""

from __future__ import annotations

from typing import Any

#: The account tables in SQLite.
SQLITE_TABLES = [
    "CREATE TABLE users (name TEXT PRIMARY KEY, is_admin INTEGER NOT NULL,"
    " created_at REAL NOT NULL)",
    "CREATE TABLE tokens (id TEXT PRIMARY KEY, user_name TEXT NOT NULL,"
    " token_hash TEXT NOT NULL UNIQUE, device TEXT NOT NULL, created_at REAL NOT NULL,"
    " expires_at REAL, revoked_at REAL)",
    "CREATE INDEX tokens_user ON tokens (user_name)",
    "CREATE TABLE store_access (store TEXT NOT NULL, user_name TEXT NOT NULL,"
    " role TEXT NOT NULL, PRIMARY KEY (store, user_name))",
    "CREATE INDEX store_access_user ON store_access (user_name)",
]

#: The account tables in PostgreSQL.
POSTGRESQL_TABLES = [
    "CREATE TABLE users (name TEXT PRIMARY KEY, is_admin BOOLEAN NOT NULL,"
    " created_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE tokens (id TEXT PRIMARY KEY, user_name TEXT NOT NULL,"
    " token_hash TEXT NOT NULL UNIQUE, device TEXT NOT NULL,"
    " created_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION,"
    " revoked_at DOUBLE PRECISION)",
    "CREATE INDEX tokens_user ON tokens (user_name)",
    "CREATE TABLE store_access (store TEXT NOT NULL, user_name TEXT NOT NULL,"
    " role TEXT NOT NULL, PRIMARY KEY (store, user_name))",
    "CREATE INDEX store_access_user ON store_access (user_name)",
]


def create_tables(db: Any, statements: list[str]) -> None:
    """Run the CREATE statements on ``db`` (a peewee database in a transaction)."""
    for statement in statements:
        db.execute_sql(statement)
