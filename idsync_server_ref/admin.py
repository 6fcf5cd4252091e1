"""``idsync-server COMMAND``: maintenance commands that run on the database directly.

``compact [STORE]``, ``vacuum``, ``export STORE [-o FILE]``, ``import STORE
FILE``, ``drop STORE`` and ``retention STORE SECONDS|default`` open the
database named by ``--db`` (as the server does), do their work and exit;
no HTTP server is started. They may run while a server serves the same
database: each step is a transaction of its own.

Exit status: 0 done, 1 the command failed (no such store, a bad import
file), 2 the database cannot be opened or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TextIO

from idsync_client.protocol import ProtocolViolation, validate_store_name

from .compaction import parse_duration
from .config import default_database_path
from .storage import (
    InvalidImport,
    SqliteStorage,
    Storage,
    StorageError,
    StoreDropped,
    StoreExists,
    StoreNotFound,
    open_storage,
)
from .storage.open import sqlite_file

#: The subcommands, by name.
COMMANDS = ("compact", "vacuum", "export", "import", "drop", "retention")

#: What ``idsync-server --help`` says about them.
EPILOG = (
    "maintenance commands (run on --db without serving; 'idsync-server COMMAND --help'): "
    + ", ".join(COMMANDS)
)


def build_parser() -> argparse.ArgumentParser:
    """The parser of the maintenance commands (``idsync-server COMMAND --help``)."""
    parser = argparse.ArgumentParser(
        prog="idsync-server", description="Maintenance commands on the server's database."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        sub.add_argument(
            "--database",
            "--db",
            default=os.environ.get("IDSYNC_DATABASE", str(default_database_path())),
            help="SQLite file, sqlite:///path or postgresql://... (IDSYNC_DATABASE)",
        )
        return sub

    compact = command(
        "compact",
        "Remove the log entries of records deleted longer ago than the retention; move the"
        " horizon. Clients behind it reload a snapshot.",
    )
    compact.add_argument("store", nargs="?", help="one store (default: every store)")
    compact.add_argument(
        "--retention",
        default=os.environ.get("IDSYNC_RETENTION", "7d"),
        help="for stores without their own retention: 30s, 90m, 12h, 7d... (default %(default)s)",
    )
    command("vacuum", "Give the space freed by compaction back to the file system (SQLite).")
    export = command("export", "Write a store's live records and deleted keys as NDJSON.")
    export.add_argument("store")
    export.add_argument("-o", "--output", help="file to write (default: standard output)")
    load = command(
        "import", "Create a store from an export, with a new epoch (all in one transaction)."
    )
    load.add_argument("store")
    load.add_argument("file", help="an export file ('-': standard input)")
    drop = command(
        "drop", "Delete a store and remember its name: syncing clients cannot re-create it."
    )
    drop.add_argument("store")
    retention = command("retention", "Set a store's retention, or 'default' for the server's.")
    retention.add_argument("store")
    retention.add_argument("seconds", help="a duration (30s, 90m, 12h, 7d...) or 'default'")
    return parser


def main(argv: Sequence[str]) -> int:
    """Run one maintenance command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run = _RUNNERS[args.command]
    problem = _refused_arguments(args)
    if problem is not None:
        print(f"idsync-server {args.command}: {problem}", file=sys.stderr)
        return 2
    try:
        storage = open_storage(args.database)
    except (StorageError, ValueError) as exc:
        print(f"idsync-server {args.command}: cannot open the database: {exc}", file=sys.stderr)
        return 2
    try:
        return run(storage, args, parser)
    except StoreDropped as exc:
        print(f"idsync-server {args.command}: store {str(exc)!r} was dropped", file=sys.stderr)
    except StoreNotFound as exc:
        print(f"idsync-server {args.command}: no store named {str(exc)!r}", file=sys.stderr)
    except StoreExists as exc:
        print(f"idsync-server {args.command}: store {str(exc)!r} exists", file=sys.stderr)
    except InvalidImport as exc:
        print(f"idsync-server import: {args.file}: {exc} (nothing written)", file=sys.stderr)
    except StorageError as exc:
        print(f"idsync-server {args.command}: {exc}", file=sys.stderr)
    finally:
        storage.close()
    return 1


def _refused_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments before the database is opened (and,
    for SQLite, created): a database file that does not exist (only ``import``
    may create one), a store name no client could reach."""
    path = sqlite_file(args.database)
    if args.command != "import" and path is not None and not path.exists():
        return f"no database at {path} (check --db)"
    if args.command == "import":
        try:
            validate_store_name(args.store)
        except ProtocolViolation as exc:
            return str(exc)
    return None


def _compact(storage: Storage, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        retention = parse_duration(args.retention)
    except ValueError as exc:
        parser.error(str(exc))
    report = storage.compact(args.store, default_retention=retention)
    print(
        f"compacted {report.stores} store(s): {report.entries_removed} log entries removed"
        f" in {report.chunks} transactions, {report.duration:.2f}s"
    )
    for name, horizon in sorted(report.horizons.items()):
        print(f"  {name}: horizon {horizon}")
    return 0


def _file_bytes(storage: Storage) -> int | None:
    if not isinstance(storage, SqliteStorage):
        return None
    files = [storage.path, Path(f"{storage.path}-wal")]
    return sum(f.stat().st_size for f in files if f.exists())


def _vacuum(storage: Storage, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    before = _file_bytes(storage)
    storage.vacuum()
    after = _file_bytes(storage)
    if before is None or after is None:
        print("vacuum: nothing to do (the database reclaims space itself)")
    else:
        print(f"vacuum: {before} bytes before, {after} after")
    return 0


def _export(storage: Storage, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    lines = storage.export_store(args.store)
    if args.output is None:
        try:
            _write_lines(lines, sys.stdout)
            sys.stdout.flush()
        except BrokenPipeError:
            # The reader stopped (``| head``): not an error of the export. Python
            # would complain again when it flushes stdout at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    # Written beside the target and renamed: a failed export leaves no half file.
    target = Path(args.output)
    partial = target.with_name(target.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8", newline="\n") as out:
            count = _write_lines(lines, out)
        partial.replace(target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        print(f"idsync-server export: cannot write {target}: {exc}", file=sys.stderr)
        return 1
    print(f"exported {args.store}: {count - 1} lines after the header to {target}")
    return 0


def _write_lines(lines: Iterable[str], out: TextIO) -> int:
    count = 0
    for line in lines:
        out.write(line + "\n")
        count += 1
    return count


def _import(storage: Storage, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.file == "-":
        info = storage.import_store(args.store, sys.stdin)
    else:
        try:
            with open(args.file, encoding="utf-8") as source:
                info = storage.import_store(args.store, source)
        except OSError as exc:
            parser.error(f"cannot read {args.file}: {exc}")
    print(
        f"imported {info.name}: {info.live_records} live records, head {info.head_seq},"
        f" new epoch {info.epoch}"
    )
    return 0


def _drop(storage: Storage, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    storage.drop_store(args.store)
    print(f"dropped {args.store}")
    return 0


def _retention(storage: Storage, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    seconds = None
    if args.seconds != "default":
        try:
            seconds = parse_duration(args.seconds)
        except ValueError as exc:
            parser.error(str(exc))
    info = storage.set_retention(args.store, seconds)
    shown = "the server's default" if seconds is None else f"{seconds} seconds"
    print(f"{info.name}: retention {shown}")
    return 0


_Runner = Callable[[Storage, argparse.Namespace, argparse.ArgumentParser], int]
_RUNNERS: dict[str, _Runner] = {
    "compact": _compact,
    "vacuum": _vacuum,
    "export": _export,
    "import": _import,
    "drop": _drop,
    "retention": _retention,
}


def command_in(argv: Sequence[str]) -> list[str] | None:
    """``argv`` rearranged for :func:`main` if it names a command, else None.

    The database may also come before the command, as for the server:
    ``idsync-server --db FILE compact``.
    """
    args = list(argv)
    if len(args) >= 3 and args[0] in ("--db", "--database") and args[2] in COMMANDS:
        return [args[2], args[0], args[1], *args[3:]]
    if args and args[0] in COMMANDS:
        return args
    return None
