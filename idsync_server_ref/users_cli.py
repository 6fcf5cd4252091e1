"""``idsync-server user|token|access ...``: manage users, their tokens and store access.

These commands work on the database directly (the server may be running:
it sees the change on the next request). ``token create`` prints the new
token alone on standard output, so a script can capture it; it is shown
this once and only its hash is kept.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Callable, Sequence

from idsync_client.protocol import validate_store_name

from .accounts import Accounts, store_owner, validate_role, validate_user_name
from .config import default_database_path
from .storage import StorageError, open_storage
from .storage.accounts import AccountStore, TokenNotFound, UserExists, UserNotFound

#: The first word of each command this module runs.
COMMANDS = ("user", "token", "access")


def is_command(argv: Sequence[str]) -> bool:
    """Whether ``argv`` is one of these commands (``--database X`` may come first)."""
    rest = list(argv)
    while rest and rest[0].startswith("--d"):
        rest = rest[1:] if "=" in rest[0] else rest[2:]
    return bool(rest) and rest[0] in COMMANDS


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    moment = datetime.datetime.fromtimestamp(stamp, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def build_parser() -> argparse.ArgumentParser:
    """The ``user``, ``token`` and ``access`` commands and their flags."""
    # --database is taken before the command and after it alike.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--database",
        "--db",
        default=argparse.SUPPRESS,
        help="the server's database, as for the server (IDSYNC_DATABASE; default: the"
        " server's default file)",
    )
    parser = argparse.ArgumentParser(
        prog="idsync-server",
        description="Manage the users, tokens and store access.",
        parents=[common],
    )
    groups = parser.add_subparsers(dest="group", required=True, metavar="{user,token,access}")

    user = groups.add_parser("user", help="add, list or remove users", parents=[common]).add_subparsers(
        dest="action", required=True
    )
    add = user.add_parser("add", help="add a user (who then owns the stores <user>.<name>)", parents=[common])
    add.add_argument("name", help="user name: [a-z0-9][a-z0-9_-]{0,31}")
    add.add_argument("--admin", action="store_true", help="may manage users and reach every store")
    user.add_parser("list", help="list the users", parents=[common])
    remove = user.add_parser("remove", help="remove a user with its tokens and grants", parents=[common])
    remove.add_argument("name")

    token = groups.add_parser("token", help="create, list or revoke tokens", parents=[common]).add_subparsers(
        dest="action", required=True
    )
    create = token.add_parser("create", help="make a token for a user (printed once)", parents=[common])
    create.add_argument("user")
    create.add_argument("--device", default="", help="a label: which device holds it")
    create.add_argument(
        "--expires-in-days", type=float, default=None, help="expire after so many days"
    )
    listing = token.add_parser("list", help="list tokens (never their secrets)", parents=[common])
    listing.add_argument("user", nargs="?", default=None, help="only this user's")
    revoke = token.add_parser("revoke", help="revoke a token by its id", parents=[common])
    revoke.add_argument("token_id")

    access = groups.add_parser(
        "access", help="grant, revoke or list store access", parents=[common]
    ).add_subparsers(
        dest="action", required=True
    )
    grant = access.add_parser("grant", help="give a user a role on a store", parents=[common])
    grant.add_argument("store")
    grant.add_argument("user")
    grant.add_argument("--role", choices=["reader", "writer"], default="reader")
    take = access.add_parser("revoke", help="take a user's role on a store away", parents=[common])
    take.add_argument("store")
    take.add_argument("user")
    shown = access.add_parser("list", help="who holds which role on a store", parents=[common])
    shown.add_argument("store")
    return parser


def _user(args: argparse.Namespace, store: AccountStore, out: Callable[[str], None]) -> None:
    if args.action == "add":
        user = Accounts(store).add_user(args.name, args.admin)
        out(f"added user {user.name}" + (" (admin)" if user.is_admin else ""))
    elif args.action == "list":
        for user in store.list_users():
            out(f"{user.name}\t{'admin' if user.is_admin else '-'}\t{_when(user.created_at)}")
    else:
        store.remove_user(validate_user_name(args.name))
        out(f"removed user {args.name}")


def _token(args: argparse.Namespace, store: AccountStore, out: Callable[[str], None]) -> None:
    if args.action == "create":
        days = args.expires_in_days
        made = Accounts(store).create_token(
            args.user, args.device, days * 86400 if days is not None else None
        )
        print(made.secret)  # alone on stdout: the one time it is shown
        print(
            f"token {made.info.token_id} for {made.info.user}, expires"
            f" {_when(made.info.expires_at) if made.info.expires_at else 'never'};"
            " keep it: it is not shown again",
            file=sys.stderr,
        )
    elif args.action == "list":
        for info in store.list_tokens(args.user):
            state = "revoked" if info.revoked_at is not None else "live"
            out(
                f"{info.token_id}\t{info.user}\t{info.device or '-'}\t{state}"
                f"\tcreated {_when(info.created_at)}\texpires {_when(info.expires_at)}"
            )
    else:
        store.revoke_token(args.token_id, time.time())
        out(f"revoked token {args.token_id}")


def _access(args: argparse.Namespace, store: AccountStore, out: Callable[[str], None]) -> None:
    if args.action == "list":
        owner = store_owner(args.store)
        out(f"{owner or '-'}\towner")
        for grant in store.grants(args.store):
            out(f"{grant.user}\t{grant.role}")
    elif args.action == "grant":
        name = validate_store_name(args.store)  # ValueError: no client could reach it
        grant = store.grant(name, validate_user_name(args.user), validate_role(args.role))
        out(f"{grant.user} is a {grant.role} of {grant.store}")
    else:
        had = store.revoke_access(args.store, validate_user_name(args.user))
        out(f"{args.user} {'no longer has' if had else 'had no'} access to {args.store}")


def main(argv: Sequence[str]) -> int:
    """Run one command; returns the exit status (2 for bad input, 1 for a refusal)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    database = getattr(args, "database", None) or os.environ.get(
        "IDSYNC_DATABASE", str(default_database_path())
    )
    try:
        storage = open_storage(database)
    except (StorageError, ValueError) as exc:
        print(f"idsync-server: cannot open the database: {exc}", file=sys.stderr)
        return 2
    run = {"user": _user, "token": _token, "access": _access}[args.group]
    try:
        run(args, storage.accounts(), print)
    except ValueError as exc:
        parser.error(str(exc))
    except (UserExists, UserNotFound, TokenNotFound) as exc:
        kind = {UserExists: "user exists", UserNotFound: "no user", TokenNotFound: "no token"}
        print(f"idsync-server: {kind[type(exc)]}: {exc}", file=sys.stderr)
        return 1
    finally:
        storage.close()
    return 0
