"""The account contract: users, their tokens (as hashes) and who may use which store.

Beside :class:`~.base.Storage`, in the same database: a backend hands out an
:class:`AccountStore` through :meth:`~.base.Storage.accounts`. Tokens are
never stored, only their SHA-256 hashes (see ``docs/security.md``); looking a
token up is one indexed read by hash.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

from .base import StorageError

#: Roles a user other than the owner can hold on a store, weakest first.
ROLES = ("reader", "writer")


class UserExists(StorageError):
    """A user with that name exists already."""


class UserNotFound(StorageError):
    """No user has that name."""


class TokenNotFound(StorageError):
    """No token has that id."""


@dataclass(frozen=True)
class User:
    """A user: a unique name and whether it may use the admin endpoints."""

    name: str
    is_admin: bool
    created_at: float

    def to_wire(self) -> dict[str, object]:
        """The JSON-ready form of the admin API."""
        return {"name": self.name, "admin": self.is_admin, "created_at": self.created_at}


@dataclass(frozen=True)
class TokenInfo:
    """What is kept of a token: its public id, owner, device label and dates (never the secret)."""

    token_id: str
    user: str
    device: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    def usable_at(self, now: float) -> bool:
        """Whether the token is neither revoked nor expired at ``now``."""
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    def to_wire(self) -> dict[str, object]:
        """The JSON-ready form of the admin API (no hash, no secret)."""
        return {
            "id": self.token_id,
            "user": self.user,
            "device": self.device,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
        }


@dataclass(frozen=True)
class Grant:
    """One user's role (``reader`` or ``writer``) on one store."""

    store: str
    user: str
    role: str

    def to_wire(self) -> dict[str, object]:
        """The JSON-ready form of the access endpoints."""
        return {"store": self.store, "user": self.user, "role": self.role}


class AccountStore(abc.ABC):
    """Contract of the account tables of a backend.

    Safe to call from many threads; every write is one transaction. Names
    are checked by the caller (:mod:`idsync_server_ref.accounts`).
    """

    @abc.abstractmethod
    def add_user(self, name: str, is_admin: bool, now: float) -> User:
        """Add a user; UserExists if the name is taken."""

    @abc.abstractmethod
    def get_user(self, name: str) -> User | None:
        """The user with that name, or None."""

    @abc.abstractmethod
    def list_users(self) -> list[User]:
        """All users, by name."""

    @abc.abstractmethod
    def any_users(self) -> bool:
        """Whether at least one user exists (the server then requires tokens)."""

    @abc.abstractmethod
    def remove_user(self, name: str) -> None:
        """Delete a user with its tokens and its grants; UserNotFound if missing.

        Stores named under the user stay (an admin can still reach them).
        """

    @abc.abstractmethod
    def add_token(
        self,
        user: str,
        token_id: str,
        token_hash: str,
        device: str,
        now: float,
        expires_at: float | None,
    ) -> TokenInfo:
        """Record a token by its hash; UserNotFound if the user is missing."""

    @abc.abstractmethod
    def list_tokens(self, user: str | None = None) -> list[TokenInfo]:
        """Tokens (of one user, or all), revoked ones included, by user then date."""

    @abc.abstractmethod
    def revoke_token(self, token_id: str, now: float) -> TokenInfo:
        """Mark a token revoked (once: a second call keeps the first date); TokenNotFound."""

    @abc.abstractmethod
    def token_by_hash(self, token_hash: str) -> TokenInfo | None:
        """The token with this hash, revoked or expired ones included, or None."""

    @abc.abstractmethod
    def grant(self, store: str, user: str, role: str) -> Grant:
        """Give ``user`` ``role`` on ``store`` (replacing a previous role); UserNotFound."""

    @abc.abstractmethod
    def revoke_access(self, store: str, user: str) -> bool:
        """Take ``user``'s role on ``store`` away; False if there was none."""

    @abc.abstractmethod
    def grants(self, store: str) -> list[Grant]:
        """The roles given on ``store``, by user."""

    @abc.abstractmethod
    def role_of(self, store: str, user: str) -> str | None:
        """``user``'s granted role on ``store``, or None."""

    @abc.abstractmethod
    def granted_stores(self, user: str) -> dict[str, str]:
        """Every store ``user`` holds a role on, with the role."""

    @abc.abstractmethod
    def forget_store(self, store: str) -> None:
        """Drop every grant on ``store`` (it was dropped)."""
