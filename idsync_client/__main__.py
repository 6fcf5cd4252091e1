"""``python -m idsync_client sync``: sync a local file with a server once.

Shows a progress line per page on stderr while a large store downloads (a
first sync, a reload), then one line per store on stdout. Exit status 0 when
the round went well, 1 when it failed (the error is on stderr), 2 for bad
arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .client import Client
from .errors import IdsyncError
from .progress import SyncProgress


def build_parser() -> argparse.ArgumentParser:
    """The command line; every option has an ``IDSYNC_*`` environment variable."""
    parser = argparse.ArgumentParser(
        prog="python -m idsync_client", description="The idsync client's command line."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    sync = commands.add_parser(
        "sync", help="sync a local file with a server once, showing progress"
    )
    sync.add_argument(
        "--db",
        default=os.environ.get("IDSYNC_DB"),
        required="IDSYNC_DB" not in os.environ,
        help="the local database file (IDSYNC_DB)",
    )
    sync.add_argument(
        "--server",
        default=os.environ.get("IDSYNC_SERVER"),
        required="IDSYNC_SERVER" not in os.environ,
        help="the server's URL, e.g. http://127.0.0.1:8765 (IDSYNC_SERVER)",
    )
    sync.add_argument(
        "--token",
        default=os.environ.get("IDSYNC_TOKEN"),
        help="bearer token, when the server needs one (IDSYNC_TOKEN)",
    )
    sync.add_argument(
        "--store",
        action="append",
        dest="stores",
        metavar="NAME",
        help="a store to sync; repeat for more (IDSYNC_STORES, comma-separated;"
        " default: the stores the file holds already)",
    )
    return parser


def progress_line(progress: SyncProgress) -> str:
    """One line for a page of a download."""
    what = "snapshot" if progress.phase == "snapshot" else "pull"
    if progress.total is None:
        return f"{progress.store}: {what} {progress.received:,} received"
    percent = round(100 * (progress.fraction or 0.0))
    end = " done" if progress.done else ""
    return f"{progress.store}: {what} {progress.received:,}/{progress.total:,} ({percent}%){end}"


def _stores(args: argparse.Namespace) -> list[str]:
    if args.stores:
        return list(args.stores)
    listed = os.environ.get("IDSYNC_STORES", "")
    return [name.strip() for name in listed.split(",") if name.strip()]


def sync_once(args: argparse.Namespace) -> int:
    """Open the file, sync every store once, report; the exit status."""
    named = _stores(args)
    if not named and not Path(args.db).exists():
        # Nothing could be synced: say so before creating the file (a typo
        # in --db would otherwise leave a new, empty one behind).
        print("idsync_client: no store to sync (name one with --store)", file=sys.stderr)
        return 2
    try:
        client = Client(args.db, args.server, token=args.token)
    except (IdsyncError, TypeError, ValueError) as exc:
        print(f"idsync_client: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, (TypeError, ValueError)) else 1
    try:
        for name in named:
            client.store(name)
        if not client.stores:
            client.close()
            print("idsync_client: no store to sync (name one with --store)", file=sys.stderr)
            return 2
        client.on_progress(lambda p: print(progress_line(p), file=sys.stderr, flush=True))
        report = client.sync()
    except (IdsyncError, TypeError, ValueError) as exc:
        client.close()
        print(f"idsync_client: sync failed: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, (TypeError, ValueError)) else 1
    counts = {name: client.db.count(name) for name in client.stores}
    client.close()  # the progress lines queued before are printed first
    for name, count in counts.items():
        print(f"{name}: {count:,} records")
    print(f"pushed {report.pushed:,}, pulled {report.pulled:,}, rejected {len(report.rejected)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status."""
    args = build_parser().parse_args(argv)
    return sync_once(args)


if __name__ == "__main__":
    sys.exit(main())
