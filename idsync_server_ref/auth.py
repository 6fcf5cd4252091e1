"""Who is asking, and what they may do to which store.

Three modes, chosen by what the database and the flags hold:

- **users**: the database has at least one user. Every request but health
  needs ``Authorization: Bearer <token>`` of a user's live token. A user owns
  the stores named ``<user>.<anything>`` and reaches others only through a
  grant (``reader`` or ``writer``); an admin reaches every store.
- **shared token** (``--auth-token``, no users): one token for everything,
  the single-user mode of earlier releases.
- **local** (neither): everything is allowed, as a single user; the server
  refuses to listen beyond the loopback interface in this mode unless told
  ``--insecure-no-auth``.

A store the caller may not see is answered exactly as one that does not
exist: the same status and body, after the same work (one look-up of the
caller's grant, whether the store exists or not). See ``docs/security.md``.
"""

from __future__ import annotations

import hmac
import ipaddress
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .accounts import looks_like_token, store_owner, token_hash
from .errors import HttpError, error_for
from .storage import StoreNotFound
from .storage.accounts import AccountStore

#: Access levels, weakest first; ``owner`` includes granting and dropping.
READ, WRITE, OWNER = "reader", "writer", "owner"
_RANK = {READ: 1, WRITE: 2, OWNER: 3}

#: Seconds a "no users yet" answer is trusted before the database is asked again.
USERS_RECHECK_SECONDS = 1.0


@dataclass(frozen=True)
class Principal:
    """The caller: a user (with its token's id), or the single user of local modes."""

    user: str | None
    is_admin: bool
    token_id: str | None = None

    @property
    def single_user(self) -> bool:
        """Local or shared-token mode: no users, everything allowed."""
        return self.user is None

    @property
    def rate_key(self) -> str:
        """The key of this caller's rate-limit bucket."""
        return f"token:{self.token_id}" if self.token_id else "local"

    def storage_client_id(self, client_id: str) -> str:
        """The client id under which uploads are kept: bound to the user.

        User names and client ids hold no "/", so two users' ids never meet.
        """
        return client_id if self.user is None else f"{self.user}/{client_id}"


#: The caller in local and shared-token modes.
SINGLE_USER = Principal(None, True)


def unauthorized(message: str, invalid: bool) -> HttpError:
    """A 401 with the ``WWW-Authenticate`` challenge RFC 6750 asks for."""
    error = HttpError("unauthorized", message)
    challenge = 'Bearer realm="idsync"' + (', error="invalid_token"' if invalid else "")
    error.headers.append(("WWW-Authenticate", challenge))
    return error


def _bearer(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer`` header; 401 when there is none."""
    if authorization is None:
        raise unauthorized("a valid bearer token is required", invalid=False)
    scheme, _, value = authorization.partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        raise unauthorized("send the token as 'Authorization: Bearer <token>'", invalid=True)
    return value


def not_visible(store: str) -> HttpError:
    """The answer for a store the caller may not see: that of a missing store, exactly."""
    return error_for(StoreNotFound(store))


class Authenticator:
    """Turns a request's ``Authorization`` header into a :class:`Principal`.

    Whether users exist is looked up at start, then again at most once a
    second (through :meth:`refresh_due` and :meth:`refresh`) until some do.
    """

    def __init__(
        self,
        accounts: AccountStore,
        shared_token: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.accounts = accounts
        self.shared_token = shared_token
        self._clock = clock
        self._lock = threading.Lock()
        self._users_seen = False
        self._checked_at = float("-inf")
        self.refresh()

    @property
    def users_mode(self) -> bool:
        """Whether users exist (as last seen; once they do, it stays so until restart)."""
        return self._users_seen

    def refresh_due(self) -> bool:
        """Whether to look again for users (no users seen, the last look over a second ago).

        Marks the look as begun, so that one caller does it.
        """
        with self._lock:
            now = time.monotonic()
            if self._users_seen or now - self._checked_at < USERS_RECHECK_SECONDS:
                return False
            self._checked_at = now
            return True

    def refresh(self) -> None:
        """Look for users in the database (a storage call)."""
        found = self.accounts.any_users()
        with self._lock:
            self._users_seen = self._users_seen or found
            self._checked_at = time.monotonic()

    def without_lookup(self, authorization: str | None) -> Principal | None:
        """The caller when no database look-up is needed (no users: the single-user
        modes), a 401 HttpError for a wrong shared token, or None in users mode.

        Answering these on the event loop keeps the single-user path as it was.
        """
        if self._users_seen:
            return None
        if self.shared_token is None:
            return SINGLE_USER
        value = _bearer(authorization)
        given = value.encode("utf-8", "replace")
        if hmac.compare_digest(given, self.shared_token.encode("utf-8")):
            return SINGLE_USER
        raise unauthorized("the token is not valid", invalid=True)

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller named by the header; a 401 HttpError if it names no one valid.

        Reads the database: call it from a storage thread. The token is never
        put in an error message or a log line.
        """
        principal = self.without_lookup(authorization)
        if principal is not None:
            return principal
        value = _bearer(authorization)
        if not looks_like_token(value):
            raise unauthorized("the token is not valid", invalid=True)
        # Found by its SHA-256: the database compares hashes, never the secret,
        # so the time a comparison takes tells nothing about the token.
        info = self.accounts.token_by_hash(token_hash(value))
        if info is None:
            raise unauthorized("the token is not valid", invalid=True)
        if not info.usable_at(self._clock()):
            raise unauthorized("the token is not valid (expired or revoked)", invalid=True)
        user = self.accounts.get_user(info.user)
        if user is None:
            raise unauthorized("the token is not valid", invalid=True)
        return Principal(user.name, user.is_admin, info.token_id)


def role_on(accounts: AccountStore, principal: Principal, store: str) -> str | None:
    """The caller's access level on ``store`` (None: may not see it). Reads the database."""
    if principal.single_user or principal.is_admin:
        return OWNER
    assert principal.user is not None
    # The grant is looked up even for the owner's own stores, so every
    # answer costs the same work whether the store exists or not.
    granted = accounts.role_of(store, principal.user)
    if store_owner(store) == principal.user:
        return OWNER
    return granted


def require(accounts: AccountStore, principal: Principal, store: str, level: str) -> None:
    """Raise unless the caller holds ``level`` on ``store``: a missing store's 404 when it
    may not see the store at all, 403 when it may see it but not do this."""
    role = role_on(accounts, principal, store)
    if role is None:
        raise not_visible(store)
    if _RANK[role] < _RANK[level]:
        raise HttpError("forbidden", f"a {role} of this store may not do this")


def may_create(principal: Principal, store: str) -> None:
    """Raise 403 unless the caller may create a store of this name.

    A user creates stores only in its own name space (``<user>.<name>``), so
    the answer never depends on whether someone else's store exists.
    """
    if principal.single_user or principal.is_admin:
        return
    if store_owner(store) != principal.user:
        raise HttpError(
            "forbidden", f"you may create stores named {principal.user}.<name> only"
        )


def visible_stores(accounts: AccountStore, principal: Principal, names: list[str]) -> list[str]:
    """Those of ``names`` the caller may see (reads the database)."""
    if principal.single_user or principal.is_admin:
        return names
    granted = accounts.granted_stores(principal.user or "")
    return [n for n in names if n in granted or store_owner(n) == principal.user]


def is_loopback(host: str) -> bool:
    """Whether ``host`` is an address of this machine only (``localhost`` counts)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def start_refusal(
    host: str, users_exist: bool, shared_token: str | None, insecure_no_auth: bool
) -> str | None:
    """Why the server must not start with these settings, or None when it may."""
    if users_exist and shared_token is not None:
        return (
            "--auth-token is for a server without users, and this database has users:"
            " give each device its own token (idsync-server token create USER) and drop"
            " --auth-token"
        )
    if not users_exist and shared_token is None and not is_loopback(host) and not insecure_no_auth:
        return (
            f"refusing to listen on {host} with no authentication: add a user"
            " (idsync-server user add NAME; idsync-server token create NAME), or pass"
            " --insecure-no-auth to let anyone who reaches it read and write every store"
        )
    return None
