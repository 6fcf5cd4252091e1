"""``idsync-server``: run the reference server.

Listens on 127.0.0.1:8765 with a SQLite file in the per-user data folder
unless told otherwise; every flag has an ``IDSYNC_*`` environment variable.
Stops cleanly on SIGINT and SIGTERM.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from idsync_client.protocol import Limits

from . import admin, compaction, users_cli
from .api import ServerApp
from .auth import start_refusal
from .config import DEFAULT_HOST, DEFAULT_PORT, ServerConfig, default_database_path
from .http_server import ListenError, build_server, listen_socket
from .logs import LOG_FORMATS, setup_logging
from .observe import ObservedApp
from .storage import StorageError, open_storage

log = logging.getLogger("idsync.server")

_LIMIT_FLAGS = [name for name in Limits.__dataclass_fields__]


def _env(name: str, default: Any) -> Any:
    return os.environ.get(f"IDSYNC_{name.upper()}", default)


def setting(
    group: argparse.ArgumentParser | argparse._ArgumentGroup,
    flag: str,
    default: Any,
    text: str,
    **kwargs: Any,
) -> None:
    """Add ``--flag``, read from ``IDSYNC_FLAG`` when set, its help naming both.

    ``default`` None leaves the default out of the help (``text`` says it).
    """
    name = flag.lstrip("-").split()[0]
    variable = "IDSYNC_" + name.replace("-", "_").upper()
    shown = "" if default is None else "; default %(default)s"
    help_text = f"{text} ({variable}{shown})" if text else f"({variable}{shown})"
    group.add_argument(
        *flag.split(), default=_env(name.replace("-", "_"), default), help=help_text, **kwargs
    )


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``idsync-server``."""
    parser = argparse.ArgumentParser(
        prog="idsync-server",
        description="Run the idsync reference sync server.",
        epilog=admin.EPILOG
        + ". Accounts: idsync-server user|token|access --help (docs/security.md).",
    )
    setting(parser, "--host", DEFAULT_HOST, "address to listen on")
    setting(parser, "--port", DEFAULT_PORT, "port; 0 picks a free one", type=port_number)
    setting(
        parser,
        "--database --db",
        str(default_database_path()),
        "SQLite file, sqlite:///path or postgresql://user@host:port/dbname",
    )
    setting(
        parser,
        "--threads",
        8,
        "storage threads: database work runs there, waiting long-polls hold none",
        type=whole_number,
    )
    setting(
        parser,
        "--max-connections",
        10_000,
        "open connections past this get 503 server_busy",
        type=whole_number,
    )
    setting(
        parser,
        "--header-timeout",
        10.0,
        "seconds a request's headers may take to arrive",
        type=number,
    )
    setting(
        parser,
        "--body-timeout",
        60.0,
        "seconds a request's body may take to arrive after its headers",
        type=number,
    )
    setting(
        parser,
        "--busy-timeout-ms",
        5000,
        "how long a write waits for the database lock before 503",
        type=whole_number,
    )
    setting(
        parser,
        "--auth-token",
        None,
        "deprecated: one shared token for a server without users; require"
        " 'Authorization: Bearer TOKEN'. Prefer users: see"
        " 'idsync-server user --help' and docs/security.md",
    )
    parser.add_argument(
        "--insecure-no-auth",
        action="store_true",
        default=bool(_env("insecure_no_auth", "")),
        help="allow listening beyond 127.0.0.1 with no users and no token: anyone who"
        " reaches the server reads and writes every store (IDSYNC_INSECURE_NO_AUTH)",
    )
    setting(
        parser,
        "--rate-limit",
        None,
        "requests per second per token, and per address for refused tokens; 0 turns"
        " it off; off by default without users, 50 with users",
        type=number,
    )
    setting(
        parser,
        "--rate-burst",
        200,
        "requests a token may send at once before the rate applies",
        type=whole_number,
    )
    setting(
        parser,
        "--backoff-threshold",
        24,
        "send the back-off hint when more requests are being worked on;"
        " waiting long-polls do not count",
        type=whole_number,
    )
    setting(parser, "--log-level", "INFO", "", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    add_operations_arguments(parser)
    compaction.add_flags(parser)
    limits = parser.add_argument_group("limits (see docs/protocol.md)")
    defaults = Limits()
    for name in _LIMIT_FLAGS:
        default = getattr(defaults, name)
        kind = whole_number if isinstance(default, int) else number
        setting(limits, f"--{name.replace('_', '-')}", default, "", type=kind)
    return parser


def port_number(text: str) -> int:
    """A TCP port, 0 to 65535 (0 picks a free one)."""
    if not (text.isascii() and text.strip().isdigit()) or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return int(text)


def whole_number(text: str) -> int:
    """A whole number, 0 or more (what must be above 0 is checked with the config)."""
    if not (text.isascii() and text.strip().isdigit()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(text)


def number(text: str) -> float:
    """A finite number, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of 0 or more")
    return value


def on_off(text: str) -> bool:
    """``on``/``off`` (also ``1``/``0``, ``true``/``false``, ``yes``/``no``)."""
    value = text.strip().lower()
    if value in ("on", "1", "true", "yes"):
        return True
    if value in ("off", "0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not on or off")


def add_operations_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags for running the server in production: queue bound, metrics, logs, version."""
    setting(
        parser,
        "--max-storage-queue",
        256,
        "when this many storage calls already wait for a storage thread, a new"
        " request that needs storage gets 503 storage_busy at once",
        type=whole_number,
    )
    setting(
        parser,
        "--metrics",
        "on",
        "serve Prometheus metrics at /metrics, behind the token when one is set",
        type=on_off,
        metavar="on|off",
    )
    setting(
        parser,
        "--log-format",
        "text",
        "text lines or one JSON object per line",
        choices=LOG_FORMATS,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {server_version()}")


def server_version() -> str:
    """The installed package's version."""
    try:
        return importlib.metadata.version("idsync")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        from . import __version__

        return __version__


def check_choices(args: argparse.Namespace) -> None:
    """Choices argparse does not check when they come from the environment."""
    if args.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"log level {args.log_level!r} is not DEBUG, INFO, WARNING or ERROR")
    if args.log_format not in LOG_FORMATS:
        raise ValueError(f"log format {args.log_format!r} is not one of {', '.join(LOG_FORMATS)}")


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """Turn parsed flags into a ServerConfig; ValueError on a bad limit."""
    limits = Limits().with_overrides(**{name: getattr(args, name) for name in _LIMIT_FLAGS})
    return ServerConfig(
        host=args.host,
        port=args.port,
        database=args.database,
        limits=limits,
        threads=args.threads,
        busy_timeout_ms=args.busy_timeout_ms,
        auth_token=args.auth_token or None,
        backoff_threshold=args.backoff_threshold,
        max_connections=args.max_connections,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        max_storage_queue=args.max_storage_queue,
        metrics=args.metrics,
        log_format=args.log_format,
        insecure_no_auth=args.insecure_no_auth,
        rate_limit=args.rate_limit,
        rate_burst=args.rate_burst,
    )


def _check_positive(config: ServerConfig) -> None:
    for name in (
        "threads",
        "max_connections",
        "header_timeout",
        "body_timeout",
        "max_storage_queue",
        "rate_burst",
    ):
        if getattr(config, name) <= 0:
            raise ValueError(f"{name} must be a positive number")
    if config.rate_limit is not None and config.rate_limit < 0:
        raise ValueError("rate_limit must be 0 (off) or a positive number")


def _raise_open_file_limit(wanted: int) -> None:
    """Let the process hold ``wanted`` sockets if the hard limit allows (POSIX)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            log.warning("cannot raise the open file limit to %d", target)


def _describe(database: str | Path) -> str:
    """The database for the log: a file's full path, or a URL without its password."""
    if "://" not in str(database):
        return str(Path(database).resolve())
    scheme, rest = str(database).split("://", 1)
    credentials, at, host = rest.rpartition("@")
    return f"{scheme}://{credentials.split(':', 1)[0]}{at}{host}"


def _describe_access(app: ServerApp, config: ServerConfig) -> None:
    """Say at start which access mode the server is in."""
    if app.authenticator.users_mode:
        log.info("users mode: every request needs a user's token")
    elif config.auth_token is not None:
        log.warning(
            "--auth-token (one shared token) is deprecated: add users and give each"
            " device its own token (see docs/security.md)"
        )
    else:
        log.info("local mode: no users, every request is allowed (listening on %s)", config.host)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGINT/SIGTERM; returns the process exit status.

    ``idsync-server COMMAND ...`` runs a maintenance command (:mod:`.admin`)
    or manages accounts (``user``, ``token``, ``access``: :mod:`.users_cli`) instead.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if users_cli.is_command(argv):
        return users_cli.main(argv)
    command = admin.command_in(argv)
    if command is not None:
        return admin.main(command)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_choices(args)
        config = config_from_args(args)
        _check_positive(config)
        compaction.parse_duration(args.retention)
        compaction.parse_duration(args.compact_every)
    except ValueError as exc:
        parser.error(str(exc))
    setup_logging(args.log_level, config.log_format)
    if args.log_level != "DEBUG":
        # uvicorn's start and stop notes repeat ours; its warnings stay.
        logging.getLogger("uvicorn").setLevel(logging.WARNING)
    try:
        sock = listen_socket(config.host, config.port)
    except ListenError as exc:
        print(f"idsync-server: {exc}", file=sys.stderr)
        return 2
    try:
        storage = open_storage(config.database, busy_timeout_ms=config.busy_timeout_ms)
    except (StorageError, ValueError) as exc:
        sock.close()
        print(f"idsync-server: cannot open {_describe(config.database)}: {exc}", file=sys.stderr)
        return 2
    try:
        app = ServerApp(storage, config)
    except StorageError as exc:
        sock.close()
        storage.close()
        print(f"idsync-server: cannot read the accounts: {exc}", file=sys.stderr)
        return 2
    refusal = start_refusal(
        config.host, app.authenticator.users_mode, config.auth_token, config.insecure_no_auth
    )
    if refusal is not None:
        sock.close()
        app.close()
        storage.close()
        print(f"idsync-server: {refusal}", file=sys.stderr)
        return 2
    _raise_open_file_limit(config.max_connections + 256)
    observed = ObservedApp(app, config.max_storage_queue, metrics=config.metrics)
    schedule = compaction.schedule_from_args(storage, args).start()

    def listening(port: int) -> None:
        print(f"idsync-server listening on http://{config.host}:{port}", flush=True)
        print(f"idsync-server database {_describe(config.database)}", flush=True)
        _describe_access(app, config)

    try:
        build_server(observed, config, listening).run(sockets=[sock])
        log.info("stopped")
    finally:
        schedule.stop()
        app.close()
        storage.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
