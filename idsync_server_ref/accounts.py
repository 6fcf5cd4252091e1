"""Users and their tokens, as the admin CLI and the admin API manage them.

A token is ``idsync_`` followed by 256 random bits (``secrets.token_urlsafe(32)``);
it is shown once, when made, and only its SHA-256 hash is kept. A plain,
unsalted hash is enough here because the secret is random and long: no
dictionary holds it and 2^256 guesses are out of reach, so a slow, salted
password hash would add cost to every request and no safety. Looking a token
up by its hash also means the database compares hashes, never secrets.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass

from .storage.accounts import ROLES, AccountStore, TokenInfo, TokenNotFound, User

#: Every token starts with this: secret scanners and people recognise it.
TOKEN_PREFIX = "idsync_"
#: A user name: no dot, because a store ``<user>.<name>`` belongs to ``<user>``.
USER_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
#: The longest device label kept with a token.
MAX_DEVICE_LENGTH = 100
# C0 and C1 control characters and DEL: never in a device label nor in a token
# id we made (PostgreSQL cannot store or even look up text holding NUL).
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def new_secret() -> str:
    """A fresh token: the prefix and 256 random bits, URL-safe."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(secret: str) -> str:
    """The hex SHA-256 of a token, as stored and looked up."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def looks_like_token(text: str) -> bool:
    """Whether ``text`` has a token's form (checked before any look-up)."""
    body = text[len(TOKEN_PREFIX) :]
    return (
        text.startswith(TOKEN_PREFIX)
        and len(body) == 43
        and re.fullmatch(r"[A-Za-z0-9_-]+", body) is not None
    )


def validate_user_name(name: object) -> str:
    """Return ``name`` if it is a valid user name, else raise ValueError."""
    if not isinstance(name, str) or not USER_NAME_PATTERN.fullmatch(name):
        raise ValueError(f"user name must match {USER_NAME_PATTERN.pattern}")
    return name


def validate_role(role: object) -> str:
    """Return ``role`` if it is one a store can be granted with, else raise ValueError."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    assert isinstance(role, str)
    return role


def store_owner(store: str) -> str | None:
    """The user a store belongs to: the part of its name before the first dot."""
    owner, dot, _ = store.partition(".")
    return owner if dot and USER_NAME_PATTERN.fullmatch(owner) else None


@dataclass(frozen=True)
class NewToken:
    """A token just made: what is kept of it, and the secret (shown this once)."""

    info: TokenInfo
    secret: str


class Accounts:
    """User and token management over an :class:`AccountStore`, with checked input."""

    def __init__(self, store: AccountStore) -> None:
        self.store = store

    def add_user(self, name: str, is_admin: bool = False) -> User:
        """Add a user; ValueError on a bad name, UserExists if taken."""
        return self.store.add_user(validate_user_name(name), is_admin, time.time())

    def create_token(
        self, user: str, device: str = "", expires_in: float | None = None
    ) -> NewToken:
        """Make a token for ``user``; ``expires_in`` seconds from now, or never."""
        if not isinstance(device, str) or len(device) > MAX_DEVICE_LENGTH:
            raise ValueError(f"device must be text of at most {MAX_DEVICE_LENGTH} characters")
        if _CONTROL_CHARS.search(device):
            raise ValueError("device must not hold a control character")
        if expires_in is not None and (
            isinstance(expires_in, bool)
            or not isinstance(expires_in, int | float)
            or not 0 < expires_in <= 100 * 365 * 86400
        ):
            raise ValueError("expires_in must be a positive number of seconds")
        now = time.time()
        secret = new_secret()
        info = self.store.add_token(
            validate_user_name(user),
            secrets.token_hex(8),
            token_hash(secret),
            device,
            now,
            now + expires_in if expires_in is not None else None,
        )
        return NewToken(info, secret)

    def revoke_token(self, token_id: str) -> TokenInfo:
        """Revoke a token by its id; TokenNotFound if no token has it.

        An id holding a control character was never made here: it is not
        looked up (PostgreSQL would fail on a NUL instead of finding nothing).
        """
        if _CONTROL_CHARS.search(token_id):
            raise TokenNotFound(token_id)
        return self.store.revoke_token(token_id, time.time())
