"""``idsync-server``'s entry point: says what to install when the server's extra is missing.

The server needs packages that an app embedding only the client does not
(``pip install 'idsync[server]'``); without them the command explains
that, instead of failing with an import error.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

#: Modules of the ``server`` extra (import names).
SERVER_MODULES = ("uvicorn", "httptools", "prometheus_client")


def missing_server_modules() -> list[str]:
    """The modules of the ``server`` extra that cannot be imported here."""
    return [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``idsync-server``, or say how to install what it needs; returns the exit status."""
    missing = missing_server_modules()
    if missing:
        print(
            f"idsync-server: the server's dependencies are not installed ({', '.join(missing)});"
            " install them with: pip install 'idsync[server]'",
            file=sys.stderr,
        )
        return 2
    from .cli import main as run

    return run(argv)
