"""``idsync-notes`` / ``python -m demo_app``: open the notes window.

With ``--with-server`` a reference server is started too (on the server
URL's port, with its default SQLite file) unless one already answers there.
Without a display the window cannot open: the command says so, and with
``--with-server`` keeps the server running.

SIGINT (Ctrl-C) and SIGTERM stop the app cleanly whenever they arrive: the
handler only records the request, and the app checks it where it waits (the
window saves typed text and closes its client; a server started here is
stopped, not orphaned).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import requests

from idsync_client import Client
from idsync_server_ref.command import missing_server_modules
from idsync_server_ref.config import DEFAULT_HOST, DEFAULT_PORT, default_database_path
from idsync_server_ref.process import ServerProcess

DEFAULT_SERVER = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"


def default_notes_path() -> Path:
    """The demo's local database: beside the server's, in the per-user data folder."""
    return default_database_path().with_name("notes-demo.sqlite3")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``idsync-notes``; every flag has an ``IDSYNC_*`` environment variable."""
    parser = argparse.ArgumentParser(
        prog="idsync-notes", description="An offline-first notes app on idsync."
    )
    parser.add_argument(
        "--server",
        default=os.environ.get("IDSYNC_SERVER", DEFAULT_SERVER),
        help="server URL; 'none' for local only (IDSYNC_SERVER; default %(default)s)",
    )
    parser.add_argument(
        "--db",
        type=Path,
        default=os.environ.get("IDSYNC_NOTES_DB") or default_notes_path(),
        help="local database file, in the per-user data folder unless told"
        " (IDSYNC_NOTES_DB; default %(default)s)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("IDSYNC_TOKEN"),
        help="bearer token, when the server needs one (IDSYNC_TOKEN)",
    )
    parser.add_argument(
        "--store",
        default=os.environ.get("IDSYNC_NOTES_STORE", "notes"),
        help="store name (IDSYNC_NOTES_STORE; default %(default)s)",
    )
    parser.add_argument(
        "--title",
        default=os.environ.get("IDSYNC_NOTES_TITLE"),
        help="window title (IDSYNC_NOTES_TITLE; default: 'idsync notes' and the local"
        " file's name, so that two windows are told apart)",
    )
    parser.add_argument(
        "--with-server",
        action="store_true",
        default=_env_flag("IDSYNC_NOTES_WITH_SERVER"),
        help="also start a reference server on the server URL's port"
        " (IDSYNC_NOTES_WITH_SERVER=1)",
    )
    return parser


def server_answers(url: str) -> bool:
    """True if an idsync server answers health checks at ``url``."""
    try:
        return requests.get(url.rstrip("/") + "/v1/health", timeout=1).ok
    except requests.RequestException:
        return False


def start_server(url: str) -> ServerProcess | None:
    """Start a reference server for ``url`` unless one answers there already."""
    if server_answers(url):
        print(f"idsync-notes: using the server already running at {url}")
        return None
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost"):
        raise SystemExit(f"idsync-notes: --with-server needs a local URL, not {url}")
    missing = missing_server_modules()
    if missing:
        raise SystemExit(
            f"idsync-notes: --with-server needs the server's dependencies ({', '.join(missing)});"
            " install them with: pip install 'idsync[server]'"
        )
    database = default_database_path()
    proc = ServerProcess(database, "--log-level", "INFO", port=parts.port or 80).start()
    print(f"idsync-notes: started the reference server at {proc.url} (database {database})")
    return proc


def has_display() -> bool:
    """Whether a window can be shown (always assumed on Windows and macOS)."""
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


#: Set by SIGINT/SIGTERM; checked where the app waits.
stopping = threading.Event()


def window_title(args: argparse.Namespace) -> str:
    """The window's title: ``--title``, else the app's name and the local file's."""
    return args.title or f"idsync notes — {Path(args.db).name}"


def run_window(
    args: argparse.Namespace, server: str | None, proc: ServerProcess | None = None
) -> int:
    """Open the notes window and run until it is closed (or the app is told to stop)."""
    try:
        import tkinter as tk

        from .model import NotesModel
        from .ui import NotesWindow

        root = tk.Tk()
    except (ImportError, RuntimeError) as exc:  # no Tk, or no usable display
        print(f"idsync-notes: cannot open a window: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # tkinter.TclError: the display refused us
        print(f"idsync-notes: cannot open a window: {exc}", file=sys.stderr)
        return 1
    client = Client(args.db, server, token=args.token)
    model = NotesModel(client, args.store)
    if server:
        client.start()
    server_log = None if proc is None else (lambda: list(proc.log_lines))
    window = NotesWindow(root, model, title=window_title(args), server_log=server_log)
    root.protocol("WM_DELETE_WINDOW", window.close)

    def watch_stop() -> None:
        if stopping.is_set():
            window.close()
        else:
            root.after(100, watch_stop)

    watch_stop()
    try:
        root.mainloop()
    finally:
        model.close()
    return 0


def _stop(signum: int, frame: object) -> None:
    stopping.set()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the app; returns the exit status."""
    args = build_parser().parse_args(argv)
    # From here on a signal never interrupts a step half-way (a server being
    # started, a window being built): it is a request, honoured where we wait.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server = None if args.server.lower() == "none" else args.server
    proc = None
    try:
        proc = start_server(server) if args.with_server and server else None
        if stopping.is_set():
            return 0
        if has_display():
            if proc is not None:
                print("idsync-notes: the server's log is in the window's 'Server log' (top right)")
            return run_window(args, server, proc)
        print("idsync-notes: no display (DISPLAY is not set), so the notes window cannot open.")
        if proc is None:
            return 1
        print(f"idsync-notes: the server keeps running at {proc.url}; press Ctrl-C to stop it.")
        assert proc.proc is not None
        while not stopping.wait(0.2) and proc.proc.poll() is None:
            pass
        return 0
    finally:
        if proc is not None:
            proc.stop()


if __name__ == "__main__":
    sys.exit(main())
