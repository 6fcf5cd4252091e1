"""Telling a client file from a copy of it, so that a client id belongs to one file.

The server keys idempotency on (client id, change number). Two files that
share a client id (a copied profile folder, a backup restored over the file)
would number their new changes alike, and the server would refuse one side's
changes as ``change_number_conflict``. So the file is bound to its place:

- the database holds a marker (meta ``instance``) that changes at every
  open, and a sidecar file beside it (``<name>.instance``) holds the same
  marker with the database file's identity (``st_dev``, ``st_ino``);
- at open, a sidecar that is missing, names another file (a copy has
  another inode) or holds another marker (an older copy of the database
  restored in place, over the same inode) means this file is a copy: it
  takes a fresh client id.

A false alarm (the folder was moved to another disk) only costs a new client
id: the server recognises re-sent changes by their content. What this cannot
see (a restore of both files taken after the last open) the sync engine
catches at the server's answer, ``change_number_conflict``, the same way.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any


def sidecar_path(database: Path) -> Path:
    """Where the marker of ``database`` is kept."""
    return database.with_name(database.name + ".instance")


def _identity(database: Path) -> tuple[int, int]:
    st = os.stat(database)
    return st.st_dev, st.st_ino


def read_sidecar(database: Path) -> dict[str, Any] | None:
    """The sidecar's content, or None when it is missing or unreadable."""
    try:
        data = json.loads(sidecar_path(database).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_same_file(database: Path, stored_marker: str) -> bool:
    """True when the sidecar holds ``stored_marker`` and names this very file."""
    seen = read_sidecar(database)
    if seen is None or seen.get("marker") != stored_marker:
        return False
    dev, ino = _identity(database)
    # Some file systems have no stable inode numbers (0): the marker decides.
    return ino == 0 or (seen.get("dev"), seen.get("ino")) == (dev, ino)


def new_marker() -> str:
    """A fresh random marker."""
    return uuid.uuid4().hex


def write_sidecar(database: Path, marker: str) -> None:
    """Bind ``marker`` to ``database`` on disk (written whole, then renamed over)."""
    dev, ino = _identity(database)
    target = sidecar_path(database)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps({"marker": marker, "dev": dev, "ino": ino}), "utf-8")
    os.replace(tmp, target)
