"""The account endpoints: admin management of users and tokens, owners' store grants.

``/v1/admin/...`` is for admins only (every caller is one in the single-user
modes). ``/v1/stores/{store}/access...`` is for the store's owner (or an
admin); the router has already checked that before a handler here runs.
Shapes are in ``docs/protocol.md``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .accounts import Accounts, validate_role, validate_user_name
from .asgi import HttpError, Request, Response
from .auth import Principal
from .storage.accounts import AccountStore, TokenNotFound, UserExists, UserNotFound

T = TypeVar("T")
Run = Callable[..., Awaitable[Any]]
Handler = Callable[..., Awaitable[Response]]


def principal_of(request: Request) -> Principal:
    """The authenticated caller of ``request`` (set by the router before any handler)."""
    principal = request.principal
    if not isinstance(principal, Principal):
        raise AssertionError("the request reached a handler without authentication")
    return principal


def _checked(fn: Callable[[], T]) -> T:
    """Run ``fn``, turning bad names and missing or taken accounts into their errors."""
    try:
        return fn()
    except ValueError as exc:
        raise HttpError("invalid_request", str(exc)) from None
    except UserExists as exc:
        raise HttpError("user_exists", f"user {str(exc)!r} exists already") from None
    except UserNotFound as exc:
        raise HttpError("user_not_found", f"no user named {str(exc)!r}") from None
    except TokenNotFound as exc:
        raise HttpError("token_not_found", f"no token with id {str(exc)!r}") from None


class AccountEndpoints:
    """Handlers over the account tables; ``run`` runs a call in the storage pool."""

    def __init__(self, accounts: AccountStore, run: Run) -> None:
        self.store = accounts
        self.accounts = Accounts(accounts)
        self._run = run

    def routes(self) -> list[tuple[tuple[str, ...], dict[str, Handler]]]:
        """Path templates and their handlers, for the router."""
        admin = ("v1", "admin")
        access = ("v1", "stores", "{store}", "access")
        return [
            ((*admin, "users"), {"GET": self.list_users, "POST": self.add_user}),
            ((*admin, "users", "{user}"), {"DELETE": self.remove_user}),
            (
                (*admin, "users", "{user}", "tokens"),
                {"GET": self.list_tokens, "POST": self.create_token},
            ),
            ((*admin, "tokens", "{token}"), {"DELETE": self.revoke_token}),
            (access, {"GET": self.list_access}),
            ((*access, "{user}"), {"PUT": self.grant_access, "DELETE": self.revoke_access}),
        ]

    @staticmethod
    def _admin_only(request: Request) -> None:
        if not principal_of(request).is_admin:
            raise HttpError("forbidden", "only an admin may manage users and tokens")

    async def _call(self, fn: Callable[[], T]) -> T:
        result: T = await self._run(_checked, fn)
        return result

    # -- admin --------------------------------------------------------------

    async def list_users(self, request: Request) -> Response:
        """All users."""
        self._admin_only(request)
        request.query(())
        users = await self._call(self.store.list_users)
        return Response.json({"users": [u.to_wire() for u in users]})

    async def add_user(self, request: Request) -> Response:
        """Add a user: body ``{"name": ..., "admin": false}``."""
        self._admin_only(request)
        request.query(())
        body = await request.json_body()
        if not isinstance(body, dict) or not {"name"} <= set(body) <= {"name", "admin"}:
            raise HttpError("invalid_request", 'the body must be {"name": ..., "admin": bool}')
        admin = body.get("admin", False)
        if not isinstance(admin, bool):
            raise HttpError("invalid_request", "admin must be true or false")
        user = await self._call(lambda: self.accounts.add_user(body["name"], admin))
        return Response.json(user.to_wire(), status=201)

    async def remove_user(self, request: Request, user: str) -> Response:
        """Delete a user, its tokens and its grants."""
        self._admin_only(request)
        request.query(())
        await self._call(lambda: self.store.remove_user(validate_user_name(user)))
        return Response.json({"removed": user})

    async def list_tokens(self, request: Request, user: str) -> Response:
        """A user's tokens (never their secrets)."""
        self._admin_only(request)
        request.query(())

        def tokens() -> list[Any]:
            if self.store.get_user(validate_user_name(user)) is None:
                raise UserNotFound(user)
            return self.store.list_tokens(user)

        found = await self._call(tokens)
        return Response.json({"tokens": [t.to_wire() for t in found]})

    async def create_token(self, request: Request, user: str) -> Response:
        """Make a token: body ``{"device": ..., "expires_in": seconds}`` (both optional).

        The answer holds the secret; it is never shown again.
        """
        self._admin_only(request)
        request.query(())
        body = await request.json_body()
        if not isinstance(body, dict) or not set(body) <= {"device", "expires_in"}:
            raise HttpError(
                "invalid_request", 'the body must be {"device": ..., "expires_in": seconds}'
            )
        made = await self._call(
            lambda: self.accounts.create_token(
                user, body.get("device", ""), body.get("expires_in")
            )
        )
        return Response.json({**made.info.to_wire(), "token": made.secret}, status=201)

    async def revoke_token(self, request: Request, token: str) -> Response:
        """Revoke a token by its id: it is refused from the next request on."""
        self._admin_only(request)
        request.query(())
        info = await self._call(lambda: self.accounts.revoke_token(token))
        return Response.json(info.to_wire())

    # -- store access (the router checked the caller owns the store) ---------

    async def list_access(self, request: Request, store: str) -> Response:
        """Who holds which role on the store."""
        request.query(())
        grants = await self._call(lambda: self.store.grants(store))
        return Response.json({"store": store, "access": [g.to_wire() for g in grants]})

    async def grant_access(self, request: Request, store: str, user: str) -> Response:
        """Give ``user`` a role on the store: body ``{"role": "reader" | "writer"}``."""
        request.query(())
        body = await request.json_body()
        if not isinstance(body, dict) or set(body) != {"role"}:
            raise HttpError("invalid_request", 'the body must be {"role": "reader" | "writer"}')
        grant = await self._call(
            lambda: self.store.grant(store, validate_user_name(user), validate_role(body["role"]))
        )
        return Response.json(grant.to_wire())

    async def revoke_access(self, request: Request, store: str, user: str) -> Response:
        """Take ``user``'s role on the store away (nothing to take is not an error)."""
        request.query(())
        had = await self._call(lambda: self.store.revoke_access(store, validate_user_name(user)))
        return Response.json({"store": store, "user": user, "revoked": had})
